"""Shared builders for the patching tests: tiny models of both architectures and aligned tasks."""

from __future__ import annotations

import dataclasses

import torch

import interp
from analyses.patching import tasks
from tests.conftest import tiny_gpt2, tiny_hf, word_tokenizer


def tiny_model(arch: str = "neox", seed: int = 0, dtype=torch.float32, **overrides) -> interp.Model:
    """A tiny seeded model with larger weights than the default init, so patches move the metric."""
    build = tiny_hf if arch == "neox" else tiny_gpt2
    hf = build(seed, initializer_range=0.15, **overrides).to(dtype)
    return interp.Model(hf, word_tokenizer(), name=f"tiny-{arch}")


def random_task(model, n_prompts: int = 3, n_pos: int = 10, changed=(4,), seed: int = 0, padded: bool = False):
    """Random clean prompts; the corrupt ones differ at `changed` positions; left padding on request."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.d_vocab, (n_prompts, n_pos), generator=g)
    corrupt = clean.clone()
    for p in changed:
        corrupt[:, p] = torch.randint(1, model.d_vocab, (n_prompts,), generator=g)
    mask = torch.ones_like(clean)
    if padded:  # prompt 1 has 3 pads, prompt 2 has 1
        mask[1, :3] = 0
        mask[2 % n_prompts, :1] = 0
        clean[mask == 0] = 0
        corrupt[mask == 0] = 0
    answer, wrong = clean[:, 3], clean[:, 1]
    return tasks.make(model, interp.Tokens(clean, mask), interp.Tokens(corrupt, mask), answer, wrong, name="random")


def same(task):
    """The task with its corrupt prompts replaced by the clean ones."""
    return dataclasses.replace(task, corrupt=task.clean)
