"""Circuits: all edges give the clean logits, none the ablated ones; batching, single edges, curves, figures."""

from __future__ import annotations

import json

import pytest
import torch

from analyses.patching.attribution import eap
from analyses.patching.circuits import (
    evaluate_circuit,
    faithfulness_curve,
    masked_logits,
    masked_values,
    sizes,
)
from analyses.patching.errors import GraphError, UnknownMethodError, WeakTaskWarning
from analyses.patching.graph import Graph
from analyses.patching.path import path_patch
from analyses.patching.results import SCHEMA

from .helpers import random_task, same, tiny_model


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_every_edge_gives_clean_logits_and_none_the_corrupt_ones(arch, padded):
    model = tiny_model(arch)
    task = random_task(model, padded=padded, changed=(3, 5, 7))
    n_edges = Graph.from_model(model).n_edges
    logits = masked_logits(model, task, torch.stack([torch.zeros(n_edges), torch.ones(n_edges)]))
    real = task.clean.attention_mask.bool()
    assert torch.allclose(logits[0][real], model(task.clean)[real], atol=1e-5)
    assert torch.allclose(logits[1][real], model(task.corrupt)[real], atol=1e-4)
    assert not torch.allclose(model(task.clean)[real], model(task.corrupt)[real], atol=1e-2)


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_no_edge_with_zero_or_mean_ablation_is_the_ablated_run(ablation, arch):
    """Every edge ablated: each node reads only ablated outputs, as when every sender is ablated at once."""
    model = tiny_model(arch)
    task = random_task(model)
    L = model.n_layers
    names = ["hook_embed", *(f"blocks.{ly}.attn.hook_z" for ly in range(L)),
             *(f"blocks.{ly}.hook_mlp_out" for ly in range(L))]
    _, clean = model.run_with_cache(task.clean, names=names)

    def ablate(x, hook):
        value = clean[hook.name]
        return torch.zeros_like(value) if ablation == "zero" else value.mean(0, keepdim=True).expand_as(value).clone()

    with model.hooks(fwd={name: ablate for name in names}):
        expected = model(task.clean)
    logits = masked_logits(model, task, torch.ones(1, Graph.from_model(model).n_edges), ablation=ablation)[0]
    assert torch.allclose(logits, expected, atol=1e-4)


def test_circuits_in_one_batch_equal_one_at_a_time():
    model = tiny_model()
    task = random_task(model)
    g = torch.Generator().manual_seed(0)
    n_edges = Graph.from_model(model).n_edges
    masks = (torch.rand(5, n_edges, generator=g) < 0.5).float()
    together = masked_values(model, task, masks)
    alone = torch.cat([masked_values(model, task, m[None]) for m in masks])
    tiny_chunks = masked_values(model, task, masks, budget_mb=0.001)
    assert torch.allclose(together, alone, atol=1e-5) and torch.allclose(together, tiny_chunks, atol=1e-5)


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_one_ablated_edge_is_unmediated_path_patching(arch):
    """With every other edge kept, ablating s -> r feeds r clean + (corrupt_s - clean_s): path patching with
    MLPs frozen."""
    model = tiny_model(arch)
    task = random_task(model, changed=(2, 6))
    graph = Graph.from_model(model)
    pairs = [("L0H1", "L2H0.k"), ("embed", "mlp1"), ("mlp0", "logits"), ("L1H0", "L2H1.v")]
    masks = torch.zeros(len(pairs), graph.n_edges)
    for i, (s, r) in enumerate(pairs):
        masks[i, graph.edge_index(s, r)] = 1
    values = masked_values(model, task, masks)
    for (s, r), value in zip(pairs, values, strict=True):
        result = path_patch(model, task, [s], [r], mediate=False)
        assert abs(float(value) - result.clean - result[s, r]) < 1e-5


def test_circuit_scores_faithfulness_and_completeness():
    model = tiny_model()
    task = random_task(model, changed=(2, 6))
    scores = eap(model, task)
    everything = evaluate_circuit(model, task, torch.ones(scores.graph.n_edges, dtype=torch.bool), scores)
    assert everything.faithfulness == pytest.approx(1.0, abs=1e-4)
    assert everything.completeness == pytest.approx(1.0, abs=1e-4)
    nothing = evaluate_circuit(model, task, [], scores)
    assert nothing.faithfulness == pytest.approx(0.0, abs=1e-4) and nothing.completeness == pytest.approx(0.0, abs=1e-4)
    some = evaluate_circuit(model, task, [("L0H1", "L2H0.k"), ("L2H0", "logits")])
    assert some.n_edges == 2 and set(some.edges()) == {("L0H1", "L2H0.k"), ("L2H0", "logits")}
    with pytest.raises(GraphError, match="no edge L2H0 -> L0H1.q"):
        evaluate_circuit(model, task, [("L2H0", "L0H1.q")])


