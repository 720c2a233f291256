"""Gradients follow the caller's grad mode; grads at every site equal plain autograd and finite differences."""

from __future__ import annotations

import pytest
import torch

import interp
from tests.conftest import padded_ids, tiny, twin


def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 5].sum() - logits[:, -1, 9].sum()


@pytest.fixture(params=["neox", "gpt2"])
def model(request):
    return interp.Model(tiny(request.param))


def test_forward_follows_the_callers_grad_mode(model, ids):
    with torch.no_grad():
        assert not model(ids).requires_grad
    logits = model(ids)
    assert logits.requires_grad
    metric(logits).backward()
    assert model.arch.module(model.hf, "out", 0).weight.grad is not None, "a plain backward reaches the weights"
    model.hf.zero_grad(set_to_none=True)


@pytest.mark.parametrize("padded", [False, True])
def test_residual_and_attention_grads_equal_plain_autograd(model, padded):
    ids, mask = padded_ids()
    tokens = interp.Tokens(ids, mask if padded else torch.ones_like(mask))
    value, cache, grads = model.run_with_cache_and_grads(tokens, metric)
    eager = twin(model.hf, "eager")
    out = eager(**tokens.hf_inputs(), output_hidden_states=True, output_attentions=True, use_cache=False)
    inputs = [*out.hidden_states[:-1], *out.attentions]  # resid_pre of each layer, then each pattern
    expected = torch.autograd.grad(metric(out.logits), inputs)
    torch.testing.assert_close(value, metric(out.logits).detach())
    for L in range(model.n_layers):
        torch.testing.assert_close(grads["resid_pre", L], expected[L], atol=1e-6, rtol=1e-5, msg=f"resid_pre {L}")
        torch.testing.assert_close(grads["pattern", L], expected[model.n_layers + L], atol=1e-6, rtol=1e-5,
                                   msg=f"pattern {L}")
    assert all(p.grad is None for p in model.hf.parameters()), "no parameter gradient may be left on the model"
    assert all(g.shape == cache[name].shape for name, g in grads.items())


SITES = ["blocks.1.attn.hook_z", "blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v",
         "blocks.1.attn.hook_pattern", "blocks.1.ln1.hook_scale",
         "blocks.1.ln1.hook_normalized", "blocks.1.attn.hook_q_input", "blocks.1.attn.hook_k_input",
         "blocks.1.attn.hook_result", "blocks.1.hook_mlp_in", "blocks.1.mlp.hook_post", "blocks.1.ln2.hook_scale",
         "ln_final.hook_scale", "blocks.1.hook_resid_pre", "blocks.1.hook_attn_out"]


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_site_grads_match_finite_differences(arch, ids):
    model = interp.Model(tiny(arch).double())
    names = SITES + (["blocks.1.attn.hook_rot_k", "blocks.1.attn.hook_rot_q"] if arch == "neox" else
                     ["blocks.1.hook_resid_mid", "hook_pos_embed", "blocks.1.attn.hook_attn_scores"])
    eps = 5e-2  # NeoX's softmax runs in fp32 even in a float64 model: a smaller step drowns in its rounding
    for name in names:  # one site at a time: q/k/v inputs with gradients are graph inputs of their own
        _, cache, grads = model.run_with_cache_and_grads(ids, metric, names=[name])
        flat = int(grads[name].abs().flatten().argmax())  # the coordinate with the largest gradient
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), grads[name].shape))

        def nudge(delta, name=name, index=index):
            def hook(x, site):
                x = x.clone()
                x[index] += delta
                return x
            with torch.no_grad(), model.hooks(fwd={name: hook}):
                return metric(model(ids))

        def central(h):
            return (nudge(h) - nudge(-h)) / (2 * h)

        step = eps * min(1.0, float(cache[name][index].abs()) + 1e-3)  # relative to small activations (scale)
        numeric = (4 * central(step / 2) - central(step)) / 3  # Richardson: the step's own error is O(step^4)
        largest = float(grads[name].abs().max())
        assert largest > 0, f"{name}: the metric depends on every one of these sites"
        torch.testing.assert_close(grads[name][index], numeric, atol=1e-3 * largest, rtol=1e-3,
                                   msg=f"{name} at {index}")


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_score_grads_follow_the_softmax(arch, ids):
    """d/d score = p (g - sum p g): exact, where NeoX's fp32 softmax makes finite differences noisy."""
    model = interp.Model(tiny(arch).double())
    names = ["blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern"]
    _, cache, grads = model.run_with_cache_and_grads(ids, metric, names=names)
    p, g = cache["pattern", 1], grads["pattern", 1]
    expected = p * (g - (p * g).sum(-1, keepdim=True))
    torch.testing.assert_close(grads["attn_scores", 1], expected, atol=1e-9, rtol=1e-6)


def test_backward_hooks_fire_on_every_site_and_can_edit_the_gradient(model, ids):
    names = [s.name for s in model.sites.standard()] + ["blocks.0.attn.hook_result", "blocks.0.hook_mlp_in",
                                                    "blocks.0.attn.hook_q_input"]
    seen = {}

    def record(g, hook):
        seen[hook.name] = g.shape

    with model.hooks(bwd={n: record for n in names}):
        metric(model(ids)).backward()
    assert set(seen) == set(names), f"no backward hook fired on {sorted(set(names) - set(seen))[:5]}"
    model.hf.zero_grad(set_to_none=True)
    cut = {"blocks.1.hook_resid_pre": lambda g, hook: torch.zeros_like(g)}
    grads = {}
    with model.hooks(bwd={**cut, "blocks.0.hook_attn_out": lambda g, hook: grads.setdefault("a", g)}):
        metric(model(ids)).backward()
    assert torch.count_nonzero(grads["a"]) == 0, "a zeroed gradient at resid_pre 1 must not reach layer 0"
    model.hf.zero_grad(set_to_none=True)


def test_backward_hooks_need_gradients(model, ids):
    with model.hooks(bwd={"blocks.0.hook_resid_pre": lambda g, hook: None}), torch.no_grad():
        with pytest.raises(interp.InputError, match="torch.no_grad"):
            model(ids)
    assert model._hooks.active() == 0


def test_frozen_parameters_still_give_activation_grads(model, ids):
    for p in model.hf.parameters():
        p.requires_grad_(False)
    _, _, grads = model.run_with_cache_and_grads(ids, metric, names=["blocks.0.hook_resid_post"])
    assert grads["resid_post", 0].abs().sum() > 0
    for p in model.hf.parameters():
        p.requires_grad_(True)


def test_metric_must_be_a_scalar(model, ids):
    with pytest.raises(interp.InputError, match="scalar"):
        model.run_with_cache_and_grads(ids, lambda logits: logits[:, -1])
    assert model._hooks.active() == 0
