"""Rotary math: ours equals transformers' GPT-NeoX rotary, depends only on the offset, and splits into bands."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding, apply_rotary_pos_emb

from interp import rope, suite


def hf_rotary(size: str):
    config = suite.config(size)
    d_head = config.hidden_size // config.num_attention_heads
    return GPTNeoXRotaryEmbedding(config), d_head, int(d_head * config.rope_parameters["partial_rotary_factor"])


@pytest.mark.parametrize("size", ["14m", "160m", "1b"])
@pytest.mark.parametrize("positions", ["from 0", "padded", "far"])
def test_our_rotary_equals_hf(size, positions):
    emb, d_head, r = hf_rotary(size)
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 9, d_head), torch.randn(2, 3, 9, d_head)  # (batch, head, pos, d_head) as HF
    pos = {"from 0": torch.arange(9).repeat(2, 1),
           "padded": torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4, 5], list(range(9))]),
           "far": torch.arange(9).repeat(2, 1) + torch.tensor([[1000], [2038]])}[positions]
    cos, sin = emb(q, pos)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)
    ours_q = rope.rotate(q.transpose(1, 2), pos, r).transpose(1, 2)
    ours_k = rope.rotate(k.transpose(1, 2), pos, r).transpose(1, 2)
    # HF forms angles in fp32: at position ~2000 they carry ~1e-4 rad of rounding; ours are float64
    tol = 1e-5 if positions != "far" else 2e-3
    torch.testing.assert_close(ours_q, hf_q, atol=tol, rtol=tol, msg="NeoX rotate_half pairs i with i + r/2")
    torch.testing.assert_close(ours_k, hf_k, atol=tol, rtol=tol)
    assert torch.equal(ours_q[..., r:], q[..., r:]), "dims past rotary_dim pass through"


def test_rotation_depends_only_on_the_offset():
    torch.manual_seed(1)
    q, k, r = torch.randn(1, 1, 1, 32, dtype=torch.float64), torch.randn(1, 1, 1, 32, dtype=torch.float64), 8

    def score(m: int, n: int) -> torch.Tensor:
        rq = rope.rotate(q, torch.tensor([[m]]), r)
        rk = rope.rotate(k, torch.tensor([[n]]), r)
        return (rq * rk).sum()

    for m, n in [(5, 2), (40, 39), (7, 7), (100, 3)]:
        for c in (1, 17, 1000):
            torch.testing.assert_close(score(m + c, n + c), score(m, n), rtol=1e-10, atol=1e-10)
        expected = rope.band_kernel(q[0, 0, 0], k[0, 0, 0], torch.tensor([n - m]), r).sum() + q[..., r:] @ k[..., r:].mT
        torch.testing.assert_close(score(m, n), expected.squeeze(), msg="band parts + pass-through = the score")


def test_band_kernel_is_one_rotation_per_band():
    torch.manual_seed(2)
    q, k, r = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64), 16
    offsets = torch.tensor([0, -1, -3, -50, 7])
    parts = rope.band_kernel(q, k, offsets, r)  # (band, offset)
    theta = 10000 ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
    for i in range(r // 2):
        for j, d in enumerate(offsets.tolist()):
            a = d * theta[i]
            R = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
            pair = [i, i + r // 2]
            torch.testing.assert_close(parts[i, j], q[pair] @ R @ k[pair])


def test_pythia_bands_and_wavelengths():
    waves = rope.wavelengths(16)  # pythia-160m and 410m: d_head 64, 25% rotary
    assert len(waves) == 8
    assert abs(waves[0] - 2 * math.pi) < 1e-12 and abs(waves[-1] - 19869.2) < 0.1
    assert int((waves > 2048).sum()) == 2, "two bands never finish a turn in the 2048-token context"
    assert len(rope.wavelengths(64)) == 32  # pythia-1b: d_head 256
    assert rope.band_dims(16)[3].tolist() == [3, 11]
