"""Exact path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023), senders batched along the batch.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> result = path_patch(model, task, senders="heads", receivers=["logits"])
    >>> effect = result["L1H0", "logits"]            # L1H0's direct path and its MLP-mediated paths
    >>> frame = path_patch(model, task, senders=["L0H1"], receivers=["L1H0.k", "L1H0.q"]).to_frame()

Noising (default): each sender takes its corrupt value (at every position, or at `positions`)
inside the clean run while every other head is frozen to its clean output; MLPs recompute, so
they mediate (`mediate=False` freezes them too). The receivers' inputs are recorded, then the
clean run is repeated with only the receivers patched; effect = M(patched) - M(clean).

Two engines compute the recorded inputs, and agree:

- `engine="hooks"`: one forward of the model per chunk of senders, with every head frozen by hooks;
- `engine="residual"` (default): the receiver's input is the clean residual plus the senders'
  output differences, plus, when MLPs mediate, each mediating MLP's change recomputed with the
  model's own LayerNorm and MLP modules at the positions that changed. Heads are frozen, so no
  attention runs: exact, not linearised. For the logits receiver only the metric's positions are
  computed and no forward runs at all.

A receiver group such as `("L1H0.k", "L1H1.k")` is patched jointly. Pairs with no path (the
receiver reads before the sender writes) are NaN; a receiver no sender reaches is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.patching import runs
from analyses.patching.errors import GraphError
from analyses.patching.graph import Graph, Node
from analyses.patching.metrics import Metric, resolve
from analyses.patching.results import PathEffects, Provenance, _at_least_fp32

ENGINES = ("auto", "residual", "hooks")
Group = tuple[str, ...]


@dataclass
class Plan:
    """Senders and receivers as groups of graph nodes, and which pairs have a path."""

    graph: Graph
    senders: list[Group]
    receivers: list[Group]
    valid: Tensor  # (sender group, receiver group) bool

    def sender_nodes(self, group: Group) -> list[Node]:
        return [self.graph.sender(s) for s in group]

    def receiver_nodes(self, group: Group) -> list[Node]:
        return [self.graph.receiver(r) for r in group]

    def write_point(self, group: Group) -> int:
        """Where the group's first sender writes (never, for the empty group)."""
        return min((self.graph.writes_at(n) for n in self.sender_nodes(group)), default=10**9)


def path_patch(model, task, senders: str | Sequence = "heads", receivers: str | Sequence = "logits", *,
               metric=None, mediate: bool = True, positions: Sequence[int] | None = None,
               direction: str = "noising", ablation="corrupt", engine: str = "auto",
               budget_mb: float = runs.DEFAULT_BUDGET_MB, progress: bool | None = None) -> PathEffects:
    """Effect of each sender group through each receiver group: a (sender, receiver) matrix.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> path_patch(model, task, senders=["L0H1"], receivers=[("L1H0.k", "L1H1.k", "L1H2.k")]).effects.shape
    torch.Size([1, 1])
    """
    runs.check_source(direction, ablation)
    runs.check_budget(budget_mb)
    runs.check_choice(engine, ENGINES, "engine")
    plan = make_plan(Graph.from_model(model), senders, receivers)
    metric = resolve(metric, model, task)
    base = task.clean if direction == "noising" else task.corrupt
    with torch.no_grad():
        acts, ref_other = _activations(model, task, direction, ablation, engine == "hooks", metric)
        effects, ref = _run(model, plan, base, metric, acts, _position_mask(positions, task.n_pos), mediate,
                          engine, budget_mb, progress)
    ref = ref[0]
    clean, corrupt = (ref, ref_other) if direction == "noising" else (ref_other, ref)
    prov = Provenance.of(model, task, metric, float(clean), float(corrupt), direction, ablation)
    return PathEffects(["+".join(g) for g in plan.senders], ["+".join(g) for g in plan.receivers],
                       _at_least_fp32(effects).cpu(), prov, mediate)


# ---- planning -----------------------------------------------------------------------------


def make_plan(graph: Graph, senders: str | Sequence, receivers: str | Sequence) -> Plan:
    """Parse sender and receiver specs into groups; check names and that every receiver is reachable."""
    s_groups, r_groups = _groups(graph, senders, "sender"), _groups(graph, receivers, "receiver")
    valid = torch.tensor([[all(graph.has_edge(s, r) for s in sg for r in rg) for rg in r_groups]
                          for sg in s_groups], dtype=torch.bool)
    for j, rg in enumerate(r_groups):
        if not valid[:, j].any():
            raise GraphError(
                f"Receiver {'+'.join(rg)} reads the residual stream before every sender writes to it "
                f"(senders: {', '.join('+'.join(g) for g in s_groups[:5])}{'...' if len(s_groups) > 5 else ''}). "
                "A receiver must be in a later layer than its sender: pick a later receiver or an earlier sender."
            )
    return Plan(graph, s_groups, r_groups, valid)


