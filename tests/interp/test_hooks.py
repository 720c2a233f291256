"""Read-only hooks change nothing; every site equals HF's own computation; interventions do what they say."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

import interp
from interp import rope
from tests.conftest import tiny_hf, twin, word_tokenizer

INNER = ["attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern"]


def hf_run(hf, ids, **kwargs):
    with torch.no_grad():
        return hf(ids, output_hidden_states=True, output_attentions=True, **kwargs)


def test_residual_sites_leave_sdpa_logits_bitwise_equal(model, hf_model, ids):
    reference = hf_run(twin(hf_model, "sdpa"), ids).logits
    names = [s.name for s in model.sites.all() if "resid" in s.name or s.name in ("hook_embed", "hook_logits")]
    logits, cache = model.run_with_cache(ids, names=names)
    assert torch.equal(logits, reference), "residual-only caching must not change the sdpa forward"
    assert torch.equal(cache["hook_logits"], reference)
    assert hf_model.config._attn_implementation == "sdpa"


def test_every_site_leaves_eager_logits_bitwise_equal(model, hf_model, ids):
    eager = hf_run(twin(hf_model), ids)
    logits, cache = model.run_with_cache(ids)
    assert torch.equal(logits, eager.logits), "attention internals must follow HF eager step for step"
    for L in range(model.n_layers):
        assert torch.equal(cache["pattern", L], eager.attentions[L])
        assert torch.equal(cache["resid_post", L], eager.hidden_states[L + 1] if L < model.n_layers - 1
                           else cache["resid_post", L])
    final_ln = hf_model.gpt_neox.final_layer_norm(cache["resid_post", -1])
    assert torch.equal(final_ln, eager.hidden_states[-1]), "HF's last hidden state is the final-LN'd residual"
    assert torch.equal(cache["ln_final"], eager.hidden_states[-1])
    assert torch.equal(cache["embed"], eager.hidden_states[0])


def test_pattern_matches_eager_attentions_from_an_sdpa_model(model, hf_model, ids):
    eager = hf_run(twin(hf_model), ids)
    _, cache = model.run_with_cache(ids, names=[f"blocks.{L}.attn.hook_pattern" for L in range(3)])
    for L in range(3):
        torch.testing.assert_close(cache["pattern", L], eager.attentions[L], atol=1e-6, rtol=0)
    assert set(cache) == {f"blocks.{L}.attn.hook_pattern" for L in range(3)}


def test_rotated_q_and_k_equal_hf_rotary(model, hf_model, ids):
    _, cache = model.run_with_cache(ids, names=lambda n: n.split(".")[-1] in ("hook_q", "hook_k", "hook_rot_q",
                                                                                 "hook_rot_k"))
    positions = torch.arange(ids.shape[1])[None]
    cos, sin = hf_model.gpt_neox.rotary_emb(cache["q", 0], positions)
    for L in range(model.n_layers):
        q, k = cache["q", L].transpose(1, 2), cache["k", L].transpose(1, 2)  # (batch, head, pos, d_head)
        hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)
        assert torch.equal(cache["rot_q", L], hf_q.transpose(1, 2))
        assert torch.equal(cache["rot_k", L], hf_k.transpose(1, 2))
        ours_cos, ours_sin = rope.rotary_cos_sin(positions, model.rotary_dim, model.rotary_base)
        torch.testing.assert_close(rope.apply_rotary(cache["q", L], ours_cos, ours_sin), cache["rot_q", L],
                                   atol=1e-6, rtol=1e-5, msg="our NeoX rotary (i <-> i + r/2) must equal HF's")
        assert torch.equal(cache["rot_q", L][..., model.rotary_dim:], cache["q", L][..., model.rotary_dim:]), \
            "dims past rotary_dim must pass through unrotated"


def test_relative_rotation_turns_absolute_into_relative_positions():
    torch.manual_seed(0)
    q, k, r = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64), 8
    for i, j in [(3, 1), (10, 4), (7, 7)]:
        ci, si = rope.rotary_cos_sin(torch.tensor([[i]]), r)
        cj, sj = rope.rotary_cos_sin(torch.tensor([[j]]), r)
        dot = (rope.apply_rotary(q, ci, si) * rope.apply_rotary(k, cj, sj)).sum()
        expected = q.flatten() @ rope.relative_rotation(j - i, r) @ k.flatten()
        torch.testing.assert_close(dot, expected)


def test_q_k_v_are_the_per_head_thirds_of_the_fused_projection(model, hf_model, ids):
    _, cache = model.run_with_cache(ids, names=["blocks.1.ln1.hook_out", "blocks.1.attn.hook_q",
                                                "blocks.1.attn.hook_k", "blocks.1.attn.hook_v"])
    x = cache["ln1_out", 1]
    for short, W, b in [("q", model.W_Q, model.b_Q), ("k", model.W_K, model.b_K), ("v", model.W_V, model.b_V)]:
        expected = torch.einsum("bpm,hmd->bphd", x, W[1]) + b[1]
        torch.testing.assert_close(cache[short, 1], expected, atol=1e-5, rtol=1e-5,
                                   msg=f"{short}: is the fused layout per head [q|k|v]?")


def test_weight_views_of_a_model_without_biases_are_zeros_that_rebuild_its_outputs(ids):
    model = interp.Model(tiny_hf(attention_bias=False))
    names = ["blocks.1.ln1.hook_out", "blocks.1.attn.hook_z", "blocks.1.hook_attn_out"]
    _, cache = model.run_with_cache(ids, names=names)
    assert not model.b_O.any() and not model.b_Q.any() and model.b_O.shape == (model.n_layers, model.d_model)
    q = torch.einsum("bpm,hmd->bphd", cache["ln1_out", 1], model.W_Q[1]) + model.b_Q[1]
    assert q.shape[-2:] == (model.n_heads, model.d_head)
    via_w_o = torch.einsum("bphd,hdm->bpm", cache["z", 1], model.W_O[1]) + model.b_O[1]
    torch.testing.assert_close(via_w_o, cache["attn_out", 1], atol=1e-5, rtol=1e-5)
    assert model.b_in.shape == (model.n_layers, model.d_mlp) and model.b_out.shape == (model.n_layers, model.d_model)


def test_result_sums_to_attn_out_and_z_through_w_o_too(model, ids):
    names = ["blocks.2.attn.hook_result", "blocks.2.attn.hook_z", "blocks.2.hook_attn_out"]
    _, cache = model.run_with_cache(ids, names=names)
    assert cache["result", 2].shape == (2, 12, model.n_heads, model.d_model)
    torch.testing.assert_close(cache["result", 2].sum(2) + model.b_O[2], cache["attn_out", 2], atol=1e-5, rtol=1e-5)
    via_w_o = torch.einsum("bphd,hdm->bpm", cache["z", 2], model.W_O[2]) + model.b_O[2]
    torch.testing.assert_close(via_w_o, cache["attn_out", 2], atol=1e-5, rtol=1e-5)
    _, default = model.run_with_cache(ids)
    assert not any("hook_result" in n for n in default), "hook_result is costly: only when asked"


def test_mlp_sites_follow_the_weights(model, ids):
    _, cache = model.run_with_cache(ids, names=lambda n: ".mlp." in n or "mlp_out" in n or "ln2" in n)
    pre = cache["ln2", 0] @ model.W_in[0] + model.b_in[0]
    torch.testing.assert_close(cache["pre", 0], pre, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["post", 0], torch.nn.functional.gelu(cache["pre", 0]))
    out = cache["post", 0] @ model.W_out[0] + model.b_out[0]
    torch.testing.assert_close(cache["mlp_out", 0], out, atol=1e-5, rtol=1e-5)


def test_decompose_resid_sums_to_the_final_residual(model, ids):
    _, cache = model.run_with_cache(ids)
    parts = cache.decompose_resid()
    assert parts.labels[:3] == ["embed", "0_attn_out", "0_mlp_out"] and len(parts.labels) == 1 + 2 * model.n_layers
    torch.testing.assert_close(parts.values.sum(0), cache["resid_post", -1], atol=1e-5, rtol=1e-5)
    acc = cache.accumulated_resid()
    assert acc.values.shape == (model.n_layers + 1, 2, 12, model.d_model)
    assert torch.equal(acc.values[0], cache["embed"]) and torch.equal(acc.values[-1], cache["resid_post", -1])


def test_uniform_pattern_gives_the_hand_computed_output(model, ids):
    def uniform(pattern, hook):
        q_pos = torch.arange(pattern.shape[-1])
        causal = (q_pos[None, :] <= q_pos[:, None]).float()
        return (causal / causal.sum(-1, keepdim=True)).expand_as(pattern)

    with model.hooks(fwd={"blocks.1.attn.hook_pattern": uniform}):
        _, cache = model.run_with_cache(ids, names=["blocks.1.attn.hook_v", "blocks.1.hook_attn_out"])
    v = cache["v", 1]  # (batch, pos, head, d_head)
    z = v.cumsum(1) / torch.arange(1, ids.shape[1] + 1)[None, :, None, None]  # running mean of earlier values
    expected = torch.einsum("bphd,hdm->bpm", z, model.W_O[1]) + model.b_O[1]
    torch.testing.assert_close(cache["attn_out", 1], expected, atol=1e-5, rtol=1e-5)


def test_zero_ablating_a_head_removes_exactly_its_term(model, ids):
    _, clean = model.run_with_cache(ids, names=["blocks.0.attn.hook_result", "blocks.0.hook_attn_out"])

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    with model.hooks(fwd={"blocks.0.attn.hook_z": ablate}):
        _, ablated = model.run_with_cache(ids, names=["blocks.0.hook_attn_out"])
    expected = clean["attn_out", 0] - clean["result", 0][:, :, 1]
    torch.testing.assert_close(ablated["attn_out", 0], expected, atol=1e-5, rtol=1e-5)


def test_writing_every_site_with_itself_changes_nothing(model, hf_model, ids):
    eager = hf_run(twin(hf_model), ids).logits
    identity = {site.name: (lambda x, hook: x.clone()) for site in model.sites.all()}
    with model.hooks(fwd=identity):
        logits = model(ids)
    torch.testing.assert_close(logits, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("site", ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v",
                                  "blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k",
                                  "blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_z",
                                  "blocks.1.attn.hook_result", "blocks.1.hook_resid_pre", "blocks.1.mlp.hook_post",
                                  "blocks.1.ln2.hook_normalized"])
def test_every_writable_site_really_writes(model, ids, site):
    clean = model(ids)
    with model.hooks(fwd={site: lambda x, hook: x * 0.5 + 0.1}):
        patched = model(ids)
    assert not torch.allclose(clean, patched), f"replacing {site} did not reach the logits"


def test_left_padded_batch_equals_each_prompt_alone(hf_model):
    model = interp.Model(hf_model, word_tokenizer())
    prompts = ["t5 t9 t3 t7 t2 t8 t4", "t11 t12 t13", "t40 t41 t42 t43 t44"]
    batch = model.to_tokens(prompts)
    assert batch.ids.shape == (3, 7) and batch.attention_mask[1].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert batch.position_ids[1, -3:].tolist() == [0, 1, 2], "rotary positions of real tokens start at 0"
    logits, cache = model.run_with_cache(batch)
    for i, prompt in enumerate(prompts):
        alone_logits, alone = model.run_with_cache(prompt)
        n = alone_logits.shape[1]
        torch.testing.assert_close(logits[i, -n:], alone_logits[0], atol=1e-5, rtol=1e-5)
        for name in ["blocks.2.hook_resid_post", "blocks.1.attn.hook_rot_k", "blocks.0.attn.hook_z"]:
            torch.testing.assert_close(cache[name][i, -n:], alone[name][0], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(cache["pattern", 1][i, :, -n:, -n:], alone["pattern", 1][0], atol=1e-6, rtol=0)


def test_nested_contexts_compose_and_unwind(model, ids):
    calls = []
    with model.hooks(fwd={"blocks.0.attn.hook_pattern": lambda x, hook: calls.append("outer")}):
        with model.hooks(fwd={"blocks.0.attn.hook_pattern": lambda x, hook: calls.append("inner"),
                              "blocks.1.hook_mlp_out": lambda x, hook: x * 0}):
            model(ids)
        assert model.hf.config._attn_implementation == "sdpa", "no attention implementation is ever switched"
        model(ids)
    assert calls == ["outer", "inner", "outer"]
    assert model._hooks.active() == 0


def test_filters_and_module_path_aliases(model, ids):
    seen = []
    with model.hooks(fwd={lambda n: n.endswith("hook_pattern"): lambda x, hook: seen.append(hook.name)}):
        model(ids)
    assert seen == [f"blocks.{L}.attn.hook_pattern" for L in range(3)]
    _, cache = model.run_with_cache(ids, names=["gpt_neox.layers.1.mlp", "gpt_neox.layers.2",
                                                "gpt_neox.layers.0.attention"])
    assert set(cache) == {"blocks.1.hook_mlp_out", "blocks.2.hook_resid_post", "blocks.0.hook_attn_out"}


def test_generate_works_inside_hooks(model):
    prompt = "t3 t4 t5"
    plain = model.generate(prompt, max_new_tokens=5)
    with model.hooks(fwd={"blocks.2.attn.hook_pattern": lambda x, hook: None}):
        read_only = model.generate(prompt, max_new_tokens=5)
    not_7 = torch.tensor([i for i in range(128) if i != 7])
    with model.hooks(fwd={"hook_logits": lambda x, hook: x.index_fill(-1, not_7, -1e9)}):
        forced = model.generate(prompt, max_new_tokens=5)
    assert torch.equal(plain.ids, read_only.ids)
    assert forced.ids[0, 3:].tolist() == [7] * 5, "a logits hook must steer generation"


def test_stop_at_layer_returns_the_residual_entering_that_layer(model, ids):
    resid, cache = model.run_with_cache(ids, stop_at_layer=1)
    _, full = model.run_with_cache(ids)
    assert torch.equal(resid, full["resid_pre", 1])
    assert "blocks.1.hook_resid_pre" not in cache and "blocks.0.hook_resid_post" in cache


def test_resid_mid_exists_only_without_parallel_residual(ids):
    sequential = interp.Model(tiny_hf(use_parallel_residual=False))
    _, cache = sequential.run_with_cache(ids, names=["blocks.0.hook_resid_mid", "blocks.0.hook_resid_pre",
                                                     "blocks.0.hook_attn_out"])
    torch.testing.assert_close(cache["resid_mid", 0], cache["resid_pre", 0] + cache["attn_out", 0])
    parallel = interp.Model(tiny_hf())
    with pytest.raises(interp.SiteNotAvailableError, match="parallel residual"):
        parallel.run_with_cache(ids, names=["blocks.0.hook_resid_mid"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_and_caches_convert(dtype, ids):
    hf = tiny_hf().to(dtype)
    model = interp.Model(hf)
    logits, cache = model.run_with_cache(ids, names=["blocks.0.attn.hook_pattern", "blocks.2.hook_resid_post"])
    reference = tiny_hf()(ids).logits
    assert logits.dtype == dtype and cache["pattern", 0].dtype == dtype
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.05)
    torch.testing.assert_close(cache["pattern", 0].float().sum(-1), torch.ones(2, 2, 12), atol=1e-2, rtol=0)
    _, up = model.run_with_cache(ids, names=["blocks.2.hook_resid_post"], dtype=torch.float32)
    assert up["resid_post", 2].dtype == torch.float32 and up.provenance.dtype == "float32"
