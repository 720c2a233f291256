"""Circuits: exact evaluation of edge sets with per-edge masks, several circuits per forward.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> from analyses.patching import eap
    >>> scores = eap(model, task)
    >>> circuit = evaluate_circuit(model, task, scores.top(20), scores)    # keep 20 edges, ablate the rest
    >>> circuit.faithfulness > 0.8
    True
    >>> curve = faithfulness_curve(model, task, scores, points=32)        # one batched run

Each receiver's input is its input in the running pass plus, for every ablated edge s -> r,
(a_s,ablated - a_s,run): the sender's corrupt (or mean, or zero) output replaces what it sends along
that edge only. Keeping every edge gives the clean run; keeping none gives the corrupt run. Masks
are floats, so the same pass is differentiable in them: its gradient at "keep everything" is EAP.

Two ways run it, with the same results to float rounding: node by node (`sparse`: each circuit
computes only the heads and MLPs whose inputs it changes, from the first changed token on), when
the metric reads the last position and no gradient is asked for; otherwise hooks on the model's
own forward, which correct every receiver's input.

- faithfulness = (M(circuit) - M(corrupt)) / (M(clean) - M(corrupt)): the circuit alone, complement ablated;
  M(corrupt) here is the run with every edge ablated (the corrupt run itself under the default ablation);
- completeness = (M(clean) - M(complement)) / (M(clean) - M(corrupt)): how much is lost when the
  circuit's own edges are ablated and everything else is kept (1 for a complete circuit).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from analyses.patching import runs, sparse, suffix
from analyses.patching.attribution import receiver_sites, sender_sites
from analyses.patching.errors import GraphError
from analyses.patching.graph import Graph
from analyses.patching.metrics import Metric, resolve
from analyses.patching.results import Circuit, EdgeScores, FaithfulnessCurve, Provenance
from analyses.patching.runs import first_change


def masked_values(model, task, ablate: Float[Tensor, "circuit edge"], *, metric=None, ablation="corrupt",
                  direction: str = "noising", budget_mb: float = runs.DEFAULT_BUDGET_MB,
                  progress: bool | None = None) -> Float[Tensor, " circuit"]:
    """Metric of the base run with each row's edges ablated in proportion to its mask (1 = ablated).

    Differentiable in `ablate` when it requires grad (then computed in one chunk). Otherwise, on CPU, the scratch
    memory of the node-by-node evaluation (within `budget_mb`) stays with the model for its next call, which then
    finds its pages ready; `release_scratch(model)` frees it.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> graph = Graph.from_model(model)
    >>> kept, ablated = masked_values(model, task, torch.stack([torch.zeros(graph.n_edges), torch.ones(graph.n_edges)]))
    >>> bool(kept > 5 > ablated)    # every edge kept: the clean metric; none: the corrupt one
    True
    """
    graph, metric = Graph.from_model(model), resolve(metric, model, task)
    _check_rows(graph, ablate)
    runs.check_source(direction, ablation)
    runs.check_budget(budget_mb)
    base = task.clean if direction == "noising" else task.corrupt
    n, n_pos = len(base), base.ids.shape[1]
    if not ablate.requires_grad and sparse.applies(model, metric, n_pos):
        return _node_values(model, task, graph, base, ablate, metric, ablation, direction, budget_mb, progress)
    with torch.no_grad():
        src = sparse.sender_stack(graph, runs.sources(model, task, sender_sites(model), direction, ablation))
    if ablate.requires_grad:
        return _masked_chunk(model, graph, base, ablate, src, metric, differentiable=True)
    start = first_change(task, ablation) if suffix.applies(set(), metric, n_pos) else 0
    kv = suffix.prefix(model, base) if start else None
    # per row: every sender's difference, the corrections of one layer's receivers, the q/k/v input copies
    width = (len(graph.senders) + 3 * model.n_heads + 1 + 12 * model.n_heads) * (n_pos - start) * model.d_model
    row_bytes = runs.row_bytes(model, n_pos - start) + width * torch.finfo(model.dtype).bits // 8
    row_bytes += suffix.cache_bytes(model, n_pos) if start else 0
    slices = list(runs.chunks(ablate.shape[0], n, row_bytes, budget_mb))
    out = torch.empty(ablate.shape[0], device=model.device, dtype=runs.value_dtype(model))
    with torch.no_grad():
        for part in runs.progress(slices, len(slices), progress, "circuits"):
            out[part] = _masked_chunk(model, graph, base, ablate[part].to(model.device), src, metric, start=start,
                                      kv=kv)
    return out


def _node_values(model, task, graph: Graph, base, ablate: Tensor, metric: Metric, ablation, direction: str,
                 budget_mb: float, progress: bool | None) -> Tensor:
    """masked_values node by node (`sparse`): each circuit computes only the nodes its masks change."""
    other = task.corrupt if direction == "noising" else task.clean
    shortcut = isinstance(ablation, str) and ablation == "corrupt" and bool(
        (other.attention_mask == base.attention_mask).all())
    start = first_change(task, ablation)
    with torch.no_grad():
        if shortcut:
            refs = sparse.References(model, graph, base, start, metric, other=other)
        else:
            src = runs.sources(model, task, sender_sites(model), direction, ablation)
            refs = sparse.References(model, graph, base, start, metric, src=sparse.sender_stack(graph, src))
        per = sparse.circuit_bytes(model, graph, len(base), base.ids.shape[1] - start)
        slices = list(runs.chunks(ablate.shape[0], 1, per, budget_mb))
        out = torch.empty(ablate.shape[0], device=model.device, dtype=runs.value_dtype(model))
        with refs:
            for part in runs.progress(slices, len(slices), progress, "circuits"):
                out[part] = sparse.node_values(refs, ablate[part].to(model.device)).to(out.dtype)
    return out


def _check_rows(graph: Graph, ablate) -> None:
    """Masks as a (circuits, edges) tensor, one column per edge of the model's graph."""
    if not isinstance(ablate, Tensor) or ablate.ndim != 2 or ablate.shape[1] != graph.n_edges:
        got = tuple(ablate.shape) if isinstance(ablate, Tensor) else type(ablate).__name__
        raise GraphError(f"ablate is {got}; expected a tensor of shape (circuits, {graph.n_edges}), one column per "
                         "edge of Graph.from_model(model), in graph.edges order (1 = ablated, 0 = kept).")
    outside = ~((ablate >= 0) & (ablate <= 1))  # NaN too
    if bool(outside.any()):
        bad = ablate[outside].flatten()[0].item()
        raise GraphError(f"ablate holds {bad}; masks run from 0 (kept) to 1 (ablated), fractions in between: clamp "
                         "them to [0, 1].")


