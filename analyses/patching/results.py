"""Result dataclasses of the patching methods: node effects, sender x receiver effects, edge scores.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> from analyses.patching import activation_patch
    >>> result = activation_patch(model, task, sites=["z"])
    >>> frame = result.to_frame()           # site, layer, head, position, effect, effect_normalized
    >>> fig = result.figure()               # layer x head (x position) heatmaps

Every result carries the metric on the clean and the corrupt run (`clean`, `corrupt`), so
`effect_normalized = effect / (clean - corrupt)`; signs follow `analyses.patching.metrics`.

Graph JSON (`EdgeScores.to_json`, `Circuit.to_json`), schema "pythia-interp/patching-graph/1":

    {"schema": "pythia-interp/patching-graph/1",
     "model": str, "revision": str | null, "method": str, "metric": str, "task": str,
     "direction": "noising" | "denoising", "ablation": str,
     "n_layers": int, "n_heads": int, "parallel_residual": bool,
     "metric_clean": float, "metric_corrupt": float,
     "nodes": [{"name": "embed" | "L{l}H{h}" | "mlp{l}" | "logits", "kind": str, "layer": int,
                "head": int | null}],              # layer order; embed is layer -1, logits n_layers
     "edges": [{"sender": str, "receiver": "L{l}H{h}.q|k|v" | "mlp{l}" | "logits",
                "score": float, "in_circuit": bool}],   # every edge of the graph, same order for a size
     "circuit": {"n_edges": int, "value": float | null, "faithfulness": float | null} | null}

Node and edge names depend only on the model's size, so files of one size compare across
checkpoints edge by edge (join on sender and receiver).
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from analyses.patching.graph import Graph

SCHEMA = "pythia-interp/patching-graph/1"
SELECTIONS = ("top", "greedy")  # circuits from scores: the n largest |scores|, or greedy from the logits
WEAK = 1e-2  # |M(clean) - M(corrupt)| at most this share of the metric's size: normalised numbers mean little


@dataclass
class Provenance:
    """Where a result came from: model, revision, task, metric and its clean/corrupt values."""

    model: str
    revision: str | None
    task: str
    metric: str
    direction: str
    ablation: str
    clean: float
    corrupt: float
    str_tokens: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, model, task, metric, clean: float, corrupt: float, direction: str = "noising",
           ablation="corrupt") -> Provenance:
        try:
            tokens = model.to_str_tokens(task.clean.ids[0])
        except Exception:  # no tokenizer
            tokens = [str(i) for i in task.clean.ids[0].tolist()]
        if abs(clean - corrupt) <= WEAK * max(1.0, abs(clean), abs(corrupt)):
            import warnings

            from analyses.patching.errors import WeakTaskWarning

            warnings.warn(WeakTaskWarning(
                f"{model.name} gives almost the same {metric.describe()} on the clean and the corrupt run of task "
                f"{task.name!r} ({clean:.4g} and {corrupt:.4g}): effect_normalized, faithfulness and completeness "
                "divide by their difference and mean little. Use a task the model does, or compare raw effects."),
                stacklevel=3)
        return cls(model.name, model.revision, task.name, metric.describe(), direction,
                   ablation if isinstance(ablation, str) else "cache", clean, corrupt, tokens)

    def normalize(self, effect: Tensor | float):
        """effect / (M(clean) - M(corrupt))."""
        span = self.clean - self.corrupt
        return effect / span if span != 0 else effect * float("nan")

    def record(self) -> dict:
        return {"model": self.model, "revision": self.revision, "task": self.task, "metric": self.metric,
                "direction": self.direction, "ablation": self.ablation, "metric_clean": self.clean,
                "metric_corrupt": self.corrupt}


class _Metrics:
    """M(clean) and M(corrupt) of a result's provenance."""

    provenance: Provenance

    @property
    def clean(self) -> float:
        return self.provenance.clean

    @property
    def corrupt(self) -> float:
        return self.provenance.corrupt


