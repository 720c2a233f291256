"""AtP, AtP*, EAP and EAP-IG against autograd, finite differences and hand-written references."""

from __future__ import annotations

import pytest
import torch

from analyses.patching.activation import activation_patch
from analyses.patching.attribution import atp, eap, eap_ig, receiver_sites, sender_sites
from analyses.patching.circuits import masked_values
from analyses.patching.graph import Graph
from analyses.patching.metrics import LogitDiff
from interp.cache import ActivationCache

from .helpers import random_task, same, tiny_model


def small(arch: str):
    return tiny_model(arch, dtype=torch.float64, num_hidden_layers=2) if arch == "neox" else \
        tiny_model(arch, dtype=torch.float64, n_layer=2)


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_edge_masks_pass_gradcheck_and_their_gradient_at_zero_is_eap(arch):
    model = small(arch)
    task = random_task(model, n_prompts=2, n_pos=6, changed=(1, 3))
    n_edges = Graph.from_model(model).n_edges

    def f(ablate):
        return masked_values(model, task, ablate[None])

    point = torch.rand(n_edges, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    assert torch.autograd.gradcheck(f, (point,), eps=1e-6, atol=1e-5)
    zero = torch.zeros(n_edges, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(zero).sum(), zero)
    scores = eap(model, task).scores.double()
    assert torch.allclose(scores, grad, atol=1e-7, rtol=1e-5)
    assert grad.abs().max() > 1e-3


def output(cache, node):
    """A sender's output from a cache."""
    if node.kind == "embed":
        return cache["hook_embed"]
    if node.kind == "head":
        return cache[f"blocks.{node.layer}.attn.hook_result"][:, :, node.head]
    return cache[f"blocks.{node.layer}.hook_mlp_out"]


def grad_at(grads: dict, node, n_layers: int):
    """The gradient at a receiver's input."""
    if node.kind == "logits":
        return grads[f"blocks.{n_layers - 1}.hook_resid_post"]
    if node.kind == "mlp":
        return grads[f"blocks.{node.layer}.hook_mlp_in"]
    return grads[f"blocks.{node.layer}.attn.hook_{node.kind}_input"][:, :, node.head]


def ig_reference(model, task, steps: int) -> torch.Tensor:
    """EAP-IG by hand: gradients at each receiver for inputs k/steps of the way from corrupt to clean."""
    graph = Graph.from_model(model)
    out_sites = sender_sites(model)
    _, clean = model.run_with_cache(task.clean, names=out_sites)
    _, corrupt = model.run_with_cache(task.corrupt, names=out_sites)
    metric = LogitDiff.of(task)
    mean_grads = {}
    for k in range(1, steps + 1):
        def interpolate(x, hook, a=k / steps):
            return corrupt["hook_embed"] + a * (clean["hook_embed"] - corrupt["hook_embed"])
        with model.hooks(fwd={"hook_embed": interpolate}):
            _, _, grads = model.run_with_cache_and_grads(task.clean, lambda lg: metric(lg).mean(),
                                                         names=receiver_sites(model))
        for name in grads:
            mean_grads[name] = mean_grads.get(name, 0) + grads[name] / steps
    L = model.n_layers
    scores = []
    for s, r in graph.edges:
        sender, receiver = graph.sender(s), graph.receiver(r)
        scores.append(((output(corrupt, sender) - output(clean, sender)) * grad_at(mean_grads, receiver, L)).sum())
    return torch.stack(scores)


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_eap_ig_equals_a_hand_written_integral(arch):
    model = small(arch)
    task = random_task(model, n_prompts=2, n_pos=6, changed=(1, 3))
    got = eap_ig(model, task, steps=4).scores.double()
    assert torch.allclose(got, ig_reference(model, task, 4), atol=1e-8, rtol=1e-6)
    assert torch.allclose(eap_ig(model, task, steps=1).scores, eap(model, task).scores, atol=1e-8)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_edge_scores_from_a_late_change_equal_sums_over_every_position(arch, padded):
    """EAP and EAP-IG dot the changes with the gradients from the first changed position on (before it every change
    is 0); the hand-written sums run over every position."""
    model = small(arch)
    task = random_task(model, n_prompts=3, n_pos=8, changed=(5, 6), padded=padded)
    assert torch.allclose(eap(model, task).scores.double(), ig_reference(model, task, 1), atol=1e-8, rtol=1e-6)
    assert torch.allclose(eap_ig(model, task, steps=3).scores.double(), ig_reference(model, task, 3), atol=1e-8,
                          rtol=1e-6)


@pytest.mark.parametrize("site", ["z", "resid_pre", "mlp_out", "v", "pattern"])
def test_atp_matches_finite_differences(site):
    """Patch in clean + eps * u: the exact effect agrees with AtP's score up to O(eps^2).

    eps is not smaller because the pattern is rounded through an fp32 softmax (as HF eager does),
    which puts a noise floor of about 1e-8 under any patched value, even in float64."""
    model = small("neox")
    task = random_task(model, n_prompts=2, n_pos=6)
    names = [f"blocks.{ly}.attn.hook_{site}" if site in ("z", "v", "pattern") else f"blocks.{ly}.hook_{site}"
             for ly in range(model.n_layers)]
    _, cache = model.run_with_cache(task.clean, names=names)
    eps = 1e-4
    g = torch.Generator().manual_seed(0)
    nudged = ActivationCache({n: cache[n] + eps * torch.randn(cache[n].shape, generator=g, dtype=cache[n].dtype)
                              for n in cache}, cache.provenance)
    scores = atp(model, task, sites=[site], ablation=nudged).effects
    exact = activation_patch(model, task, sites=[site], ablation=nudged).effects
    assert torch.allclose(scores, exact, atol=1e-2 * exact.abs().max())
    assert exact.abs().max() > 1e-6


@pytest.mark.parametrize("site", ["q", "k"])
def test_atp_star_pattern_change_is_exact(site):
    """AtP*'s q/k scores equal dM/dpattern dotted with the pattern an actual q/k patch produces."""
    model = small("neox")
    task = random_task(model, n_prompts=2, n_pos=6, changed=(1, 3))
    result = atp(model, task, sites=[site], qk_fix=True)
    pattern_sites = [f"blocks.{ly}.attn.hook_pattern" for ly in range(model.n_layers)]
    metric = LogitDiff.of(task)
    _, clean, grads = model.run_with_cache_and_grads(task.clean, lambda lg: metric(lg).mean(), names=pattern_sites)
    _, corrupt = model.run_with_cache(task.corrupt, names=[f"blocks.{ly}.attn.hook_{site}" for ly in range(2)])
    for row in result.to_frame().sample(12, random_state=0).itertuples():
        name = f"blocks.{row.layer}.attn.hook_{site}"

        def patch(x, hook, row=row, name=name):
            x = x.clone()
            x[:, row.position, row.head] = corrupt[name][:, row.position, row.head]
            return x

        with model.hooks(fwd={name: patch}):
            _, patched = model.run_with_cache(task.clean, names=[pattern_sites[row.layer]])
        change = patched[pattern_sites[row.layer]] - clean[pattern_sites[row.layer]]
        expected = (change * grads[pattern_sites[row.layer]]).sum()
        assert abs(row.effect - float(expected)) < 1e-7, row  # the fp32 softmax of HF eager rounds at ~5e-8


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_clean_into_clean_gives_zero_scores(arch):
    model = tiny_model(arch)
    task = same(random_task(model, padded=True))
    assert atp(model, task, sites=["z", "q", "k", "pattern", "resid_pre"], qk_fix=True).effects.abs().max() == 0
    assert eap(model, task).scores.abs().max() == 0
    assert eap_ig(model, task, steps=3).scores.abs().max() == 0


def test_edge_scores_frame_json_and_figure():
    model = tiny_model()
    scores = eap(model, random_task(model))
    frame = scores.to_frame()
    assert frame.columns.tolist() == ["sender", "receiver", "effect", "effect_normalized"]
    assert len(frame) == Graph.from_model(model).n_edges
    record = scores.to_json(scores.top(5))
    assert record["schema"] == "pythia-interp/patching-graph/1"
    assert sum(e["in_circuit"] for e in record["edges"]) == 5
    assert {n["name"] for n in record["nodes"]} >= {"embed", "L0H0", "mlp2", "logits"}
    assert scores.figure().data[0].type == "heatmap"


@pytest.mark.parametrize("cut", ["positions", "prompts"])
def test_a_task_built_by_hand_with_misaligned_prompts_is_refused(cut):
    from analyses.patching import tasks
    from analyses.patching.errors import TaskError

    model = small("neox")
    task = random_task(model, n_prompts=3, n_pos=8)
    ids = task.corrupt.ids[:, :-1] if cut == "positions" else task.corrupt.ids[:2]
    with pytest.raises(TaskError, match="corrupt"):
        tasks.Task("by hand", task.clean, model.tokens(ids), task.answer, task.wrong)
