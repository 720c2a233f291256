"""The graph: closed-form edge counts, the residual forms, names and errors."""

from __future__ import annotations

import pytest
import torch

from analyses.patching.errors import GraphError
from analyses.patching.graph import Graph, edge_count
from interp import suite

from .helpers import tiny_model


def brute_force_edges(n_layers: int, n_heads: int, parallel: bool) -> set[tuple[str, str]]:
    """Every (sender, receiver) pair where the receiver reads the residual after the sender wrote, by hand."""
    senders = [("embed", -1, "embed")]
    for ly in range(n_layers):
        senders += [(f"L{ly}H{h}", ly, "head") for h in range(n_heads)] + [(f"mlp{ly}", ly, "mlp")]
    receivers = [(f"L{ly}H{h}.{x}", ly, "head") for ly in range(n_layers) for h in range(n_heads) for x in "qkv"]
    receivers += [(f"mlp{ly}", ly, "mlp") for ly in range(n_layers)] + [("logits", n_layers, "logits")]
    edges = set()
    for s, sl, sk in senders:
        for r, rl, rk in receivers:
            later = sl < rl
            same_layer_mlp = not parallel and sk == "head" and rk == "mlp" and sl == rl
            if sk == "embed" or later or same_layer_mlp:
                edges.add((s, r))
    return edges


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("n_layers, n_heads", [(1, 1), (2, 3), (3, 2), (6, 8), (5, 7)])
def test_edges_match_brute_force_and_closed_form(n_layers, n_heads, parallel):
    graph = Graph.from_dims(n_layers, n_heads, parallel)
    assert set(graph.edges) == brute_force_edges(n_layers, n_heads, parallel)
    assert graph.n_edges == len(graph.edges) == edge_count(n_layers, n_heads, parallel)


@pytest.mark.parametrize("size, expected", [("70m", 3580), ("160m", 32347)])
def test_pythia_edge_counts(size, expected):
    dims = suite.SIZES[size]
    assert Graph.from_dims(dims.n_layers, dims.n_heads, parallel_residual=True).n_edges == expected
    assert edge_count(dims.n_layers, dims.n_heads) == expected


@pytest.mark.parametrize("arch, parallel", [("neox", True), ("gpt2", False)])
def test_attention_to_mlp_within_a_layer_only_on_sequential_models(arch, parallel):
    model = tiny_model(arch)
    graph = Graph.from_model(model)
    assert graph.parallel_residual is parallel
    within = [graph.has_edge(f"L{ly}H{h}", f"mlp{ly}") for ly in range(model.n_layers) for h in range(model.n_heads)]
    assert all(within) if not parallel else not any(within)
    assert not graph.has_edge("mlp1", "mlp1") and not graph.has_edge("L1H0", "L1H1.q")


@pytest.mark.parametrize("parallel", [True, False])
def test_senders_of_every_receiver_are_a_prefix(parallel):
    """Engines index senders by prefix; every receiver's senders must be the first few in order."""
    mask = Graph.from_dims(4, 3, parallel).mask
    count = mask.sum(0)
    prefix = torch.arange(mask.shape[0])[:, None] < count[None, :]
    assert torch.equal(mask, prefix)


def test_mediators():
    graph = Graph.from_dims(4, 2, parallel_residual=True)
    assert [m.name for m in graph.mediators("L0H1", "L3H0.k")] == ["mlp1", "mlp2"]
    assert graph.mediators("L0H1", "L1H0.k") == []
    seq = Graph.from_dims(4, 2, parallel_residual=False)
    assert [m.name for m in seq.mediators("L0H1", "L1H0.k")] == ["mlp0"]


def test_bad_names_say_what_names_look_like():
    graph = Graph.from_dims(2, 2)
    with pytest.raises(GraphError, match=r"'L0H1.q', 'L0H1.k' or 'L0H1.v'"):
        graph.receiver("L0H1")
    with pytest.raises(GraphError, match="mlp"):
        graph.sender("mlp7")
    with pytest.raises(GraphError, match="no edge L1H0 -> L0H1.q"):
        graph.edge_index("L1H0", "L0H1.q")