def test_faithfulness_curve_sizes_and_ends():
    assert sizes(100, 8)[0] == 0 and sizes(100, 8)[-1] == 100 and len(sizes(100, 8)) == 8
    assert sizes(32347, 32) == sorted(set(sizes(32347, 32))) and len(sizes(32347, 32)) == 32
    assert sizes(5, 32) == [0, 1, 2, 3, 4, 5]
    model = tiny_model()
    task = random_task(model, changed=(2, 6))
    scores = eap(model, task)
    curve = faithfulness_curve(model, task, scores, points=8)
    frame = curve.to_frame()
    assert frame.faithfulness.iloc[0] == pytest.approx(0.0) and frame.faithfulness.iloc[-1] == pytest.approx(1.0)
    top3 = evaluate_circuit(model, task, scores.top(frame.n_edges.iloc[2]), scores)
    assert frame.value.iloc[2] == pytest.approx(top3.value, abs=1e-5)


def test_circuit_json_figure_and_frame():
    model = tiny_model()
    task = random_task(model)
    scores = eap(model, task)
    circuit = evaluate_circuit(model, task, scores.top(6), scores)
    record = json.loads(json.dumps(circuit.to_json()))
    assert record["schema"] == SCHEMA and record["circuit"]["n_edges"] == 6
    assert [e["sender"] for e in record["edges"] if e["in_circuit"]] == circuit.to_frame().sender.tolist()
    fig = circuit.figure()
    edge_traces = [t for t in fig.data if t.mode == "lines" and t.x[0] is not None]
    assert len(edge_traces) == 6
    widths = sorted(t.line.width for t in edge_traces)
    assert widths[-1] > widths[0]  # width follows |score|


def _plain_greedy(graph: Graph, scores: torch.Tensor) -> list[int]:
    """Greedy search written plainly: each step scans every edge into a node already in the circuit."""
    joined, order, left = {"logits"}, [], set(range(graph.n_edges))
    while left:
        fringe = [i for i in sorted(left) if graph.edges[i][1].split(".")[0] in joined]
        best = max(fringe, key=lambda i: (abs(float(scores[i])), -i))
        order.append(best)
        left.remove(best)
        joined.add(graph.edges[best][0])
    return order


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_greedy_selection_equals_a_plain_search_and_stays_connected(arch):
    model = tiny_model(arch)
    scores = eap(model, random_task(model))
    graph = scores.graph
    order = scores.greedy_ranking().tolist()
    assert order == _plain_greedy(graph, scores.scores)
    keep = scores.greedy(12)
    assert keep.sum() == 12 and scores.select(12, "greedy").equal(keep) and scores.select(12).equal(scores.top(12))
    kept = [graph.edges[i] for i in keep.nonzero().flatten().tolist()]
    senders = {s for s, _ in kept}
    assert all(r == "logits" or r.split(".")[0] in senders for _, r in kept), kept
    # greedy and top differ where a large score sits on an edge into a node nothing kept reads
    top_kept = [graph.edges[i] for i in scores.top(12).nonzero().flatten().tolist()]
    top_senders = {s for s, _ in top_kept}
    disconnected = [r for _, r in top_kept if r != "logits" and r.split(".")[0] not in top_senders]
    assert bool(disconnected) == (not keep.equal(scores.top(12)))


