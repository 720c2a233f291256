"""Shared fixtures: tiny seeded random-init Pythia-architecture models, and the real tokenizer when present."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

import interp

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEOX_TOKENIZER = SHARED / "gpt-neox-20b-tokenizer.json"


def tiny_config(**overrides) -> GPTNeoXConfig:
    """Pythia's architecture at toy size: 2 heads of 32 dims, so 8 rotary dims."""
    kwargs = dict(
        vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=256,
        rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=64, use_parallel_residual=True,
        tie_word_embeddings=False, hidden_act="gelu", bos_token_id=0, eos_token_id=0,
    )
    return GPTNeoXConfig(**{**kwargs, **overrides})


def tiny_hf(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> GPTNeoXForCausalLM:
    """A seeded random-init model; biases and LayerNorm affine made non-trivial so every term matters."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    hf = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "layernorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return hf


def tiny_gpt2(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> GPT2LMHeadModel:
    """GPT-2's architecture at toy size (learned positions, sequential residual, Conv1D, tied embeddings)."""
    torch.manual_seed(seed)
    kwargs = dict(n_layer=3, n_head=2, n_embd=64, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)
    config = GPT2Config(**{**kwargs, **overrides})
    config._attn_implementation = attn_implementation
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return hf


def tiny(arch: str, seed: int = 0, attn_implementation: str = "sdpa"):
    """A tiny seeded model of either architecture: "neox" or "gpt2"."""
    return (tiny_hf if arch == "neox" else tiny_gpt2)(seed, attn_implementation)


def word_tokenizer(vocab_size: int = 128) -> PreTrainedTokenizerFast:
    """Whitespace tokenizer over words `t0 ... t127` (t0 is end-of-text), for tests with text."""
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", pad_token="t0", bos_token="t0")


def twin(hf: GPTNeoXForCausalLM, attn_implementation: str = "eager") -> GPTNeoXForCausalLM:
    """An independent copy with the same weights (its own config), e.g. for eager reference runs."""
    other = copy.deepcopy(hf)
    other.config._attn_implementation = attn_implementation
    return other.eval()


def padded_ids(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch: row 0 full, row 1 with 4 pads."""
    torch.manual_seed(seed)
    ids = torch.randint(1, 128, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    ids[1, :4] = 0
    return ids, mask


def hook_state(hf: torch.nn.Module) -> dict:
    """Everything hooking could leave behind on a model."""
    return {
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in hf.named_modules()},
        "attn": hf.config._attn_implementation,
        "dispatched": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules()),
    }


def assert_untouched(hf: torch.nn.Module, before: dict, weights: dict) -> None:
    """No hook left, attention implementation restored, every weight bitwise unchanged."""
    assert hook_state(hf) == before, "a hook or attention tap was left attached"
    for name, value in hf.state_dict().items():
        assert torch.equal(value, weights[name]), f"weight {name} changed"


@pytest.fixture
def hf_model() -> GPTNeoXForCausalLM:
    return tiny_hf()


@pytest.fixture
def model(hf_model) -> interp.Model:
    return interp.Model(hf_model, word_tokenizer(), name="tiny")


@pytest.fixture
def ids() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(1, 128, (2, 12))


@pytest.fixture(scope="session")
def neox_tokenizer():
    if not NEOX_TOKENIZER.exists():
        pytest.skip("../shared/data/gpt-neox-20b-tokenizer.json is absent")
    return PreTrainedTokenizerFast(tokenizer_file=str(NEOX_TOKENIZER), eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>")
