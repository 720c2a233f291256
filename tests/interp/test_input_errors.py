"""Bad input gets an InterpError naming the value and the fix, before any work, leaving the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from tests.conftest import assert_untouched, hook_state, tiny


@pytest.fixture(params=["neox", "gpt2"])
def bare(request):
    """A model with no tokenizer, its state before, and its weights."""
    hf = tiny(request.param)
    return interp.Model(hf), hook_state(hf), {k: v.clone() for k, v in hf.state_dict().items()}


@pytest.mark.parametrize("call, match", [
    (lambda m, ids: m.run_with_cache(ids, dtype=torch.int64), "dtype=torch.int64 is not supported"),
    (lambda m, ids: m.run_with_cache(ids, dtype="int8"), "'int8' is not supported"),
    (lambda m, ids: m.run_with_cache(ids, device="gpu7"), "is not a device this machine has"),
    (lambda m, ids: m.run_with_cache(ids, device="meta"), "is not a device this machine has"),
    (lambda m, ids: m.run_with_cache_and_grads(ids, lambda x: x.sum(), device="cuda:7"), "not a device this"),
    (lambda m, ids: m.run_with_cache(ids, stop_at_layer=99), "stop_at_layer=99"),
    (lambda m, ids: m.run_with_cache(ids, stop_at_layer=True), "stop_at_layer=True"),
    (lambda m, ids: m.run_with_cache(ids, stop_at_layer=1, names=["blocks.1.hook_resid_post"]), "never fire"),
    (lambda m, ids: m.run_with_cache(ids, names=5), "names=5"),
    (lambda m, ids: m.run_with_cache(ids, fp32_scores="no"), "True or False"),
    (lambda m, ids: m(torch.zeros(0, 3, dtype=torch.long)), "pos >= 1"),
    (lambda m, ids: m(interp.Tokens(ids, torch.full_like(ids, 2))), "must hold 0"),
    (lambda m, ids: m.generate(ids[:1], max_new_tokens=60), "exceeds this model's context"),
    (lambda m, ids: m.QK(7), "layer=7"),
    (lambda m, ids: m.hooks(fwd=[("blocks.0.hook_resid_pre",)]).__enter__(), "Hooks are"),
    (lambda m, ids: m([[1, 2, 3], [4, 5]]), "Ragged rows"),
    (lambda m, ids: m(torch.rand(2, 5)), "must be integers"),
    (lambda m, ids: m(interp.Tokens(ids, torch.tensor([[1] * 11 + [0]] * 2))), "right-padded"),
    (lambda m, ids: m.generate("hello"), "no tokenizer"),
    (lambda m, ids: m.hooks(fwd={"blocks.0.hook_z": print}).__enter__(), "Closest valid names"),
    (lambda m, ids: m.hooks(fwd={"blocks.0.attn.hook_z": "not a function"}).__enter__(), "not a function"),
    (lambda m, ids: m.run_with_cache_and_grads(ids, lambda logits: 3.0), "scalar tensor"),
    (lambda m, ids: _in_inference_mode(lambda: m.run_with_cache(ids)), "torch.no_grad"),
    (lambda m, ids: _in_inference_mode(lambda: m.hooks(fwd={"blocks.0.hook_resid_pre": print}).__enter__()),
     "torch.no_grad"),
    (lambda m, ids: _forward_in_inference_mode(m, ids), "torch.no_grad"),
])
def test_bad_input_is_refused_and_leaves_the_model_as_it_was(bare, ids, call, match):
    model, before, weights = bare
    with pytest.raises(interp.InterpError, match=match):
        call(model, ids)
    assert_untouched(model.hf, before, weights)
    assert model._hooks.active() == 0


def _in_inference_mode(call):
    with torch.inference_mode():
        return call()


def _forward_in_inference_mode(model, ids):
    """The hooks' block opened outside torch.inference_mode(), the forward run inside it."""
    with model.hooks(fwd={"blocks.1.hook_resid_pre": lambda x, site: None}):
        with torch.inference_mode():
            model(ids)


def test_numpy_and_list_ids_are_accepted(bare, ids):
    model, _, _ = bare
    with torch.no_grad():
        expected = model(ids)
        assert torch.equal(model(ids.numpy()), expected)
        assert torch.equal(model(ids.tolist()), expected)
        assert torch.equal(model(np.asarray(ids[0])), expected[:1])


def test_wrapping_never_modifies_the_users_model(ids):
    hf = tiny("gpt2").train()  # GPT-2 has dropout: training mode is visible
    with pytest.warns(UserWarning, match="training mode"):
        interp.Model(hf)
    assert hf.training, "Model(hf) must not call hf.eval() on the user's model"


def test_run_with_cache_takes_the_dtype_strings_load_takes(bare, ids):
    model, _, _ = bare
    _, cache = model.run_with_cache(ids, names=["blocks.0.hook_resid_post"], dtype="bf16")
    assert cache["resid_post", 0].dtype == torch.bfloat16 and cache.provenance.dtype == "bfloat16"


def test_a_tokenizer_must_be_a_tokenizer():
    with pytest.raises(interp.InterpError, match="not a tokenizer"):
        interp.Model(tiny("gpt2"), "gpt2")
