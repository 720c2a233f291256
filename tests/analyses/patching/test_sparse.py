"""Circuits evaluated node by node equal the hooks' masked runs, for every ablation, direction, padding and both
architectures; they compute only the nodes a circuit changes."""

from __future__ import annotations

import pytest
import torch

import interp
from analyses.patching import circuits, sparse, tasks
from analyses.patching.circuits import masked_values
from analyses.patching.errors import PatchingError
from analyses.patching.graph import Graph
from analyses.patching.metrics import LogitDiff

from .helpers import random_task, tiny_model


def _rows(graph: Graph, seed: int = 0) -> torch.Tensor:
    """Circuits of every kind: nested top-n circuits of random scores, random fractions, none and every edge."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.randperm(graph.n_edges, generator=g)
    nested = [(rank >= n).float() for n in (1, 3, 10, graph.n_edges // 3, graph.n_edges - 5)]
    fractional = torch.rand(graph.n_edges, generator=g)
    return torch.stack([torch.zeros(graph.n_edges), *nested, fractional, torch.ones(graph.n_edges)])


def _by_hooks(monkeypatch, model, task, rows, **kwargs) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(sparse, "applies", lambda *args: False)
        return masked_values(model, task, rows, **kwargs)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
@pytest.mark.parametrize("ablation, direction", [("corrupt", "noising"), ("corrupt", "denoising"),
                                                 ("mean", "noising"), ("zero", "noising")])
def test_node_by_node_equals_the_hooks_masked_runs(monkeypatch, arch, padded, ablation, direction):
    model = tiny_model(arch)
    task = random_task(model, padded=padded, changed=(5, 7))
    rows = _rows(Graph.from_model(model))
    assert sparse.applies(model, LogitDiff.of(task), task.n_pos)
    got = masked_values(model, task, rows, ablation=ablation, direction=direction)
    expected = _by_hooks(monkeypatch, model, task, rows, ablation=ablation, direction=direction)
    assert (got - expected).abs().max() < 1e-5
    assert expected.std() > 1e-2  # the circuits differ


@pytest.mark.parametrize("ablation", ["corrupt", "mean", "zero"])
def test_a_model_without_attention_biases_against_its_weights_in_fp64(ablation):
    """No q/k/v or output bias (GPT-NeoX's attention_bias=False): the missing biases count as zeros."""
    model = tiny_model("neox", attention_bias=False)
    exact = interp.Model(tiny_model("neox", attention_bias=False).hf.double(), model.tokenizer, name="fp64")
    task = random_task(model, padded=True, changed=(5, 7))
    rows = _rows(Graph.from_model(model), seed=5)
    assert model.hf.gpt_neox.layers[0].attention.dense.bias is None
    got = masked_values(model, task, rows, ablation=ablation)
    assert (got - masked_values(exact, task, rows, ablation=ablation)).abs().max() < 1e-5


@pytest.mark.parametrize("attention", ["eager", "sdpa", "unpacked"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_both_references_in_one_packed_pass_equal_two_runs(monkeypatch, arch, attention):
    """The base and corrupt runs share one pass (the corrupt tokens from the first change on, packed after the
    base's, with their own positions and a custom mask) under eager and sdpa attention; with another attention
    implementation they run one after the other. Every way gives the hooks' values, padded or not."""
    model = tiny_model(arch, attn_implementation="sdpa" if attention == "unpacked" else attention)
    if attention == "unpacked":
        monkeypatch.setattr(sparse, "PACKED", ())
    task = random_task(model, padded=True, changed=(5, 7))
    rows = _rows(Graph.from_model(model), seed=3)
    graph, metric = Graph.from_model(model), LogitDiff.of(task)
    refs = sparse.References(model, graph, task.clean, 5, metric, other=task.corrupt)
    with torch.no_grad():
        corrupt = model.run_with_cache(task.corrupt, names=["blocks.0.attn.hook_k"])[1]["blocks.0.attn.hook_k"]
    assert (refs.other_qkv[0][1][:, :, 0] - refs.base_qkv[0][1][:, :, 5]).abs().max() > 1e-3  # they differ there
    k = refs._rotated([corrupt] * 3, 0)[1][:, :, 5:]
    real = task.corrupt.attention_mask[:, 5:].bool()
    assert (refs.other_qkv[0][1] - k).transpose(1, 2)[real].abs().max() < 1e-5
    got = sparse.node_values(refs, rows)
    assert (got - _by_hooks(monkeypatch, model, task, rows)).abs().max() < 1e-5


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_every_edge_but_the_queries_kept_under_mean_and_zero_ablation(monkeypatch, arch, padded, ablation):
    """Only the queries read ablated values: scattered receivers whose kept senders carry no change (a zero or mean
    ablation has no OTHER shortcut) get the ablated input as it is, as the hooks do. Four heads: a layer's
    queries are scattered among its receivers."""
    model = tiny_model(arch, **({"num_attention_heads": 4} if arch == "neox" else {"n_head": 4}))
    task = random_task(model, padded=padded, changed=(5, 7))
    graph = Graph.from_model(model)
    rows = torch.tensor([[float(r.endswith(".q")) for _, r in graph.edges], [1.0] * graph.n_edges])
    got = masked_values(model, task, rows, ablation=ablation)
    assert (got - _by_hooks(monkeypatch, model, task, rows, ablation=ablation)).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_in_double_precision_to_its_rounding(monkeypatch, arch):
    model = tiny_model(arch, dtype=torch.float64)
    task = random_task(model, changed=(3,))
    rows = _rows(Graph.from_model(model), seed=1).double()
    got = masked_values(model, task, rows)
    assert got.dtype == torch.float64
    assert (got - _by_hooks(monkeypatch, model, task, rows)).abs().max() < 1e-10


def test_the_two_ends_are_the_reference_runs_exactly():
    """Keeping every edge computes no node and gives the base run's metric; keeping none gives the ablated run's."""
    model = tiny_model()
    task = random_task(model, changed=(2,))
    graph, metric = Graph.from_model(model), LogitDiff.of(task)
    refs = sparse.References(model, graph, task.clean, 2, metric, other=task.corrupt)
    with torch.no_grad():
        clean, corrupt = (metric(model(t)).mean() for t in (task.clean, task.corrupt))
    every, none = sparse.node_values(refs, torch.stack([torch.zeros(graph.n_edges), torch.ones(graph.n_edges)]))
    assert float(every) == pytest.approx(float(clean), abs=1e-5)
    assert float(none) == pytest.approx(float(corrupt), abs=1e-5)


def _keeping(graph: Graph, edges) -> torch.Tensor:
    ablate = torch.ones(1, graph.n_edges)
    for s, r in edges:
        ablate[0, graph.edge_index(s, r)] = 0
    return ablate


@pytest.mark.parametrize("edges, computed", [
    ([("embed", "L1H0.k"), ("L1H0", "logits")], {"L1H0"}),  # nothing upstream or beside it
    ([("embed", "L1H0.k")], set()),  # nothing reads the head's output: nothing at all is computed
    ([("embed", "L0H1.q"), ("L0H1", "L1H0.v")], set()),  # L1H0 reads L0H1, but nothing reads L1H0
    ([("embed", "L0H1.q"), ("L0H1", "L1H0.v"), ("L0H1", "mlp1"), ("mlp1", "logits")], {"L0H1", "mlp1"}),
])
def test_a_circuit_computes_only_the_nodes_it_changes_and_that_are_read(monkeypatch, edges, computed):
    model = tiny_model()
    task = random_task(model, changed=(2,))
    graph = Graph.from_model(model)
    refs = sparse.References(model, graph, task.clean, 2, LogitDiff.of(task), other=task.corrupt)
    chunk = sparse._Chunk(refs, _keeping(graph, edges))
    value = chunk.run()
    mixed = {graph.senders[s].name for s in (chunk.status[0] == sparse.MIXED).nonzero().flatten().tolist()}
    assert mixed == computed
    if not computed:
        assert torch.equal(value, refs.metric.per_patch(refs.other_values))  # exactly the ablated run's metric
    torch.testing.assert_close(value, _by_hooks(monkeypatch, model, task, _keeping(graph, edges)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
@pytest.mark.parametrize("edges, alone, everywhere", [
    # mlp1's only kept edge goes to the logits: it runs at the last position alone (its other positions are 0,
    # multiplied by 0); L0H1 sends to a key, read at every position, so it runs everywhere
    ([("embed", "L0H1.q"), ("L0H1", "mlp1"), ("mlp1", "logits"), ("L0H1", "L1H0.k"), ("L1H0", "logits")],
     "mlp1", ["L0H1.q", "L1H0.k"]),
    # L0H1 sends to the logits and to mlp1 alone: its query and result at the last position alone, its keys
    # everywhere (its own last query reads them)
    ([("embed", "L0H1.k"), ("embed", "L0H1.q"), ("L0H1", "logits"), ("L0H1", "mlp1"), ("mlp1", "logits")],
     "L0H1", ["L0H1.k"]),
], ids=["mlp", "head"])
def test_a_node_read_at_the_last_position_alone_runs_there_alone(monkeypatch, arch, edges, alone, everywhere):
    model = tiny_model(arch)
    task = random_task(model, changed=(2,))
    graph = Graph.from_model(model)
    refs = sparse.References(model, graph, task.clean, 2, LogitDiff.of(task), other=task.corrupt)
    chunk = sparse._Chunk(refs, _keeping(graph, edges))
    value = chunk.run()
    node = graph.sender_index(alone)
    assert chunk.status[0, node] == sparse.MIXED
    assert not chunk.every[0, graph.receiver_index(alone if alone.startswith("mlp") else alone + ".q")]
    assert all(chunk.every[0, graph.receiver_index(r)] for r in everywhere)
    assert not chunk.bank[node, 0, :, :-1].any() and chunk.bank[node, 0, :, -1].abs().sum() > 0
    torch.testing.assert_close(value, _by_hooks(monkeypatch, model, task, _keeping(graph, edges)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_chunks_of_circuits_agree_with_one_batch(arch):
    model = tiny_model(arch)
    task = random_task(model, padded=True)
    rows = _rows(Graph.from_model(model), seed=2)
    one = masked_values(model, task, rows)
    per_circuit = sparse.circuit_bytes(model, Graph.from_model(model), len(task.clean), task.n_pos)
    several = masked_values(model, task, rows, budget_mb=2.5 * per_circuit / 2**20)  # two circuits per chunk
    assert torch.equal(one, several) or (one - several).abs().max() < 1e-6


@pytest.mark.parametrize("layers, heads", [(2, 2), (4, 2), (4, 4)], ids=["2x2", "4x2", "4x4"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_scratch_kept_between_calls_carries_nothing_over(monkeypatch, arch, padded, layers, heads):
    """On CPU a call's scratch memory is kept for the model's next call. Whatever it holds then (NaN here) changes
    no value; a call that needs more memory replaces it with a larger block."""
    sizes = {"num_hidden_layers": layers, "num_attention_heads": heads} if arch == "neox" else {"n_layer": layers,
                                                                                                "n_head": heads}
    model = tiny_model(arch, **sizes)
    task = random_task(model, padded=padded, changed=(5, 7))
    graph = Graph.from_model(model)
    rows = _rows(graph, seed=4)
    rank = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(4))
    curve = torch.stack([(rank >= n).float() for n in circuits.sizes(graph.n_edges, 12)])
    sparse.release_scratch(model)
    masked_values(model, task, rows[:3])
    kept = sparse._kept[model]
    for later in (rows[1:3], rows, curve):
        sparse._kept[model].fill_(float("nan"))
        got = masked_values(model, task, later)
        assert (got - _by_hooks(monkeypatch, model, task, later)).abs().max() < 1e-5
        if len(later) <= 3:  # fewer circuits: the same block
            assert sparse._kept[model] is kept
    assert sparse._kept[model].numel() > kept.numel()


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_a_poisoned_kept_scratch_gives_the_same_bits_as_fresh_memory(arch, dtype, padded):
    model = tiny_model(arch, dtype=dtype)
    task = random_task(model, padded=padded, changed=(5, 7))
    rows = _rows(Graph.from_model(model), seed=6)
    sparse.release_scratch(model)
    fresh = masked_values(model, task, rows)
    sparse._kept[model].fill_(float("nan"))
    assert torch.equal(masked_values(model, task, rows), fresh)


def test_scratch_is_never_shared_and_goes_with_the_model():
    import gc

    model = tiny_model()
    task = random_task(model, changed=(5, 7))
    graph, metric = Graph.from_model(model), LogitDiff.of(task)
    first = sparse.References(model, graph, task.clean, 5, metric, other=task.corrupt)
    second = sparse.References(model, graph, task.clean, 5, metric, other=task.corrupt)
    with first, second:  # two evaluations at once: two blocks
        assert first.scratch(2)[0].data_ptr() != second.scratch(2)[0].data_ptr()
        size = first._block.nbytes
    assert sparse.release_scratch(model) == size  # one of them kept
    masked_values(model, task, _rows(graph))
    assert sparse.release_scratch() > 0 and sparse.release_scratch() == 0
    masked_values(model, task, _rows(graph))
    gc.collect()
    entries = len(sparse._kept)
    del model, first, second
    gc.collect()
    assert len(sparse._kept) == entries - 1


@pytest.mark.parametrize("wrong", ["toy", "hf", "list"])
def test_releasing_scratch_of_something_not_a_model_names_the_fix(wrong):
    model = tiny_model()
    masked_values(model, random_task(model), _rows(Graph.from_model(model)))
    with pytest.raises(PatchingError, match="interp.Model"):
        sparse.release_scratch({"toy": "toy", "hf": model.hf, "list": [model]}[wrong])
    assert sparse._kept[model] is not None  # still kept


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_half_precision_padded_agrees_with_the_hooks_to_its_rounding(monkeypatch, arch, dtype):
    model = tiny_model(arch, dtype=dtype)
    task = random_task(model, padded=True, changed=(5, 7))
    rows = _rows(Graph.from_model(model), seed=3)
    got = masked_values(model, task, rows)
    expected = _by_hooks(monkeypatch, model, task, rows)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    eps = torch.finfo(dtype).eps
    assert (got - expected).abs().max() <= 8 * eps * max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("changed", [(0,), (5, 7)], ids=["first", "middle"])
@pytest.mark.parametrize("ablation", ["corrupt", "mean", "zero"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_half_precision_agrees_with_the_same_weights_in_fp32(arch, dtype, ablation, changed, padded):
    """A half-precision model's circuits against its own weights in fp32, under every ablation: within a few
    roundings, also for nearly empty circuits under a zero ablation, whose residual stream is small next to
    the base run's (taken as the base less every change, it would keep the base run's rounding)."""
    model = tiny_model(arch, dtype=dtype)
    exact = interp.Model(tiny_model(arch, dtype=dtype).hf.float(), model.tokenizer, name="fp32")
    task = random_task(model, padded=padded, changed=changed)
    rows = _rows(Graph.from_model(model), seed=3)
    got = masked_values(model, task, rows, ablation=ablation)
    expected = masked_values(exact, task, rows, ablation=ablation)
    assert ((got - expected).abs() / expected.abs().clamp(min=1)).max() <= 4 * torch.finfo(dtype).eps


@pytest.mark.parametrize("name", ["toy-2l", "toy-4l", "toy-gpt2"])
def test_the_toy_induction_curve_equals_the_hooks_runs(monkeypatch, name):
    from analyses.patching import eap

    model = interp.load(name)
    task = tasks.induction(model, n_prompts=4)
    scores = eap(model, task)
    ns = circuits.sizes(scores.graph.n_edges, 12)
    rank = torch.empty_like(scores.ranked("top"))
    rank[scores.ranked("top")] = torch.arange(scores.graph.n_edges)
    rows = torch.stack([(rank >= n).float() for n in ns])
    got = masked_values(model, task, rows)
    assert (got - _by_hooks(monkeypatch, model, task, rows)).abs().max() < 1e-5


def test_where_it_does_not_apply_the_hooks_run():
    model = tiny_model()
    task = random_task(model)
    assert not sparse.applies(model, LogitDiff.of(task, positions=[2]), task.n_pos)  # reads an earlier position
    upcast = tiny_model("gpt2", reorder_and_upcast_attn=True)
    assert not sparse.applies(upcast, LogitDiff.of(task), task.n_pos)  # GPT-2's fp32 attention path
    model.hf.train()
    assert not sparse.applies(model, LogitDiff.of(task), task.n_pos)