def _groups(graph: Graph, spec: str | Sequence, kind: str) -> list[Group]:
    """'heads' / 'all' / 'logits' shorthands, names, 'a+b' strings or tuples of names, as groups."""
    nodes = graph.senders if kind == "sender" else graph.receivers
    if isinstance(spec, str):
        shorthand = {"all": [n.name for n in nodes], "heads": [n.name for n in nodes if n.kind == "head"],
                     "mlps": [n.name for n in nodes if n.kind == "mlp"]}
        spec = shorthand.get(spec, [spec])
    groups = [tuple(g.split("+")) if isinstance(g, str) else tuple(g) for g in spec]
    lookup = graph.sender if kind == "sender" else graph.receiver
    for group in groups:
        for name in group:
            lookup(name)  # raises GraphError naming the valid forms
    return groups


def _position_mask(positions: Sequence[int] | None, n_pos: int) -> Tensor:
    mask = torch.zeros(n_pos, dtype=torch.bool)
    mask[slice(None) if positions is None else torch.as_tensor(list(positions)) % n_pos] = True
    return mask


# ---- activations both engines read --------------------------------------------------------


def _activations(model, task, direction: str, ablation, hooks_engine: bool, metric: Metric):
    """Base-run and source values of sender outputs, the base residual at every read point; M of the other run."""
    L = model.n_layers
    out_sites = ["hook_embed", *(f"blocks.{ly}.hook_mlp_out" for ly in range(L))]
    out_sites += [f"blocks.{ly}.attn.hook_{'z' if hooks_engine else 'result'}" for ly in range(L)]
    base_tokens = task.clean if direction == "noising" else task.corrupt
    resid = [f"blocks.{ly}.hook_resid_pre" for ly in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    if not runs.parallel_residual(model):
        resid += [f"blocks.{ly}.hook_resid_mid" for ly in range(L)]
    _, base = model.run_with_cache(base_tokens, names=out_sites + resid)
    src, other_value = runs.source_run(model, task, out_sites, direction, ablation, metric)
    return {"base": dict(base), "src": {k: src[k] for k in out_sites}}, other_value


# ---- the run ------------------------------------------------------------------------------


def _run(model, plan: Plan, base, metric: Metric, acts, pos_mask: Tensor, mediate: bool, engine: str,
         budget_mb: float, progress: bool | None) -> tuple[Tensor, Tensor]:
    """Effect for every (sender group, receiver group), and the unpatched metric, in chunks of senders.

    Each chunk carries one empty sender group, whose value is the chunk's reference: rows of one
    batch are computed alike, so patching clean into clean gives exactly 0.
    """
    n, n_r = len(base), len(plan.receivers)
    dtype = runs.value_dtype(model)
    out = torch.full((len(plan.senders), n_r), float("nan"), device=model.device, dtype=dtype)
    ref = torch.zeros(n_r, device=model.device, dtype=dtype)
    row_bytes = runs.row_bytes(model, base.ids.shape[1]) * (1 + n_r // 8)
    slices = list(runs.chunks(len(plan.senders), n, row_bytes, budget_mb))
    logits_only = all(rg == ("logits",) for rg in plan.receivers)
    for part in runs.progress(slices, len(slices), progress, "path patching"):
        groups = [*plan.senders[part], ()]
        valid = torch.cat([plan.valid[part], torch.ones(1, n_r, dtype=torch.bool)])
        if engine == "hooks":
            inputs = _record_hooked(model, plan, groups, base, acts, pos_mask, mediate)
        else:
            from analyses.patching.residual import record_residual

            inputs = record_residual(model, plan, groups, acts, pos_mask, mediate, metric if logits_only else None)
        for j, rg in enumerate(plan.receivers):
            rows = valid[:, j].nonzero().flatten()
            values = _receive(model, base, metric, rg, inputs, rows, n, gathered=logits_only and engine != "hooks")
            values = values.to(dtype)
            out[part.start + rows[:-1], j] = values[:-1] - values[-1]
            ref[j] = values[-1]
    return out, ref


def receiver_site(node: Node, n_layers: int) -> str:
    """The site holding a receiver's input: a head's q/k/v input, an MLP's input, the final residual."""
    if node.kind in ("q", "k", "v"):
        return f"blocks.{node.layer}.attn.hook_{node.kind}_input"
    if node.kind == "mlp":
        return f"blocks.{node.layer}.hook_mlp_in"
    return f"blocks.{n_layers - 1}.hook_resid_post"


def _receive(model, base, metric: Metric, group: Group, inputs: dict[str, Tensor], rows: Tensor, n: int,
             gathered: bool = False) -> Float[Tensor, " sender"]:
    """Metric of the base run with the group's receivers patched to their recorded inputs (one per sender)."""
    nodes = [Node(r, *_kind_layer_head(r)) for r in group]
    if "logits" in group:
        final = _select(inputs["logits"], rows, n)
        values = runs.metric_values(model, metric, final if gathered else metric.gather(final))
        return metric.per_patch(values)
    hooks: dict[str, list] = {}
    for node in nodes:
        site = receiver_site(node, model.n_layers)
        hooks.setdefault(site, []).append(_patch_input(node, _select(inputs[node.name], rows, n)))
    with model.hooks(fwd=hooks):
        values = runs.metric_rows(model, runs.tile(base, len(rows)), metric)
    return metric.per_patch(values)


def _select(x: Tensor, rows: Tensor, n: int) -> Tensor:
    """The rows of the chosen senders from a (sender * prompt, ...) tensor."""
    return x.view(-1, n, *x.shape[1:])[rows.to(x.device)].flatten(0, 1)


def _patch_input(node: Node, value: Tensor):
    """A hook that sets one receiver's input (a head's row of q/k/v input, or the whole MLP input)."""
    def hook(x: Tensor, site) -> Tensor:
        if node.head is None:
            return value.to(x.dtype)
        x = x.clone()
        x[:, :, node.head] = value.to(x.dtype)
        return x

    return hook


def _kind_layer_head(name: str) -> tuple[str, int, int | None]:
    if name == "logits":
        return "logits", 10**6, None
    if name.startswith("mlp"):
        return "mlp", int(name[3:]), None
    head, kind = name.split(".")
    layer, h = head[1:].split("H")
    return kind, int(layer), int(h)


# ---- the hooks engine ---------------------------------------------------------------------


def _record_hooked(model, plan: Plan, groups: list[Group], base, acts, pos_mask: Tensor,
                   mediate: bool) -> dict[str, Tensor]:
    """Receivers' inputs from one forward with senders patched and every other head frozen."""
    n, k, L = len(base), len(groups), model.n_layers
    senders = [plan.sender_nodes(g) for g in groups]
    pos = pos_mask.to(model.device)
    hooks: dict[str, list] = {}
    for layer in range(L):
        name = f"blocks.{layer}.attn.hook_z"
        mask = torch.zeros(k, model.n_heads, dtype=torch.bool)
        for j, nodes in enumerate(senders):
            for node in nodes:
                if node.kind == "head" and node.layer == layer:
                    mask[j, node.head] = True
        hooks[name] = [_freeze(acts["base"][name], acts["src"][name], mask.to(model.device), pos, n, True)]
        name = f"blocks.{layer}.hook_mlp_out"
        mask = torch.tensor([any(s.kind == "mlp" and s.layer == layer for s in nodes) for nodes in senders])
        hooks[name] = [_freeze(acts["base"][name], acts["src"][name], mask.to(model.device), pos, n, not mediate)]
    mask = torch.tensor([any(s.kind == "embed" for s in nodes) for nodes in senders])
    hooks["hook_embed"] = [_freeze(acts["base"]["hook_embed"], acts["src"]["hook_embed"], mask.to(model.device),
                                   pos, n, False)]
    recorded: dict[str, Tensor] = {}
    receivers = {r for g in plan.receivers for r in g}
    for r in receivers:
        node = Node(r, *_kind_layer_head(r))
        hooks.setdefault(receiver_site(node, L), []).append(_recorder(node, recorded))
    with model.hooks(fwd=hooks):
        model.run_with_cache(runs.tile(base, k), names=[], stop_at_layer=L)
    return recorded


def _freeze(base: Tensor, src: Tensor, senders: Tensor, pos: Tensor, n: int, frozen: bool):
    """A hook: the sender entries take the source value at the chosen positions; the rest the base
    value when `frozen` (heads; MLPs with mediate=False), else what the run computed."""
    def hook(x: Tensor, site) -> Tensor:
        k = senders.shape[0]
        xv = x.view(k, n, *x.shape[1:])  # (sender, prompt, pos, ...)
        where = senders.view(k, 1, 1, *senders.shape[1:], *([1] * (x.ndim - 2 - (senders.ndim - 1))))
        where = where & pos.view(1, 1, -1, *([1] * (x.ndim - 2)))
        rest = base.to(x.dtype)[None] if frozen else xv
        return torch.where(where, src.to(x.dtype)[None], rest).view(x.shape)

    return hook


def _recorder(node: Node, recorded: dict[str, Tensor]):
    def hook(x: Tensor, site) -> None:
        recorded[node.name] = (x[:, :, node.head] if node.head is not None else x).detach().clone()

    return hook