@dataclass
class NodeEffects(_Metrics):
    """Effect of each patched site (activation patching) or its attribution score (AtP, AtP*)."""

    method: str
    sites: list[str]
    layers: list[int]
    heads: list[int | None]
    positions: list[int | None]
    effects: Tensor  # (patch,)
    provenance: Provenance
    n_layers: int
    n_heads: int

    @classmethod
    def build(cls, method, model, task, metric, patches, effects, clean, corrupt, direction="noising",
              ablation="corrupt") -> NodeEffects:
        prov = Provenance.of(model, task, metric, clean, corrupt, direction, ablation)
        return cls(method, [p.site for p in patches], [p.layer for p in patches], [p.head for p in patches],
                   [p.position for p in patches], _at_least_fp32(effects.detach()).cpu(), prov, model.n_layers,
                   model.n_heads)

    def to_frame(self) -> pd.DataFrame:
        """One row per patch: site, layer, head, position, effect, effect_normalized."""
        return pd.DataFrame({
            "site": self.sites, "layer": self.layers,
            "head": pd.array(self.heads, dtype="Int64"), "position": pd.array(self.positions, dtype="Int64"),
            "effect": self.effects.numpy(), "effect_normalized": self.provenance.normalize(self.effects).numpy(),
        })

    def grid(self, site: str) -> Tensor:
        """One site's effects as (layer, head, position), (layer, head), (layer, position) or (layer,)."""
        frame = self.to_frame()
        frame = frame[frame.site == site]
        dims = [("layer", self.n_layers)]
        if frame["head"].notna().any():
            dims.append(("head", self.n_heads))
        if frame["position"].notna().any():
            dims.append(("position", int(frame["position"].max()) + 1))
        out = torch.full([n for _, n in dims], float("nan"))
        index = tuple(torch.tensor(frame[d].astype(int).to_numpy()) for d, _ in dims)
        out[index] = torch.tensor(frame["effect"].to_numpy(), dtype=torch.float32)
        return out

    def top(self, n: int = 10) -> pd.DataFrame:
        """The n patches of largest |effect|."""
        frame = self.to_frame()
        return frame.reindex(frame.effect.abs().sort_values(ascending=False).index).head(n)

    def figure(self, normalized: bool = True):
        """Heatmaps per site: layer x head, or (layer, head) x position with tokens on the x axis."""
        from analyses.patching.figures import node_figure

        return node_figure(self, normalized)

    def to_json(self) -> dict:
        return {**self.provenance.record(), "method": self.method, "str_tokens": self.provenance.str_tokens}


@dataclass
class PathEffects(_Metrics):
    """Path patching: the effect of each sender through each receiver (NaN where no path exists)."""

    senders: list[str]
    receivers: list[str]
    effects: Tensor  # (sender, receiver)
    provenance: Provenance
    mediated: bool = True

    def to_frame(self) -> pd.DataFrame:
        """One row per (sender, receiver) pair with a path: sender, receiver, effect, effect_normalized."""
        s, r = (~self.effects.isnan()).nonzero(as_tuple=True)
        values = self.effects[s, r]
        return pd.DataFrame({"sender": [self.senders[i] for i in s.tolist()],
                             "receiver": [self.receivers[i] for i in r.tolist()],
                             "effect": values.numpy(), "effect_normalized": self.provenance.normalize(values).numpy()})

    def __getitem__(self, pair: tuple[str, str]) -> float:
        return float(self.effects[self.senders.index(pair[0]), self.receivers.index(pair[1])])

    def figure(self, normalized: bool = True):
        """Sender x receiver heatmap (or layer x head when every receiver is one)."""
        from analyses.patching.figures import path_figure

        return path_figure(self, normalized)

    def to_json(self) -> dict:
        return {**self.provenance.record(), "method": "path", "mediated": self.mediated}


