"""Toy-suite fixtures: checkpoints loaded with plain transformers (fp32, eager attention), cached."""

from __future__ import annotations

import functools

import pytest
import torch

from interp import toy
from interp.errors import WeightsNotFoundError


def require_checkpoints(name: str) -> None:
    """Skip when the toy model's checkpoints are not on disk (e.g. a source checkout without them)."""
    try:
        toy.revisions(name)
    except WeightsNotFoundError as err:
        pytest.skip(str(err))


@functools.lru_cache(maxsize=16)
def hf_model(name: str, revision: str | None = None):
    """The HF model of a shipped checkpoint (GPTNeoXForCausalLM or GPT2LMHeadModel): fp32, eager, eval mode."""
    from interp.loading import load_hf

    return load_hf(toy.checkpoint_path(name, revision), dtype=torch.float32, attn_implementation="eager")


def weights(name: str, revision: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a shipped checkpoint as stored (fp16), whatever its file format."""
    from interp import files

    return files.read_tensors(files.weight_files(toy.checkpoint_path(name, revision)))


@functools.lru_cache(maxsize=4)
def tokenizer(name: str):
    """The toy model's tokenizer, as transformers.AutoTokenizer loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(toy.model_dir(name))
