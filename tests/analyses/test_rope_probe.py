"""RoPE probing: the decomposition against the model's own scores, its statistics against plain loops,
hand-built positional and content heads, and the toy suite's previous-token heads."""

from __future__ import annotations

import pytest
import torch

import interp
from analyses.rope import TERMS, decompose, head_table, positional_kernel, probe, sample_tokens, score_parts
from analyses.rope.decomposition import ScoreDecomposition
from interp import toy
from interp.errors import InputError
from tests.analyses.helpers_rope import CONTENT, POSITIONAL, hand_built_model, random_ids
from tests.conftest import tiny_hf, word_tokenizer

PROMPTS = {
    "unpadded": ["t5 t9 t12 t7 t33 t5 t9 t40 t41 t8 t2 t19"],
    "padded": ["t5 t9 t12 t7 t33 t5 t9 t40 t41 t8 t2 t19", "t3 t4 t3 t4 t60", "t77 t78 t79 t80 t81 t82 t83"],
}


@pytest.fixture(scope="module")
def tiny() -> interp.Model:
    return interp.Model(tiny_hf(), word_tokenizer(), name="tiny")


@pytest.mark.parametrize("padding", list(PROMPTS))
def test_parts_sum_to_the_models_attention_scores(tiny, padding):
    tokens = tiny.to_tokens(PROMPTS[padding])
    _, cache = tiny.run_with_cache(tokens, names=lambda n: n.endswith("hook_attn_scores"))
    for layer in range(tiny.n_layers):
        parts = score_parts(tiny, tokens, layer)
        mask = parts.mask.bool()[:, None].expand_as(parts.scores)
        ours, hf = parts.scores[mask], cache["attn_scores", layer].float()[mask]
        rel = (ours - hf).abs().max() / hf.abs().max()
        assert rel < 1e-5, f"L{layer} parts miss the model's scores by {rel:.2e} relative ({padding})"
        assert torch.all(parts.scores[~mask] == 0), "pairs outside causal real tokens must hold zero"


def brute_force(parts, cache, tokens, layer: int) -> dict[str, torch.Tensor]:
    """Shares and attention stats with plain loops over pairs; the offset fit as an explicit regression."""
    vals = parts.values.double()  # (batch, head, part, term, q, k)
    n_heads, n = vals.shape[1], vals.shape[-1]
    num = torch.zeros(n_heads, *vals.shape[2:4], dtype=torch.float64)
    var = torch.zeros(n_heads, dtype=torch.float64)
    mask = tokens.attention_mask
    pairs = []  # (row id, Delta, score per head)
    for b in range(vals.shape[0]):
        real = [t for t in range(n) if mask[b, t]]
        for t in real:
            keys = [s for s in real if s <= t]
            total = vals[b, :, :, :, t, keys].sum((1, 2))  # (head, key)
            centred = total - total.mean(-1, keepdim=True)
            num += (vals[b, :, :, :, t, keys] * centred[:, None, None]).sum(-1)
            var += centred.square().sum(-1)
            pairs += [((b, t), s - t, total[:, j]) for j, s in enumerate(keys)]
    effect, index = offset_regression(pairs, n, var)
    pattern = cache["pattern", layer].double()
    prev, sink, rows = torch.zeros(n_heads, dtype=torch.float64), torch.zeros(n_heads, dtype=torch.float64), 0
    for b in range(vals.shape[0]):
        first = int((mask[b] == 0).sum())
        for t in range(first + 1, n):
            prev += pattern[b, :, t, t - 1]
            sink += pattern[b, :, t, first]
            rows += 1
    return {"share": num / var[:, None, None], "index": index, "kernel": effect, "prev": prev / rows,
            "sink": sink / rows}