@dataclass
class EdgeScores(_Metrics):
    """A score for every edge of the graph (EAP, EAP-IG, or exact per-edge effects)."""

    method: str
    graph: Graph
    scores: Tensor  # (edge,), graph.edges order
    provenance: Provenance

    def to_frame(self) -> pd.DataFrame:
        """One row per edge: sender, receiver, effect (the score), effect_normalized."""
        senders, receivers = zip(*self.graph.edges, strict=True)
        return pd.DataFrame({"sender": senders, "receiver": receivers, "effect": self.scores.numpy(),
                             "effect_normalized": self.provenance.normalize(self.scores).numpy()})

    def matrix(self) -> Tensor:
        """(sender, receiver) scores, NaN where there is no edge."""
        return self.graph.edge_tensor(self.scores)

    def ranking(self) -> Tensor:
        """Edge indices by decreasing |score|."""
        return self.scores.abs().argsort(descending=True, stable=True)

    def top(self, n: int) -> Tensor:
        """Bool mask over edges: the n edges of largest |score|."""
        return self._mask(self.ranking()[:_count(n)])

    def greedy_ranking(self) -> Tensor:
        """Edge indices in the order a greedy search from the logits adds them.

        The circuit starts as the logits node. Each step adds the edge of largest |score| among the
        edges into a node already in the circuit, and its sender joins. So every prefix is connected:
        each kept edge's receiver reaches the logits through kept edges.
        """
        import heapq

        graph, magnitude = self.graph, self.scores.abs().tolist()
        into: dict[str, list[int]] = {}  # node name -> the edges into any of its receivers
        for i, (_, receiver) in enumerate(graph.edges):
            into.setdefault(receiver.split(".")[0], []).append(i)
        order, joined, frontier = [], {"logits"}, [(-magnitude[i], i) for i in into["logits"]]
        heapq.heapify(frontier)
        while frontier:
            _, i = heapq.heappop(frontier)
            order.append(i)
            sender = graph.edges[i][0]
            if sender not in joined:
                joined.add(sender)
                for j in into.get(sender, []):
                    heapq.heappush(frontier, (-magnitude[j], j))
        return torch.tensor(order, dtype=torch.long)

    def greedy(self, n: int) -> Tensor:
        """Bool mask over edges: the first n edges the greedy search adds (see `greedy_ranking`)."""
        return self._mask(self.greedy_ranking()[:_count(n)])

    def ranked(self, selection: str = "top") -> Tensor:
        """Edge indices in the order circuits of growing size take them: `ranking()` or `greedy_ranking()`."""
        if selection not in SELECTIONS:
            from analyses.patching.errors import UnknownMethodError

            raise UnknownMethodError(f"Unknown selection {selection!r}: choose one of {', '.join(SELECTIONS)}.")
        return self.ranking() if selection == "top" else self.greedy_ranking()

    def select(self, n: int, selection: str = "top") -> Tensor:
        """Bool mask over edges: `top(n)` or `greedy(n)`."""
        return self._mask(self.ranked(selection)[:_count(n)])

    def _mask(self, index: Tensor) -> Tensor:
        """Bool mask over edges from the first n of a ranking (n checked by `_count`)."""
        keep = torch.zeros(len(self.scores), dtype=torch.bool)
        keep[index] = True
        return keep

    def figure(self, normalized: bool = True):
        """Sender x receiver matrix of scores."""
        from analyses.patching.figures import edge_matrix_figure

        return edge_matrix_figure(self, normalized)

    def to_json(self, keep: Tensor | None = None, circuit: dict | None = None) -> dict:
        """The graph JSON of the module docstring; `keep` marks circuit edges."""
        return graph_json(self.graph, self.scores, self.provenance, self.method, keep, circuit)


def graph_json(graph: Graph, scores: Tensor, prov: Provenance, method: str, keep: Tensor | None = None,
               circuit: dict | None = None) -> dict:
    """A JSON-able graph record (schema in the module docstring)."""
    keep = torch.zeros(len(scores), dtype=torch.bool) if keep is None else keep
    nodes = [{"name": n.name, "kind": n.kind, "layer": n.layer, "head": n.head} for n in graph.nodes()]
    edges = [{"sender": s, "receiver": r, "score": _num(v), "in_circuit": bool(k)}
             for (s, r), v, k in zip(graph.edges, scores.tolist(), keep.tolist(), strict=True)]
    return {"schema": SCHEMA, **prov.record(), "method": method, "n_layers": graph.n_layers,
            "n_heads": graph.n_heads, "parallel_residual": graph.parallel_residual, "nodes": nodes,
            "edges": edges, "circuit": circuit}


