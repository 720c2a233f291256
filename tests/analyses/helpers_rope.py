"""Hand-built heads for the RoPE tests: weights written directly into a tiny seeded model.

In layer 0 of `tests.conftest.tiny_hf` (2 heads x 32 dims, rotary on dims 0..7, i.e. 4 bands):
- head 0 is POSITIONAL: W_Q = W_K = 0, b_Q = q0 (rotary dims only), b_K = R(1) q0, so its score is
  q0 . R(Delta + 1) q0 / sqrt(32), which depends on the offset alone and peaks at Delta = -1;
- head 1 is CONTENT: every weight and bias on rotary dims is zero, the rest stays random.
"""

from __future__ import annotations

import torch

import interp
from interp import rope
from tests.conftest import tiny_hf, word_tokenizer

ROTARY_DIM, D_HEAD, N_HEADS = 8, 32, 2
POSITIONAL, CONTENT = (0, 0), (0, 1)


def q0(scale: float = 10.0) -> torch.Tensor:
    """Equal weight on bands 0, 1 and 2 (band 0 alone would repeat every 2 pi tokens)."""
    q = torch.zeros(D_HEAD)
    q[[0, 1, 2]] = scale
    return q


def build_heads_(hf) -> None:
    """Write the two hand-built heads into layer 0 of a tiny model, in place."""
    qkv = hf.gpt_neox.layers[0].attention.query_key_value
    W = qkv.weight.view(N_HEADS, 3, D_HEAD, -1)  # per head [q | k | v] rows
    b = qkv.bias.view(N_HEADS, 3, D_HEAD)
    q = q0()
    k = q.clone()
    k[:ROTARY_DIM] = rope.relative_rotation(1, ROTARY_DIM).float() @ q[:ROTARY_DIM]
    with torch.no_grad():
        W[0, :2] = 0
        b[0, 0], b[0, 1] = q, k
        W[1, :2, :ROTARY_DIM] = 0
        b[1, :2, :ROTARY_DIM] = 0


def hand_built_model(seed: int = 0, **overrides) -> interp.Model:
    hf = tiny_hf(seed, **overrides)
    build_heads_(hf)
    return interp.Model(hf, word_tokenizer(), name="hand-built")


def random_ids(n: int = 48, batch: int = 1, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 128, (batch, n), generator=generator)