def offset_regression(pairs, n: int, within: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares score ~ row dummies + one dummy per nonzero Delta: coefficients and variance explained."""
    rows = sorted({r for r, _, _ in pairs})
    deltas = sorted({d for _, d, _ in pairs if d != 0})
    X = torch.zeros(len(pairs), len(rows) + len(deltas), dtype=torch.float64)
    for i, (r, d, _) in enumerate(pairs):
        X[i, rows.index(r)] = 1
        if d != 0:
            X[i, len(rows) + deltas.index(d)] = 1
    y = torch.stack([score for _, _, score in pairs])  # (pair, head)
    coef = torch.linalg.lstsq(X, y, driver="gelsd").solution
    resid = (y - X @ coef).square().sum(0)
    effect = torch.full((y.shape[1], n), float("nan"), dtype=torch.float64)
    effect[:, n - 1] = 0
    for j, d in enumerate(deltas):
        effect[:, d + n - 1] = coef[len(rows) + j]
    return effect, 1 - resid / within


@pytest.mark.parametrize("padding", list(PROMPTS))
def test_decompose_statistics_equal_plain_loops(tiny, padding):
    tokens = tiny.to_tokens(PROMPTS[padding])
    dec = decompose(tiny, tokens)
    _, cache = tiny.run_with_cache(tokens, names=lambda n: n.endswith(("hook_pattern", "hook_q", "hook_k")))
    for layer in range(tiny.n_layers):
        ref = brute_force(score_parts(tiny, tokens, layer), cache, tokens, layer)
        torch.testing.assert_close(dec.variance_share[layer], ref["share"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(dec.positional_index[layer], ref["index"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(dec.data_kernel[layer], ref["kernel"], atol=1e-5, rtol=1e-5, equal_nan=True)
        torch.testing.assert_close(dec.prev_attention[layer], ref["prev"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(dec.sink_attention[layer], ref["sink"], atol=1e-6, rtol=1e-5)
        real = tokens.attention_mask.bool()
        q = cache["q", layer][real].double()  # (token, head, d_head)
        torch.testing.assert_close(dec.q_energy[layer, :, 0], q[..., 8:].square().sum(-1).mean(0))
        torch.testing.assert_close(dec.q_energy[layer, :, 1], q[..., [0, 4]].square().sum(-1).mean(0),
                                   msg="band 0 is dims 0 and r/2 = 4 (NeoX rotate_half pairing)")
        torch.testing.assert_close(dec.k_mean[layer], cache["k", layer][real].double().mean(0))


def test_shares_sum_to_one_and_query_only_terms_have_none(tiny):
    dec = decompose(tiny, tiny.to_tokens(PROMPTS["padded"]))
    torch.testing.assert_close(dec.variance_share.sum((-1, -2)), torch.ones(3, 2, dtype=torch.float64))
    torch.testing.assert_close(dec.rotary_share + dec.pass_share, torch.ones(3, 2, dtype=torch.float64))
    pass_terms = dict(zip(TERMS, dec.variance_share[..., 0, :].unbind(-1), strict=True))
    assert pass_terms["q·b_K"].abs().max() < 1e-6, "q_c . b_K on pass-through dims is constant along each row"
    assert pass_terms["b_Q·b_K"].abs().max() < 1e-6
    assert dec.variance_share[..., 1:, TERMS.index("b_Q·b_K")].abs().max() > 1e-4, "rotated biases vary with offset"


def test_chunking_changes_nothing(tiny):
    tokens = tiny.to_tokens(PROMPTS["padded"])
    whole, chunked = decompose(tiny, tokens), decompose(tiny, tokens, chunk_elements=50)
    for name in ("variance_share", "positional_index", "data_kernel", "prev_attention", "sink_attention"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), equal_nan=True, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_dtype_decomposes_its_own_scores(dtype):
    model = interp.Model(tiny_hf().to(dtype), word_tokenizer(), name="tiny")
    tokens = model.to_tokens(PROMPTS["padded"])
    dec = decompose(model, tokens)
    torch.testing.assert_close(dec.variance_share.sum((-1, -2)), torch.ones(3, 2, dtype=torch.float64))
    _, cache = model.run_with_cache(tokens, names=["blocks.1.attn.hook_attn_scores"])
    parts = score_parts(model, tokens, 1)
    mask = parts.mask.bool()[:, None].expand_as(parts.scores)
    hf = cache["attn_scores", 1].float()[mask]
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (parts.scores[mask] - hf).abs().max() / hf.abs().max() < tol


def test_hand_built_positional_head():
    model = hand_built_model()
    table = head_table(model, random_ids(48)).to_frame().set_index(["layer", "head"])
    row = table.loc[POSITIONAL]
    assert row.rotary_share >= 0.95 and row.pass_share <= 0.05
    assert row.kernel_argmax_offset == -1 and row.data_argmax_offset == -1
    assert row.label == "positional" and row.previous_token
    assert row.positional_index > 0.999, "a score that depends on the offset alone is all position"


def test_hand_built_content_head():
    model = hand_built_model()
    table = head_table(model, random_ids(48)).to_frame().set_index(["layer", "head"])
    row = table.loc[CONTENT]
    assert row.rotary_share <= 0.05 and abs(row.rotary_share) < 1e-9, "no rotary dims, no rotary variance"
    assert row.label == "content" and not row.previous_token


def test_content_free_kernel_equals_explicit_rotation():
    model = hand_built_model()
    dec = decompose(model, random_ids(32))
    kern = positional_kernel(model, decomposition=dec)
    q, k = dec.q_mean[0, 0], dec.k_mean[0, 0]
    for offset in (0, -1, -5, -63):
        R = torch.eye(32, dtype=torch.float64)
        R[:8, :8] = interp.rope.relative_rotation(offset, 8)
        expected = q @ R @ k / 32**0.5
        torch.testing.assert_close(kern.kernel[0, 0, offset - 1].double(), expected, rtol=1e-5, atol=1e-5)
    assert kern.offsets[0] == -63 and kern.offsets[-1] == 0


@pytest.mark.parametrize("name", [n for n in toy.NAMES if toy.HEADS[n].get("previous_token")])
def test_toy_previous_token_head_is_positional(name):
    model = interp.load(name)
    frame = probe(model, sample_tokens(model, 128)).to_frame()
    [(layer, head)] = toy.HEADS[name]["previous_token"]
    row = frame.set_index(["layer", "head"]).loc[(layer, head)]
    assert row.label == "positional", f"{name} L{layer}H{head}: positional index {row.positional_index:.2f}"
    assert row.kernel_argmax_offset == -1 and row.data_argmax_offset == -1
    assert row.prev_attention == frame["prev_attention"].max(), "the card's previous-token head attends back most"
    assert row.rotary_share > 0.8


def test_frames_have_the_documented_columns(tiny):
    result = probe(tiny, tiny.to_tokens(PROMPTS["unpadded"]))
    heads = result.to_frame()
    for column in ("layer", "head", "rotary_share", "pass_share", "kernel_argmax_offset", "dominant_band", "label"):
        assert column in heads
    bands = result.bands()
    assert len(bands) == 3 * 2 * 5 and set(bands["part"]) == {"pass", "band0", "band1", "band2", "band3"}
    band0 = bands[bands["part"] == "band0"].iloc[0]
    assert band0.frequency == 1.0 and abs(band0.wavelength - 2 * torch.pi) < 1e-9
    assert isinstance(result.decomposition, ScoreDecomposition)
    for fig in result.figures():
        assert fig.data, "every figure draws something"


def test_bad_input_is_refused_before_work(tiny):
    with pytest.raises(InputError, match="layers"):
        decompose(tiny, "t1 t2", layers=[7])
    with pytest.raises(InputError, match="n_tokens"):
        sample_tokens(tiny, 10**6)
