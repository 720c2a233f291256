"""The residual engine of path patching: receivers' inputs from the clean residual plus sender differences.

    >>> import interp
    >>> from analyses.patching import path_patch, tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> fast = path_patch(model, task, "all", ["logits", "L1H0.k"], engine="residual")   # this module
    >>> slow = path_patch(model, task, "all", ["logits", "L1H0.k"], engine="hooks")      # a forward per chunk
    >>> bool((fast.effects - slow.effects).nan_to_num().abs().max() < 1e-4)
    True

With every head frozen, the residual stream at any point of the patched run is the base residual
plus the senders' output differences plus, when MLPs mediate, each later MLP's change. MLPs act
position by position, so each is recomputed (with the model's own LayerNorm and MLP modules) on
the base input plus the difference so far, only for senders that wrote before it reads. No
attention runs. This is exact: the same modules on the same inputs as the hooked run.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.patching import runs
from analyses.patching.graph import Node
from analyses.patching.metrics import Metric


def record_residual(model, plan, groups: list[tuple[str, ...]], acts: dict, pos_mask: Tensor, mediate: bool,
                    metric: Metric | None = None) -> dict[str, Float[Tensor, "row pos d_model"]]:
    """Each receiver's input for each sender group (row = group * n_prompts + prompt).

    With `metric` (every receiver is the logits) only the metric's positions are computed, and
    the inputs come back at those positions.
    """
    base, src = acts["base"], acts["src"]
    n = base["hook_embed"].shape[0]
    view = metric.gather if metric is not None else (lambda x: x)
    pm = view(pos_mask.to(model.device)[None].expand(n, -1)).to(base["hook_embed"].dtype)[..., None]  # (n, P, 1)
    senders = [plan.sender_nodes(g) for g in groups]
    writes = torch.tensor([plan.write_point(g) for g in groups])
    wanted = _wanted_points(plan)
    graph, L = plan.graph, model.n_layers
    parallel = graph.parallel_residual
    embed = base["hook_embed"]
    delta = torch.zeros(len(groups), n, pm.shape[1], embed.shape[-1], dtype=embed.dtype, device=embed.device)
    delta = delta + _sender_sum(senders, lambda s: s.kind == "embed",
                                lambda s: view(src["hook_embed"] - base["hook_embed"])) * pm  # (k, n, P, d)
    snaps: dict[str, Tensor] = {}
    for layer in range(L):
        snaps[f"heads{layer}"] = delta
        heads = _sender_sum(senders, lambda s, layer=layer: s.kind == "head" and s.layer == layer,
                            lambda s: view(_result(src, s) - _result(base, s))) * pm
        if not parallel:
            delta = delta + heads
        snaps[f"mlp{layer}"] = delta
        mlp_in = view(base[f"blocks.{layer}.hook_{'resid_pre' if parallel else 'resid_mid'}"])
        mlp_diff = _mlp_change(model, layer, senders, writes, graph, mlp_in, delta, mediate, base, src, view) * pm
        delta = delta + mlp_diff + (heads if parallel else 0)
    snaps["logits"] = delta
    return _inputs(plan, snaps, base, view, wanted, L, parallel)


def _wanted_points(plan) -> set[str]:
    names = {r for g in plan.receivers for r in g}
    points = set()
    for r in names:
        node = plan.graph.receiver(r)
        points.add("logits" if node.kind == "logits" else f"{'mlp' if node.kind == 'mlp' else 'heads'}{node.layer}")
    return points


def _inputs(plan, snaps, base, view, wanted, L: int, parallel: bool) -> dict[str, Tensor]:
    """Base input at each receiver's read point plus the difference there, flattened to rows."""
    by_point = {}
    for point in wanted:
        if point == "logits":
            clean = view(base[f"blocks.{L - 1}.hook_resid_post"])
        elif point.startswith("heads"):
            clean = view(base[f"blocks.{point[5:]}.hook_resid_pre"])
        else:
            clean = view(base[f"blocks.{point[3:]}.hook_{'resid_pre' if parallel else 'resid_mid'}"])
        by_point[point] = (clean[None] + snaps[point]).flatten(0, 1)
    out = {}
    for g in plan.receivers:
        for r in g:
            node = plan.graph.receiver(r)
            kind = "logits" if node.kind == "logits" else ("mlp" if node.kind == "mlp" else "heads")
            out[r] = by_point[kind if kind == "logits" else f"{kind}{node.layer}"]
    return out


def _sender_sum(senders: list[list[Node]], which, diff) -> Tensor | int:
    """(group, n, P, d): each group's summed output difference over its senders that `which` selects (0 if none)."""
    cached: dict[str, Tensor] = {}
    rows = []
    for nodes in senders:
        total = 0
        for s in nodes:
            if which(s):
                if s.name not in cached:
                    cached[s.name] = diff(s)
                total = total + cached[s.name]
        rows.append(total)
    like = next((r for r in rows if isinstance(r, Tensor)), None)
    if like is None:
        return 0
    return torch.stack([r if isinstance(r, Tensor) else torch.zeros_like(like) for r in rows])


def _result(acts: dict, s: Node) -> Tensor:
    return acts[f"blocks.{s.layer}.attn.hook_result"][:, :, s.head]


def _mlp_change(model, layer: int, senders, writes: Tensor, graph, mlp_in: Tensor, delta: Tensor, mediate: bool,
                base: dict, src: dict, view) -> Tensor:
    """Per group: MLP `layer`'s output change: source - base if it is a sender, else recomputed if it mediates."""
    name = f"blocks.{layer}.hook_mlp_out"
    node = graph.sender(f"mlp{layer}")
    is_sender = torch.tensor([any(s.name == node.name for s in nodes) for nodes in senders])
    reads = graph.reads_at(graph.receiver(f"mlp{layer}"))
    active = (writes <= reads) & ~is_sender if mediate else torch.zeros_like(is_sender)
    k = len(senders)
    shape = (k, *mlp_in.shape)
    out = torch.zeros(shape, dtype=mlp_in.dtype, device=mlp_in.device)
    if is_sender.any():
        out[is_sender] = view(src[name] - base[name]).to(out.dtype)
    if active.any():
        ln = runs.module(model, f"blocks.{layer}.ln2.hook_normalized")
        mlp = runs.module(model, name)
        x = torch.cat([mlp_in[None] + delta[active], mlp_in[None]])  # (active + 1, n, P, d)
        y = mlp(ln(x))  # the unchanged input in the same call, so no change gives exactly 0
        out[active] = y[:-1] - y[-1:]
    return out