def _masked_chunk(model, graph: Graph, base, ablate: Tensor, src: Tensor, metric: Metric,
                  differentiable: bool = False, start: int = 0, kv=None) -> Tensor:
    """One batched pass: rows = circuit * prompt; from position `start` on, with the earlier keys and values `kv`."""
    if start:
        with _masked(model, graph, ablate, src[:, :, start:].contiguous()):
            return metric.per_patch(suffix.suffix_values(model, base, kv, start, ablate.shape[0], {}, metric))
    tokens = runs.tile(base, ablate.shape[0])
    with _masked(model, graph, ablate, src, differentiable):
        if differentiable:
            with torch.enable_grad():
                values = metric(model(tokens))
        else:
            values = runs.metric_rows(model, tokens, metric)
    return metric.per_patch(values)


@contextmanager
def _masked(model, graph: Graph, ablate: Tensor, src: Tensor, differentiable: bool = False):
    """Hooks that record every sender's output and correct every receiver's input, for k circuits."""
    k, n = ablate.shape[0], src.shape[1]
    dense = torch.zeros(k, *graph.mask.shape, dtype=ablate.dtype, device=ablate.device)
    s_idx, r_idx = graph.mask.nonzero(as_tuple=True)
    dense = dense.index_put((torch.arange(k)[:, None], s_idx[None], r_idx[None]), ablate)  # (k, sender, receiver)
    state = _State(graph, dense, src, k, n, differentiable)
    fwd: dict[str, list] = {}
    for name in sender_sites(model):
        fwd.setdefault(name, []).append(state.record)
    for name in receiver_sites(model):
        fwd.setdefault(name, []).append(state.correct)
    # A backward hook on each q/k/v input keeps every head's own projection in the graph even where the
    # correction is 0 (the hooks take unchanged inputs the fast way, which gradients would not see).
    bwd = {name: _no_change for name in receiver_sites(model) if name.endswith("_input")} if differentiable else {}
    with model.hooks(fwd=fwd, bwd=bwd):
        yield


