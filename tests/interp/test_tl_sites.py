"""The TransformerLens sites and helpers researchers reach for first, checked by hand on both architectures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import interp
from tests.conftest import padded_ids, tiny, twin, word_tokenizer


@pytest.fixture(params=["neox", "gpt2"])
def model(request):
    return interp.Model(tiny(request.param), word_tokenizer())


def test_scale_and_normalized_have_transformer_lens_meaning(model, ids):
    _, cache = model.run_with_cache(ids, names=lambda n: "ln" in n or "resid_pre" in n or n.endswith("resid_post"))
    for L in range(model.n_layers):
        x = cache["resid_pre", L]
        centered = x - x.mean(-1, keepdim=True)
        scale = (centered.pow(2).mean(-1, keepdim=True) + model.module(f"blocks.{L}.ln1.hook_out").eps).sqrt()
        torch.testing.assert_close(cache["scale", L, "ln1"], scale)
        torch.testing.assert_close(cache[f"blocks.{L}.ln1.hook_normalized"], centered / scale)
        ln = model.module(f"blocks.{L}.ln1.hook_out")
        torch.testing.assert_close(cache["ln1_out", L], (centered / scale) * ln.weight + ln.bias, atol=1e-5, rtol=1e-5)
        assert cache["ln1_out", L] is cache[model.arch.path("ln1", L)], "the HF path is the module's output"


def test_editing_normalized_changes_the_layernorm_output(model, ids):
    name = "ln_final.hook_normalized"
    with torch.no_grad():
        _, clean = model.run_with_cache(ids, names=[name, "ln_final.hook_out"])
        with model.hooks(fwd={name: lambda x, hook: x * 2}):
            logits = model(ids)
    ln = model.module("ln_final.hook_out")
    expected = (2 * clean[name] * ln.weight + ln.bias) @ model.W_U
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_q_input_reaches_only_that_heads_query(model, ids):
    names = [f"blocks.1.attn.hook_{x}" for x in ("q", "k", "v", "q_input")] + ["blocks.1.hook_resid_pre"]
    other = ids.flip(0)
    with torch.no_grad():
        _, clean = model.run_with_cache(ids, names=names)
        _, corrupt = model.run_with_cache(other, names=names)
        torch.testing.assert_close(clean["q_input", 1], clean["resid_pre", 1][:, :, None].expand_as(
            clean["q_input", 1]))

        def patch_head_0(x, hook):
            x[:, :, 0] = corrupt["q_input", 1][:, :, 0]
            return x

        with model.hooks(fwd={"blocks.1.attn.hook_q_input": patch_head_0}):
            _, patched = model.run_with_cache(ids, names=names[:3])
    assert torch.equal(patched["q", 1][:, :, 1:], clean["q", 1][:, :, 1:]), "other heads' queries are untouched"
    assert torch.equal(patched["k", 1], clean["k", 1]) and torch.equal(patched["v", 1], clean["v", 1])
    torch.testing.assert_close(patched["q", 1][:, :, 0], corrupt["q", 1][:, :, 0], atol=1e-5, rtol=1e-5)


def test_mlp_in_reaches_only_the_mlp(model, ids):
    sites = ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_in"]
    if not model.parallel_residual:
        sites.append("blocks.1.hook_resid_mid")
    with torch.no_grad():
        _, clean = model.run_with_cache(ids, names=sites)
        with model.hooks(fwd={"blocks.1.hook_mlp_in": lambda x, hook: x * 0.5}):
            _, patched = model.run_with_cache(ids, names=sites)
    assert torch.equal(patched["attn_out", 1], clean["attn_out", 1])
    assert not torch.allclose(patched["mlp_out", 1], clean["mlp_out", 1])
    resid_in = clean["resid_mid", 1] if not model.parallel_residual else clean["mlp_in", 1] + clean["attn_out", 1]
    torch.testing.assert_close(patched["resid_post", 1], resid_in + patched["mlp_out", 1], atol=1e-5, rtol=1e-5)


def test_resid_mid_edits_reach_the_residual_on_sequential_models(ids):
    model = interp.Model(tiny("gpt2"))
    delta = torch.randn(model.d_model)
    names = ["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    with torch.no_grad(), model.hooks(fwd={"blocks.1.hook_resid_mid": lambda x, hook: x + delta}):
        _, cache = model.run_with_cache(ids, names=names)
    torch.testing.assert_close(cache["resid_post", 1], cache["resid_mid", 1] + cache["mlp_out", 1], atol=1e-5,
                               rtol=1e-5, msg="TL semantics: resid_post = edited resid_mid + mlp(ln2(edited))")


def test_stack_helpers_and_logit_attribution_add_up_to_the_logits(model, ids):
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
    parts = cache.decompose_resid()
    scaled = cache.apply_ln_to_stack(parts)
    torch.testing.assert_close(scaled.values.sum(0), cache["ln_final.hook_normalized"], atol=1e-5, rtol=1e-5)
    heads = cache.stack_head_results()
    assert heads.labels[:2] == ["L0H0", "L0H1"] and heads.values.shape[0] == model.n_layers * model.n_heads
    for L in range(model.n_layers):
        block = heads.values[L * model.n_heads:(L + 1) * model.n_heads].sum(0) + model.b_O[L]
        torch.testing.assert_close(block, cache["attn_out", L], atol=1e-5, rtol=1e-5)
    tokens, wrong = torch.tensor([3, 4]), torch.tensor([7, 8])
    attrs = cache.logit_attrs(scaled, tokens, wrong)  # (component, batch)
    ln = model.module("ln_final.hook_out")
    bias = ln.bias @ (model.W_U[:, tokens] - model.W_U[:, wrong])
    expected = logits[torch.arange(2), -1, tokens] - logits[torch.arange(2), -1, wrong]
    torch.testing.assert_close(attrs.sum(0) + bias, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("padded", [False, True])
def test_per_token_loss_matches_a_hand_computation(model, padded):
    ids, mask = padded_ids()
    tokens = interp.Tokens(ids, mask if padded else torch.ones_like(mask))
    with torch.no_grad():
        per_token = model.loss(tokens, per_token=True)
        logits = twin(model.hf, "sdpa")(**tokens.hf_inputs()).logits
    by_hand = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    real = (tokens.attention_mask[:, :-1] * tokens.attention_mask[:, 1:]).bool()
    torch.testing.assert_close(per_token[real], by_hand[real])
    assert (per_token[~real] == 0).all()
    torch.testing.assert_close(model.loss(tokens), by_hand[real].mean())
    if not padded:
        hf_loss = twin(model.hf, "sdpa")(input_ids=ids, labels=ids).loss
        torch.testing.assert_close(model.loss(tokens), hf_loss)


def test_to_single_token(model):
    assert model.to_single_token("t42") == 42
    with pytest.raises(interp.InputError, match="not one"):
        model.to_single_token("t4 t2")


def test_qk_and_ov_circuits_match_the_sites(ids):
    model = interp.Model(tiny("gpt2"))  # learned positions: scores are exactly the bilinear form plus biases
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names=["blocks.1.ln1.hook_out", "blocks.1.attn.hook_q",
                                                    "blocks.1.attn.hook_k", "blocks.1.attn.hook_v"])
    x = cache["ln1_out", 1]  # (batch, pos, d_model)
    q_part = cache["q", 1] - model.b_Q[1]
    k_part = cache["k", 1] - model.b_K[1]
    bilinear = torch.einsum("bqhd,bkhd->bhqk", q_part, k_part)
    torch.testing.assert_close(torch.einsum("bqm,hmn,bkn->bhqk", x, model.QK(1), x), bilinear, atol=1e-4, rtol=1e-4)
    v_part = cache["v", 1] - model.b_V[1]
    torch.testing.assert_close(torch.einsum("bpm,hmn->bphn", x, model.OV(1)),
                               torch.einsum("bphd,hdn->bphn", v_part, model.W_O[1]), atol=1e-4, rtol=1e-4)


def test_sites_fire_in_computation_order_whatever_the_dict_order(model, ids):
    def run(order):
        seen = []
        hooks = {"blocks.1.hook_attn_out": lambda x, hook: seen.append(hook.name),
                 "blocks.1.attn.hook_result": lambda x, hook: (seen.append(hook.name), x * 0)[1],
                 "blocks.0.hook_mlp_out": lambda x, hook: seen.append(hook.name)}
        keys = list(hooks) if order else list(reversed(hooks))
        with torch.no_grad(), model.hooks(fwd={k: hooks[k] for k in keys}):
            _, cache = model.run_with_cache(ids, names=["blocks.1.hook_attn_out"])
        return seen, cache["attn_out", 1]

    (seen_a, out_a), (seen_b, out_b) = run(True), run(False)
    assert seen_a == seen_b == ["blocks.0.hook_mlp_out", "blocks.1.attn.hook_result", "blocks.1.hook_attn_out"]
    assert torch.equal(out_a, out_b)
    torch.testing.assert_close(out_a, model.b_O[1].expand_as(out_a), msg="attn_out sees the ablated results")


def test_weight_views_are_built_once_and_follow_edits(model):
    first = model.W_Q
    assert model.W_Q is first, "no copy of the whole stack on every access"
    with torch.no_grad():
        model.arch.module(model.hf, "qkv", 0).weight.mul_(2)
    assert torch.allclose(model.W_Q[0], 2 * first[0]), "an in-place edit of a parameter is seen"


def test_a_filter_reaches_the_named_only_sites(model, ids):
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith(("hook_result", "hook_q_input", "hook_logits")))
    assert {"blocks.0.attn.hook_result", "blocks.0.attn.hook_q_input", "hook_logits"} <= set(cache)
    _, default = model.run_with_cache(ids)
    assert not any(n.endswith(("hook_result", "hook_q_input", "hook_logits")) for n in default)


def test_stop_at_layer_counts_from_the_end_and_drops_what_cannot_fire(model, ids):
    resid, cache = model.run_with_cache(ids, stop_at_layer=-1, names=lambda n: "resid" in n)
    _, full = model.run_with_cache(ids, names=lambda n: "resid" in n)
    assert torch.equal(resid, full["resid_pre", -1])
    assert f"blocks.{model.n_layers - 1}.hook_resid_post" not in cache and "blocks.0.hook_resid_post" in cache


def test_transformer_lens_spellings(model, ids):
    def ablate(z, hook):
        z[:, :, 0] = 0
        return z

    with torch.no_grad():
        with model.hooks(fwd={"blocks.1.attn.hook_z": ablate}):
            expected = model(ids)
        assert torch.equal(model.run_with_hooks(ids, fwd_hooks=[("blocks.1.attn.hook_z", ablate)]), expected)
        with model.hooks(fwd=[("blocks.1.attn.hook_z", ablate)]):
            assert torch.equal(model(ids), expected)


def test_backward_hooks_do_not_outlive_their_context(model, ids):
    seen = []
    with model.hooks(bwd={"blocks.0.hook_resid_post": lambda g, hook: seen.append(1)}):
        loss = model(ids)[:, -1, 3].sum()
    loss.backward()
    assert seen == [], "a backward after the block sees no hook"
    model.hf.zero_grad(set_to_none=True)


def test_pos_embed_is_shown_per_prompt_like_transformer_lens(ids):
    model = interp.Model(tiny("gpt2"))
    _, cache = model.run_with_cache(ids, names=["hook_pos_embed", "hook_embed"])
    assert cache["pos_embed"].shape == cache["embed"].shape == (2, ids.shape[1], model.d_model)

    def move_second_prompt(x, hook):
        x[1] = 0
        return x

    with torch.no_grad():
        with model.hooks(fwd={"hook_pos_embed": move_second_prompt}):
            edited = model(ids)
        plain = model(ids)
    assert torch.equal(edited[0], plain[0]) and not torch.equal(edited[1], plain[1])


def test_replacements_keep_their_graph_and_may_be_non_contiguous(model, ids):
    """A q_input replacement equal in value but carrying a graph still passes its gradient on; a transposed
    z replacement works on GPT-2's Conv1D too."""
    source = torch.zeros((), requires_grad=True)
    with model.hooks(fwd={"blocks.1.attn.hook_q_input": lambda x, hook: x + source}):
        model(ids)[:, -1, 3].sum().backward()
    assert source.grad is not None and source.grad != 0
    model.hf.zero_grad(set_to_none=True)

    def transposed(z, hook):
        return z.transpose(0, 1).contiguous().transpose(0, 1)  # same values, not contiguous

    with torch.no_grad(), model.hooks(fwd={"blocks.1.attn.hook_z": transposed}):
        assert torch.equal(model(ids), model.run_with_hooks(ids))