def test_faithfulness_curve_with_greedy_selection():
    model = tiny_model()
    task = random_task(model)
    scores = eap(model, task)
    curve = faithfulness_curve(model, task, scores, points=6, selection="greedy")
    assert curve.selection == "greedy"
    frame = curve.to_frame()
    assert frame.faithfulness.iloc[0] == pytest.approx(0, abs=1e-5) and frame.faithfulness.iloc[-1] == pytest.approx(1)
    one = evaluate_circuit(model, task, scores.greedy(frame.n_edges.iloc[2]), scores)
    assert frame.value.iloc[2] == pytest.approx(one.value, abs=1e-5)
    with pytest.raises(UnknownMethodError, match="greedy"):
        faithfulness_curve(model, task, scores, selection="best")


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_masked_runs_from_the_first_change_equal_whole_prompt_runs(arch, padded, monkeypatch):
    """Positions before the first token clean and corrupt differ in run once (the KV cache), as in a whole run."""
    from analyses.patching import circuits

    model = tiny_model(arch)
    task = random_task(model, padded=padded, changed=(5, 7))
    assert circuits.first_change(task, "corrupt") == 5 and circuits.first_change(task, "mean") == 0
    graph = Graph.from_model(model)
    ablate = (torch.rand(6, graph.n_edges, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    from_change = masked_values(model, task, ablate)
    monkeypatch.setattr(circuits, "first_change", lambda task, ablation: 0)
    whole = masked_values(model, task, ablate)
    assert (from_change - whole).abs().max() < 1e-5 and whole.std() > 1e-3


def test_a_task_the_model_does_not_do_warns_that_normalised_numbers_mean_little():
    model = tiny_model()
    task = random_task(model)
    with pytest.warns(WeakTaskWarning, match="almost the same"):
        circuit = evaluate_circuit(model, same(task), [])
    assert circuit.faithfulness != circuit.faithfulness  # NaN: clean and corrupt are the same run
    import warnings

    import interp
    from analyses.patching import tasks

    toy = interp.load("toy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeakTaskWarning)
        evaluate_circuit(toy, tasks.induction(toy, n_prompts=2), [])  # a task the model does: no warning


def test_bad_circuit_input_names_the_fix_before_any_run(monkeypatch):
    from analyses.patching import runs, tasks
    from analyses.patching.activation import activation_patch
    from analyses.patching.errors import PatchingError, TaskError

    model = tiny_model()
    task = random_task(model)
    graph = Graph.from_model(model)
    scores = eap(model, task)
    monkeypatch.setattr(runs, "sources", lambda *a, **k: pytest.fail("ran before checking its input"))
    rows = torch.zeros(2, graph.n_edges)
    with pytest.raises(UnknownMethodError, match="direction 'noise'"):
        masked_values(model, task, rows, direction="noise")
    with pytest.raises(UnknownMethodError, match="only makes sense when noising"):
        masked_values(model, task, rows, ablation="mean", direction="denoising")
    for bad in (torch.zeros(graph.n_edges), torch.zeros(2, graph.n_edges - 1), [[0.0] * graph.n_edges]):
        with pytest.raises(GraphError, match=f"expected a tensor of shape \\(circuits, {graph.n_edges}\\)"):
            masked_values(model, task, bad)
        with pytest.raises(GraphError, match="expected a tensor"):
            masked_logits(model, task, bad)
    for value in (2.0, -0.5, float("nan")):  # masks run from kept (0) to ablated (1); outside, the paths differed
        bad = rows.clone()
        bad[1, 3] = value
        for differentiable in (False, True):
            with pytest.raises(GraphError, match="clamp them to \\[0, 1\\]"):
                masked_values(model, task, bad.requires_grad_(differentiable))
        with pytest.raises(GraphError, match="clamp them"):
            masked_logits(model, task, bad)
    for budget in (0, -1, float("nan")):
        with pytest.raises(PatchingError, match="positive number"):
            masked_values(model, task, rows, budget_mb=budget)
        with pytest.raises(PatchingError, match="positive number"):
            activation_patch(model, task, budget_mb=budget)
        with pytest.raises(PatchingError, match="positive number"):
            path_patch(model, task, "heads", "logits", budget_mb=budget)
    for n in (-1, 1.5):
        for pick in (scores.top, scores.greedy, scores.select):
            with pytest.raises(GraphError, match="whole number >= 0"):
                pick(n)
    with pytest.raises(GraphError, match="at least 2 circuit sizes"):
        faithfulness_curve(model, task, scores, points=1)
    other = eap(tiny_model(num_hidden_layers=2), random_task(tiny_model(num_hidden_layers=2)))
    with pytest.raises(GraphError, match="scores are for"):
        evaluate_circuit(model, task, [], other)
    with pytest.raises(GraphError, match="scores are for"):
        faithfulness_curve(model, task, other)
    with pytest.raises(TaskError, match="at least one prompt"):
        tasks.induction(model, n_prompts=0)
    monkeypatch.undo()  # a metric's output is only seen once it runs: then nothing of the run is left behind
    with torch.no_grad():
        before = model(task.clean)
    with pytest.raises(PatchingError, match="one value \\(a scalar\\) or one per prompt"):
        masked_values(model, task, rows, metric=lambda logits: logits[:, -1, :2].flatten())
    with torch.no_grad():
        assert torch.equal(model(task.clean), before)