def masked_logits(model, task, ablate: Float[Tensor, "circuit edge"], *, ablation="corrupt",
                  direction: str = "noising") -> Float[Tensor, "circuit prompt pos d_vocab"]:
    """Full logits of the base run with each row's edges ablated (1 = ablated), one pass for every row.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> masked_logits(model, task, torch.zeros(1, Graph.from_model(model).n_edges)).shape[:2]
    torch.Size([1, 4])
    """
    graph = Graph.from_model(model)
    _check_rows(graph, ablate)
    runs.check_source(direction, ablation)
    base = task.clean if direction == "noising" else task.corrupt
    with torch.no_grad():
        src = sparse.sender_stack(graph, runs.sources(model, task, sender_sites(model), direction, ablation))
        with _masked(model, graph, ablate.to(model.device), src):
            logits = model(runs.tile(base, ablate.shape[0]))
    return logits.view(ablate.shape[0], len(base), *logits.shape[1:])


def _no_change(grad: Tensor, site) -> None:
    return None


class _State:
    """The running pass's sender differences (ablated minus running output), and the corrections at receivers.

    Without gradients the differences go into one buffer as each sender fires, (circuit, sender, prompt *
    pos * d_model), and a receiver's correction is one batched matmul over its senders' prefix.
    """

    def __init__(self, graph: Graph, dense: Tensor, src: Tensor, k: int, n: int, differentiable: bool):
        self.graph, self.dense, self.k, self.n = graph, dense, k, n
        self.dtype = torch.promote_types(src.dtype, torch.float32)  # sums of many terms: in fp32 for half models
        self.src = src.flatten(1).to(self.dtype)  # (sender, prompt * pos * d_model)
        self.count = 0
        self.diffs: list[Tensor] = []
        self.fixes: dict[int, tuple[Tensor, dict[int, int]]] = {}  # the latest layer's corrections
        self.buffer = None if differentiable else torch.empty(k, *self.src.shape, dtype=self.dtype, device=src.device)

    def record(self, x: Tensor, site) -> None:
        outputs = x.unbind(-2) if x.ndim == 4 else (x,)  # per-head results (rows, pos, head, d_model)
        for out in outputs:
            diff = self.src[self.count][None] - out.reshape(self.k, -1).to(self.dtype)  # (k, prompt * pos * d)
            if self.buffer is None:
                self.diffs.append(diff)
            else:
                self.buffer[:, self.count] = diff
            self.count += 1

    def correct(self, x: Tensor, site) -> Tensor:
        index = [self.graph.receiver_index(r) for r in _receivers_of(site.name, x)]
        count = int(self.graph.mask[:, index[0]].sum())
        fixes, position = self._fixes(count)
        fix = fixes[:, runs.spaced([position[i] for i in index])]  # (k, receiver, prompt * pos * d_model)
        if x.ndim == 4:  # (rows, pos, head, d_model): add without copying the permuted corrections
            k, heads, n, pos, d = self.k, len(index), self.n, x.shape[1], x.shape[-1]
            fix = fix.view(k, heads, n, pos, d).permute(0, 2, 3, 1, 4)
            return (x.reshape(k, n, pos, heads, d) + fix.to(x.dtype)).view(x.shape)
        return x + fix.reshape(x.shape).to(x.dtype)

    def _fixes(self, count: int) -> tuple[Tensor, dict[int, int]]:
        """Corrections of every receiver that reads the first `count` senders, in one batched matmul."""
        if count not in self.fixes:
            receivers = (self.graph.mask.sum(0) == count).nonzero().flatten()
            diffs = self.buffer[:, :count] if self.buffer is not None else torch.stack(self.diffs[:count], dim=1)
            m = self.dense[:, :count, receivers].to(diffs.dtype)  # (k, sender, receiver)
            self.fixes = {count: (torch.bmm(m.transpose(1, 2), diffs),
                                  {int(r): i for i, r in enumerate(receivers.tolist())})}
        return self.fixes[count]


def _receivers_of(site: str, x: Tensor) -> list[str]:
    parts = site.split(".")
    if parts[-1] == "hook_resid_post":
        return ["logits"]
    if parts[-1] == "hook_mlp_in":
        return [f"mlp{parts[1]}"]
    kind = parts[-1][len("hook_")]
    return [f"L{parts[1]}H{h}.{kind}" for h in range(x.shape[2])]


# ---- circuits from scores -----------------------------------------------------------------


def as_keep(graph: Graph, edges: Tensor | Sequence[tuple[str, str]]) -> Bool[Tensor, " edge"]:
    """A keep mask over graph.edges from a bool mask or a list of (sender, receiver) names."""
    if isinstance(edges, Tensor):
        if edges.shape != (graph.n_edges,):
            raise GraphError(f"A keep mask has one entry per edge ({graph.n_edges}); got shape {tuple(edges.shape)}.")
        return edges.bool().cpu()
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    for s, r in edges:
        keep[graph.edge_index(s, r)] = True
    return keep