def write_json(record: dict, path) -> None:
    """Write a record as UTF-8 JSON (NaN written as null)."""
    from pathlib import Path

    Path(path).write_text(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _num(v: float) -> float | None:
    return None if v != v else round(float(v), 8)


@dataclass
class Circuit(_Metrics):
    """An edge set with its metric alone (complement ablated) and ablated (complement kept)."""

    graph: Graph
    keep: Tensor  # (edge,) bool
    scores: Tensor  # (edge,) the scores it was chosen by (NaN if given by hand)
    provenance: Provenance
    value: float  # M with only the circuit's edges kept
    without: float  # M with only the circuit's edges ablated
    method: str = "given"

    @property
    def n_edges(self) -> int:
        return int(self.keep.sum())

    @property
    def faithfulness(self) -> float:
        """(M(circuit) - M(corrupt)) / (M(clean) - M(corrupt))."""
        return float(self.provenance.normalize(self.value - self.provenance.corrupt))

    @property
    def completeness(self) -> float:
        """(M(clean) - M(circuit ablated)) / (M(clean) - M(corrupt))."""
        return float(self.provenance.normalize(self.provenance.clean - self.without))

    def edges(self) -> list[tuple[str, str]]:
        return [e for e, k in zip(self.graph.edges, self.keep.tolist(), strict=True) if k]

    def to_frame(self) -> pd.DataFrame:
        """The circuit's edges: sender, receiver, effect (the score that chose it), effect_normalized."""
        idx = self.keep.nonzero().flatten()
        values = self.scores[idx]
        return pd.DataFrame({"sender": [self.graph.edges[i][0] for i in idx.tolist()],
                             "receiver": [self.graph.edges[i][1] for i in idx.tolist()],
                             "effect": values.numpy(), "effect_normalized": self.provenance.normalize(values).numpy()})

    def figure(self):
        """Interactive circuit graph: nodes in layer order, edge width by |score|."""
        from analyses.patching.figures import circuit_figure

        return circuit_figure(self)

    def to_json(self) -> dict:
        """The graph JSON (schema in the module docstring) with this circuit marked."""
        summary = {"n_edges": self.n_edges, "value": _num(self.value), "without": _num(self.without),
                   "faithfulness": _num(self.faithfulness), "completeness": _num(self.completeness)}
        return graph_json(self.graph, self.scores, self.provenance, self.method, self.keep, summary)


@dataclass
class FaithfulnessCurve(_Metrics):
    """The metric of the n-edge circuits over circuit sizes n (edges chosen by `selection`)."""

    method: str
    sizes: list[int]
    values: Tensor  # (point,)
    provenance: Provenance
    selection: str = "top"

    def to_frame(self) -> pd.DataFrame:
        """One row per size: n_edges, value, faithfulness."""
        return pd.DataFrame({"n_edges": self.sizes, "value": self.values.numpy(),
                             "faithfulness": self.provenance.normalize(self.values - self.provenance.corrupt).numpy()})

    def smallest(self, faithfulness: float = 0.8) -> int | None:
        """The fewest edges whose circuit reaches the given faithfulness."""
        frame = self.to_frame()
        hit = frame[frame.faithfulness >= faithfulness]
        return int(hit.n_edges.iloc[0]) if len(hit) else None

    def figure(self):
        """Faithfulness against the number of edges kept (log x axis)."""
        from analyses.patching.figures import curve_figure

        return curve_figure(self)


def _count(n) -> int:
    """A circuit size: a whole number of edges, 0 or more (more than there are keeps every edge)."""
    from analyses.patching.errors import GraphError

    try:
        count = operator.index(n)  # ints, numpy and 0-d torch integers; not floats
    except TypeError:
        count = None
    if count is None or isinstance(n, bool) or count < 0:
        raise GraphError(f"A circuit of {n!r} edges: give the number of edges to keep, a whole number >= 0.")
    return count
