"""Band ablation: zeroing a band before rotation equals zeroing it after, hooks equal edited weights,
and hand-built heads lose exactly what they have."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import interp
from analyses.rope import band_ablation
from analyses.rope.ablate import ablation_dims, next_token_loss
from analyses.rope.common import geometry
from interp.errors import InputError
from tests.analyses.helpers_rope import CONTENT, POSITIONAL, hand_built_model, random_ids
from tests.conftest import tiny_hf, word_tokenizer


@pytest.fixture(scope="module")
def tiny() -> interp.Model:
    return interp.Model(tiny_hf(), word_tokenizer(), name="tiny")


def zeroing(head: int, dims: list[int]):
    def fn(t, hook):
        t = t.clone()
        t[:, :, head, dims] = 0
        return t
    return fn


@pytest.mark.parametrize("ablation", ["band0", "band2", "rotary"])
def test_zeroing_before_rotation_equals_zeroing_after(tiny, ablation):
    dims = ablation_dims(geometry(tiny), ablation)
    ids = random_ids(20)
    results = []
    for q_site, k_site in (("hook_q", "hook_k"), ("hook_rot_q", "hook_rot_k")):
        with tiny.hooks(fwd={f"blocks.1.attn.{q_site}": zeroing(1, dims), f"blocks.1.attn.{k_site}": zeroing(1, dims)}):
            results.append(tiny(ids))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(results[0], tiny(ids)), "the ablation must change something"


def edited_copy(model: interp.Model, layer: int, head: int, dims: list[int]) -> torch.nn.Module:
    """The same ablation done by zeroing rows of W_Q, W_K and their biases in a copy of the weights."""
    hf = copy.deepcopy(model.hf)
    hf.config._attn_implementation = "eager"
    qkv = hf.gpt_neox.layers[layer].attention.query_key_value
    d_head = model.d_head
    with torch.no_grad():
        W = qkv.weight.view(model.n_heads, 3, d_head, -1)
        b = qkv.bias.view(model.n_heads, 3, d_head)
        W[head, :2, dims] = 0
        b[head, :2, dims] = 0
    return hf


@pytest.mark.parametrize("ablation", ["band1", "pass"])
def test_hook_ablation_equals_edited_weights(tiny, ablation):
    ids = random_ids(24, batch=2)
    tokens = tiny.tokens(ids)
    result = band_ablation(tiny, tokens, heads=[(2, 1)], ablations=[ablation])
    edited = edited_copy(tiny, 2, 1, ablation_dims(geometry(tiny), ablation))
    out = edited(ids, output_attentions=True, use_cache=False)
    loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(result.loss_change[0, 0].item() + result.clean_loss, loss.item(), rtol=1e-5, atol=1e-6)
    _, cache = tiny.run_with_cache(tokens, names=["blocks.2.attn.hook_pattern"])
    p, q = cache["pattern", 2][:, 1].double(), out.attentions[2][:, 1].double()
    kl = (p * (p.clamp(min=1e-30).log() - q.clamp(min=1e-30).log())).sum(-1).mean()
    torch.testing.assert_close(result.pattern_kl[0, 0].item(), kl.item(), rtol=1e-4, atol=1e-7)


def test_hand_built_heads_lose_only_what_they_have():
    model = hand_built_model()
    result = band_ablation(model, random_ids(32), heads=[POSITIONAL, CONTENT])
    frame = result.to_frame().set_index(["name", "ablation"])["pattern_kl"]
    assert frame["L0H0", "pass"] < 1e-6 and frame["L0H0", "band3"] < 1e-6, "nothing lives there"
    assert frame["L0H0", "rotary"] > 1 and frame["L0H0", "band0"] > 0.1
    assert frame["L0H1", "rotary"] < 1e-6 and frame["L0H1", "pass"] > 1e-5  # small random weights: a mild head
    assert result.figure().data


def test_next_token_loss_skips_padding(tiny):
    tokens = tiny.to_tokens(["t5 t6 t7 t8 t9", "t10 t11 t12"])
    logits = tiny(tokens)
    per_row = [F.cross_entropy(logits[b, -n:-1], tokens.ids[b, -n + 1:]) for b, n in enumerate(tokens.lengths)]
    expected = (per_row[0] * 4 + per_row[1] * 2) / 6
    assert abs(next_token_loss(logits, tokens) - expected.item()) < 1e-6


def test_bad_ablations_are_refused(tiny):
    with pytest.raises(InputError, match="band9"):
        band_ablation(tiny, random_ids(8), heads=[(0, 0)], ablations=["band9"])
    with pytest.raises(InputError, match="layer"):
        band_ablation(tiny, random_ids(8), heads=[(5, 0)])
    with pytest.raises(InputError, match="at least 2 tokens"):
        band_ablation(tiny, random_ids(1), heads=[(0, 0)])