def evaluate_circuit(model, task, keep, scores: EdgeScores | None = None, *, metric=None, ablation="corrupt",
                     budget_mb: float = runs.DEFAULT_BUDGET_MB) -> Circuit:
    """Faithfulness and completeness of one circuit, from one batched pass (plus the two references). Like
    `masked_values`, it keeps its scratch memory for the model's next call on CPU (`release_scratch` frees it).

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> heads = ["L1H0", "L1H1", "L1H2"]                   # the toy model's induction heads
    >>> edges = [("embed", "L0H1.v"), *((("L0H1", h + ".k")) for h in heads), *((h, "logits") for h in heads)]
    >>> circuit = evaluate_circuit(model, task, edges)    # 7 of 69 edges
    >>> circuit.faithfulness > 0.9 and circuit.completeness > 0.9
    True
    """
    graph, metric = Graph.from_model(model), resolve(metric, model, task)
    if scores is not None:
        _check_scores(graph, scores)
    keep = as_keep(graph, keep)
    rows = torch.stack([~keep, keep, torch.zeros_like(keep), torch.ones_like(keep)]).float()
    values = masked_values(model, task, rows, metric=metric, ablation=ablation, budget_mb=budget_mb).cpu()
    prov = Provenance.of(model, task, metric, float(values[2]), float(values[3]), "noising", ablation)
    score = scores.scores if scores is not None else torch.full((graph.n_edges,), float("nan"))
    return Circuit(graph, keep, score, prov, float(values[0]), float(values[1]),
                   scores.method if scores is not None else "given")


def _check_scores(graph: Graph, scores: EdgeScores) -> None:
    if scores.graph.n_edges != graph.n_edges or scores.graph.parallel_residual != graph.parallel_residual:
        raise GraphError(f"The scores are for {scores.graph!r}, but this model's graph is {graph!r}: score edges "
                         "on the model you evaluate (eap(model, task) with the same model).")


def sizes(n_edges: int, points: int = 32) -> list[int]:
    """`points` circuit sizes from 0 to every edge, spaced evenly in log(1 + size)."""
    raw = torch.logspace(0, math.log10(n_edges + 1), points) - 1
    out = sorted({int(round(float(v))) for v in raw} | {0, n_edges})
    while len(out) < min(points, n_edges + 1):  # rounding merged some small sizes: fill in the gaps
        gaps = [b - a for a, b in zip(out, out[1:], strict=False)]
        i = max(range(len(gaps)), key=gaps.__getitem__)
        out.insert(i + 1, (out[i] + out[i + 1]) // 2)
    return out[:points] if len(out) > points else out


def faithfulness_curve(model, task, scores: EdgeScores, points: int = 32, *, metric=None, ablation="corrupt",
                       selection: str = "top", budget_mb: float = runs.DEFAULT_BUDGET_MB,
                       progress: bool | None = None) -> FaithfulnessCurve:
    """The metric of the n-edge circuits for `points` sizes n, evaluated together along the batch.

    `selection` picks each size's edges: "top" (the n largest |scores|) or "greedy" (grown from the
    logits, `EdgeScores.greedy_ranking`). Like `masked_values`, it keeps its scratch memory for the
    model's next call on CPU (`release_scratch` frees it).

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> from analyses.patching import eap
    >>> faithfulness_curve(model, task, eap(model, task), points=8).to_frame().columns.tolist()
    ['n_edges', 'value', 'faithfulness']
    """
    graph, metric = scores.graph, resolve(metric, model, task)
    _check_scores(Graph.from_model(model), scores)
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 2:
        raise GraphError(f"points={points!r}: a curve needs at least 2 circuit sizes (the empty and the full "
                         "circuit); give an integer >= 2, e.g. 32.")
    ns = sizes(graph.n_edges, points)
    order = scores.ranked(selection)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    keep = torch.stack([rank < n for n in ns])  # (points, edge)
    values = masked_values(model, task, (~keep).float(), metric=metric, ablation=ablation, budget_mb=budget_mb,
                           progress=progress).cpu()
    clean, corrupt = float(values[ns.index(graph.n_edges)]), float(values[ns.index(0)])
    prov = Provenance.of(model, task, metric, clean, corrupt, "noising", ablation)
    return FaithfulnessCurve(scores.method, ns, values, prov, selection)
