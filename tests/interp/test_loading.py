"""interp.load from save_pretrained directories, offline errors, architecture checks, dtypes."""

from __future__ import annotations

import pytest
import torch

import interp
from tests.conftest import tiny_hf, word_tokenizer


@pytest.fixture
def saved(tmp_path):
    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "m")
    word_tokenizer().save_pretrained(tmp_path / "m")
    return tmp_path / "m", hf


def test_load_a_saved_directory_gives_the_same_model(saved):
    path, hf = saved
    model = interp.load(path)
    ids = torch.randint(1, 128, (1, 9))
    assert not model.hf.training, "load() must return an eval-mode model"
    assert torch.equal(model(ids), hf(ids).logits)
    assert model.tokenizer is not None and model.to_tokens("t4 t5").ids.tolist() == [[4, 5]]
    assert model.dtype == torch.float32 and model.revision == "main"


def test_tokenizer_is_found_in_the_parent_directory(tmp_path):
    tiny_hf().save_pretrained(tmp_path / "step10")
    word_tokenizer().save_pretrained(tmp_path)
    assert interp.load(tmp_path / "step10").to_tokens("t9").ids.tolist() == [[9]]


@pytest.mark.parametrize("dtype,expected", [("bf16", torch.bfloat16), ("float16", torch.float16),
                                            (torch.float32, torch.float32)])
def test_dtypes(saved, dtype, expected):
    assert interp.load(saved[0], dtype=dtype).dtype == expected


def test_bad_dtype(saved):
    with pytest.raises(ValueError, match="bf16"):
        interp.load(saved[0], dtype="int8")


def test_non_neox_directory_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(interp.UnsupportedModelError, match="'gpt2' model"):
        interp.load(tmp_path)


def test_offline_hub_name_says_what_was_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(interp.WeightsNotFoundError, match=r"EleutherAI/pythia-70m.*step3000.*hf download"):
        interp.load("pythia-70m", revision="step3000")


def test_bad_revision_fails_before_any_download():
    with pytest.raises(interp.UnknownRevisionError, match="step3000, step4000"):
        interp.load("pythia-70m", revision="step3500")


def test_missing_path_and_revision_on_a_directory(saved, tmp_path):
    with pytest.raises(interp.UnknownModelError, match="no directory"):
        interp.load(tmp_path / "nowhere" / "model")
    with pytest.raises(interp.UnknownModelError, match="hub names"):
        interp.load(saved[0], revision="step10")
