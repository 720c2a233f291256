"""ActivationCache: shorthand, stacks, device/dtype moves, provenance and safetensors round trips."""

from __future__ import annotations

import pytest
import torch

import interp


def test_shorthand_and_stack(model, ids):
    _, cache = model.run_with_cache(ids, names=lambda n: True)
    _, logits_cache = model.run_with_cache(ids, names=["hook_logits"])
    cache = {**cache, **logits_cache}
    cache = interp.ActivationCache(cache, logits_cache.provenance)
    assert cache["resid_pre", 2] is cache["blocks.2.hook_resid_pre"]
    assert cache["scores", 0] is cache["blocks.0.attn.hook_attn_scores"]
    assert cache["resid_pre", -1] is cache["blocks.2.hook_resid_pre"]
    assert cache["gpt_neox.layers.1.mlp"] is cache["blocks.1.hook_mlp_out"]
    assert cache["logits"] is cache["hook_logits"]
    stack = cache.stack("pattern")
    assert stack.values.shape == (3, 2, 2, 12, 12) and stack.labels[1] == "1_pattern"
    with pytest.raises(interp.UnknownSiteError, match="needs a layer"):
        cache["resid_pre"]


def test_missing_site_says_how_to_cache_it(model, ids):
    _, cache = model.run_with_cache(ids, names=["hook_embed"])
    with pytest.raises(interp.UnknownSiteError, match="names=.*blocks.0.hook_mlp_out"):
        cache["mlp_out", 0]


def test_to_dtype_and_provenance(model, ids):
    _, cache = model.run_with_cache(ids, names=["hook_embed", "blocks.0.attn.hook_pattern"])
    half = cache.to(dtype=torch.float16)
    assert half["embed"].dtype == torch.float16 and half.provenance.dtype == "float16"
    assert cache["embed"].dtype == torch.float32, "to() returns a copy"
    prov = cache.provenance
    assert prov.model == "tiny" and prov.tokens == ids.tolist() and prov.n_layers == 3


def test_save_and_load_round_trip(model, ids, tmp_path):
    _, cache = model.run_with_cache(model.to_tokens(["t1 t2 t3", "t4"]))
    cache.save(tmp_path / "c.safetensors")
    assert (tmp_path / "c.safetensors").read_bytes()[:8] != b"\x80\x04\x95", "must not be a pickle"
    back = interp.ActivationCache.load(tmp_path / "c.safetensors")
    assert set(back) == set(cache) and back.provenance == cache.provenance
    for name in cache:
        assert torch.equal(back[name], cache[name]), name
    assert back["resid_pre", 1].shape == (2, 3, 64)
    assert back.provenance.attention_mask == [[1, 1, 1], [0, 0, 1]]


def test_cache_holds_only_what_was_asked(model, ids):
    _, cache = model.run_with_cache(ids, names=["blocks.0.attn.hook_q", "blocks.0.attn.hook_k"])
    assert cache.nbytes() == 2 * (2 * 12 * 64 * 4), "q and k alone, not the whole fused qkv output"
    _, cache = model.run_with_cache(ids, names=["hook_embed", "blocks.0.hook_resid_pre"])
    assert cache.nbytes() == 2 * 12 * 64 * 4, "the embedding and resid_pre 0 are one tensor, counted once"


def test_q_k_and_v_together_share_the_fused_output(model, ids):
    _, cache = model.run_with_cache(ids, names=["blocks.0.attn.hook_q", "blocks.0.attn.hook_k",
                                                "blocks.0.attn.hook_v"])
    assert cache["q", 0].untyped_storage().data_ptr() == cache["v", 0].untyped_storage().data_ptr()
    assert cache.nbytes() == 3 * (2 * 12 * 64 * 4)
