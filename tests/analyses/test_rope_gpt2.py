"""GPT-2 beside Pythia: the parts that make sense for learned positions (decomposition, the kernel of the
position embeddings through W_Q/W_K, the head table, position experiments) on a tiny random GPT-2."""

from __future__ import annotations

import math

import pytest
import torch

import interp
from analyses.rope import band_ablation, decompose, head_table, position_tests, probe, qk_circuit, score_parts
from interp.errors import InputError
from tests.analyses.helpers_rope import random_ids
from tests.conftest import tiny_gpt2, tiny_hf, word_tokenizer

PROMPTS = ["t5 t9 t12 t7 t33 t5 t9 t40 t41 t8 t2 t19", "t3 t4 t3 t4 t60"]


@pytest.fixture(scope="module")
def gpt2() -> interp.Model:
    return interp.Model(tiny_gpt2(n_layer=2), word_tokenizer(), name="tiny-gpt2")


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["unpadded", "padded"])
def test_gpt2_scores_decompose_exactly(gpt2, prompts):
    tokens = gpt2.to_tokens(prompts)
    _, cache = gpt2.run_with_cache(tokens, names=lambda n: n.endswith("hook_attn_scores"))
    for layer in range(2):
        parts = score_parts(gpt2, tokens, layer)
        assert parts.values.shape[2] == 1, "learned positions: one part, no bands"
        mask = parts.mask.bool()[:, None].expand_as(parts.scores)
        hf = cache["attn_scores", layer].float()[mask]
        assert (parts.scores[mask] - hf).abs().max() / hf.abs().max() < 1e-5


def test_learned_kernel_is_the_position_embeddings_through_w_q_and_w_k(gpt2):
    dec = decompose(gpt2, random_ids(24))
    kern = head_table(gpt2, decomposition=dec).kernel
    hf = gpt2.hf
    P = hf.transformer.wpe.weight.detach()
    for layer in range(2):
        block = hf.transformer.h[layer]
        fused = block.attn.c_attn(block.ln_1(P)).detach()  # (n_ctx, 3 d_model): [all q | all k | all v]
        q, k = fused[:, :64].view(64, 2, 32), fused[:, 64:128].view(64, 2, 32)
        for head in range(2):
            scores = q[:, head] @ k[:, head].T / math.sqrt(32)  # (t, s)
            for delta in (0, -1, -5, -63):
                expected = torch.stack([scores[t, t + delta] for t in range(-delta, 64)]).mean()
                torch.testing.assert_close(kern.kernel[layer, head, delta - 1], expected, rtol=1e-4, atol=1e-5)
            by_key = torch.stack([block.attn.c_attn.bias[head * 32:(head + 1) * 32] @ k[s, head] for s in range(64)])
            torch.testing.assert_close(kern.bias_kernel[layer, head, -3], (by_key[:62] / math.sqrt(32)).mean(),
                                       rtol=1e-4, atol=1e-5)


def test_gpt2_head_table(gpt2):
    frame = probe(gpt2, random_ids(40)).to_frame()
    assert len(frame) == 4 and frame["rotary_share"].isna().all() and frame["dominant_band"].isna().all()
    assert set(frame["label"]) <= {"positional", "mixed", "content"}
    assert frame["kernel_argmax_offset"].between(-63, 0).all()
    assert frame["positional_index"].between(0, 1).all()


def test_a_constant_shift_moves_gpt2_but_not_pythia(gpt2):
    neox = interp.Model(tiny_hf(), word_tokenizer(), name="tiny")
    shifts = {}
    for name, model in (("gpt2", gpt2), ("neox", neox)):
        tests = position_tests(model, random_ids(24), split=12, shift=16, gap=8)
        shifts[name] = tests.values["shift_kl"].abs().max().item()
        assert tests.figure().data
    assert shifts["neox"] < 1e-6, "rotary: only key_pos - query_pos counts"
    assert shifts["gpt2"] > 1e-4, "learned absolute positions: the same prompt 16 places later is attended differently"


def test_band_analyses_refuse_learned_positions(gpt2):
    with pytest.raises(InputError, match="learned positions"):
        band_ablation(gpt2, random_ids(8))
    with pytest.raises(InputError, match="learned positions"):
        qk_circuit(gpt2)
