"""Parity with TransformerLens's TransformerBridge, built offline from the same HF weights."""

from __future__ import annotations

import logging

import pytest
import torch

import interp
from tests.conftest import tiny_gpt2, tiny_hf, twin, word_tokenizer

pytest.importorskip("transformer_lens")


@pytest.fixture(scope="module", params=["neox", "gpt2"])
def pair(request, tmp_path_factory):
    """Our Model and a TL bridge over an independent copy of the same weights."""
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok = (tiny_hf if request.param == "neox" else tiny_gpt2)(seed=3), word_tokenizer()
    path = tmp_path_factory.mktemp("tiny")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    from transformers import AutoTokenizer

    tl_tok = AutoTokenizer.from_pretrained(path)  # TL re-reads the tokenizer by its name_or_path
    bridge = TransformerBridge.boot_transformers(str(path), hf_model=twin(hf), tokenizer=tl_tok, device="cpu")
    return interp.Model(hf, tok), bridge


def test_every_shared_site_matches(pair):
    model, bridge = pair
    ids = model.to_tokens(["t5 t17 t3 t99 t5 t17 t3 t99 t42 t7"]).ids
    ours_logits, ours = model.run_with_cache(ids)
    tl_logits, tl = bridge.run_with_cache(ids)
    shared = [name for name in ours if name in tl.cache_dict]
    expected = {"hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_q",
                "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_attn_scores",
                "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z", "blocks.0.hook_attn_out",
                "blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post",
                "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post", "ln_final.hook_normalized"}
    if model.arch.kind == "gpt2":
        expected |= {"hook_pos_embed", "blocks.0.hook_resid_mid"}
    assert expected <= set(shared), f"sites both should expose: missing {expected - set(shared)}"
    for name in shared:  # hook_normalized and hook_scale have TL's meaning (before the affine map)
        torch.testing.assert_close(ours[name], tl[name], atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    ln = model.module("blocks.0.ln1.hook_out")
    torch.testing.assert_close(ours["ln1_out", 0], tl["blocks.0.ln1.hook_normalized"] * ln.weight + ln.bias,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_logits, tl_logits, atol=1e-5, rtol=1e-5)


def test_our_rot_q_fires_where_the_bridge_registers_but_never_fires_it(pair):
    model, bridge = pair
    if model.arch.kind != "neox":
        pytest.skip("GPT-2 has learned positions: no rotary site")
    ids = torch.tensor([[5, 17, 3, 99]])
    _, tl = bridge.run_with_cache(ids)
    _, ours = model.run_with_cache(ids, names=["blocks.0.attn.hook_rot_q"])
    assert "blocks.0.attn.hook_rot_q" not in tl.cache_dict
    assert ours["rot_q", 0].shape == (1, 4, model.n_heads, model.d_head)


def test_ablation_agrees_with_the_bridge(pair):
    model, bridge = pair
    ids = torch.tensor([[5, 17, 3, 99, 5, 17]])

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z

    with model.hooks(fwd={"blocks.1.attn.hook_z": ablate}):
        ours = model(ids)
    theirs = bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
