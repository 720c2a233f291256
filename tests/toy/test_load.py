"""The core loads the toy suite by name: interp.load("toy"), revisions, and step directories."""

from __future__ import annotations

import pytest
import torch

import interp
from interp import toy
from tests.toy.conftest import hf_model, require_checkpoints

if not hasattr(interp, "load"):
    pytest.skip("interp.load is not available in this checkout", allow_module_level=True)

IDS = torch.tensor([[5, 300, 17, 900, 42, 5, 300]])


def test_load_toy_is_the_default_final_checkpoint():
    require_checkpoints(toy.DEFAULT)
    model = interp.load("toy")
    assert model.hf.config.num_hidden_layers == 2 and model.dtype == torch.float32
    assert torch.allclose(model(IDS), hf_model(toy.DEFAULT)(input_ids=IDS).logits, atol=1e-5)
    assert model.tokenizer is not None and model.tokenizer.eos_token_id == 0


def test_load_toy_at_step0_gives_the_initial_weights():
    require_checkpoints(toy.DEFAULT)
    model = interp.load("toy", revision="step0")
    assert torch.allclose(model(IDS), hf_model(toy.DEFAULT, "step0")(input_ids=IDS).logits, atol=1e-5)
    assert not torch.allclose(model(IDS), interp.load("toy")(IDS), atol=1e-2)


def test_load_the_deeper_toy_and_a_step_directory():
    require_checkpoints("toy-4l")
    assert interp.load("toy-4l").hf.config.num_hidden_layers == 4
    path = toy.checkpoint_path("toy-4l", "step1")
    model = interp.load(path)
    assert model.tokenizer is not None, "the tokenizer lives in the step directory's parent"
    assert model.to_tokens("Hello").ids.tolist() == [model.tokenizer("Hello")["input_ids"]]


def test_suite_revisions_and_bad_revision():
    require_checkpoints(toy.DEFAULT)
    assert interp.suite.revisions("toy") == toy.revisions(toy.DEFAULT)
    with pytest.raises((ValueError, interp.UnknownRevisionError), match="step"):
        interp.load("toy", revision="step999999")
