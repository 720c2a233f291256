"""The RoPE-aware QK circuit: reproduces the model's q.k through HF's own projection and rotary, splits
over parts, and its norms equal explicit matrices; the plain W_Q W_K^T is its Delta = 0 case only."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

import interp
from analyses.rope import TERMS, qk_circuit, qk_matrix
from analyses.rope.circuit import rotation
from analyses.rope.common import geometry
from interp import rope
from interp.errors import InputError
from tests.conftest import tiny_hf, word_tokenizer


@pytest.fixture(scope="module")
def tiny() -> interp.Model:
    return interp.Model(tiny_hf(), word_tokenizer(), name="tiny")


@pytest.mark.parametrize("layer, head", [(0, 0), (2, 1)])
def test_qk_matrix_gives_the_models_score(tiny, layer, head):
    torch.manual_seed(0)
    x = torch.randn(2, 64)  # inputs of the projection at query position t and key position s
    fused = tiny.hf.gpt_neox.layers[layer].attention.query_key_value(x).view(2, 2, 3, 32)  # (pos, head, qkv, d)
    q, k = fused[0, head, 0], fused[1, head, 1]
    emb = tiny.hf.gpt_neox.rotary_emb
    for t, s in [(9, 8), (30, 2), (5, 5)]:
        cos, sin = emb(x[None], torch.tensor([[t, s]]))
        rq, _ = apply_rotary_pos_emb(q[None, None, None], q[None, None, None], cos[:, :1], sin[:, :1])
        _, rk = apply_rotary_pos_emb(k[None, None, None], k[None, None, None], cos[:, 1:], sin[:, 1:])
        score = (rq * rk).sum()
        M = qk_matrix(tiny, layer, head, offset=s - t)
        ours = torch.cat([x[0], torch.ones(1)]).double() @ M @ torch.cat([x[1], torch.ones(1)]).double()
        torch.testing.assert_close(ours.float(), score, rtol=1e-4, atol=1e-5)


def test_parts_add_up_and_plain_is_delta_zero(tiny):
    whole = qk_matrix(tiny, 1, 0, offset=-3)
    parts = sum(qk_matrix(tiny, 1, 0, offset=-3, part=p) for p in ["pass", "band0", "band1", "band2", "band3"])
    torch.testing.assert_close(parts, whole)
    plain = (tiny.W_Q[1, 0] @ tiny.W_K[1, 0].T).double()
    torch.testing.assert_close(qk_matrix(tiny, 1, 0, offset=0)[:-1, :-1], plain, msg="R(0) = I")
    assert not torch.allclose(whole[:-1, :-1], plain), "away from Delta = 0 the plain product is wrong"


def test_norms_equal_explicit_matrices(tiny):
    offsets = [0, -1, -7, -40]
    circ = qk_circuit(tiny, offsets=offsets, layers=[2])
    geo = geometry(tiny)
    W_Q, W_K = tiny.W_Q[2].double(), tiny.W_K[2].double()
    b_Q, b_K = tiny.b_Q[2].double(), tiny.b_K[2].double()
    part_of = geo.part_of_dim()
    for h in range(2):
        plain = W_Q[h] @ W_K[h].T
        assert abs(circ.plain[0, h] - plain.norm()) < 1e-4 * plain.norm()
        for o, d in enumerate(offsets):
            R = torch.eye(32, dtype=torch.float64)
            R[:8, :8] = rope.relative_rotation(d, 8)
            full = W_Q[h] @ R @ W_K[h].T
            torch.testing.assert_close(circ.total[0, h, o].double(), full.norm(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(circ.difference[0, h, o].double(), (full - plain).norm() / plain.norm(),
                                       rtol=1e-5, atol=1e-6)
            for p in range(5):
                keep = (part_of == p).double()
                Rp = R * keep[:, None] * keep[None, :]
                expected = [(W_Q[h] @ Rp @ W_K[h].T).norm(), (W_Q[h] @ Rp @ b_K[h]).norm(),
                            (b_Q[h] @ Rp @ W_K[h].T).norm(), b_Q[h] @ Rp @ b_K[h]]
                for j, term in enumerate(TERMS):
                    torch.testing.assert_close(circ.terms[0, h, p, j, o].double(), expected[j], rtol=1e-5,
                                               atol=1e-6, msg=f"head {h} part {p} {term} at {d}")
    assert torch.all(circ.difference[..., 0] < 1e-6)


def test_rotation_is_identity_on_pass_through_dims(tiny):
    M = rotation(geometry(tiny), torch.tensor([5]))[0]
    assert torch.equal(M[8:, 8:], torch.eye(24, dtype=torch.float64)) and torch.all(M[:8, 8:] == 0)


def test_frame_figure_and_errors(tiny):
    circ = qk_circuit(tiny, offsets=[0, -2])
    frame = circ.to_frame()
    assert len(frame) == 3 * 2 * 5 * 2 and {"q·k", "b_Q·b_K", "plain", "difference"} <= set(frame.columns)
    assert circ.figure(2, 1).data
    with pytest.raises(InputError, match="L7H0"):
        circ.figure(7, 0)
    with pytest.raises(InputError, match="band7"):
        qk_matrix(tiny, 0, 0, offset=0, part="band7")
