"""Activation patching: many patches per forward, stacked along the batch and chunked to a memory budget.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> result = activation_patch(model, task, sites=["z"])       # every head at every position
    >>> result.to_frame().columns.tolist()
    ['site', 'layer', 'head', 'position', 'effect', 'effect_normalized']

Each patch replaces one site's value (a head's z, q, k, v or attention pattern row, or a layer's
resid_pre, attn_out or mlp_out) at one position, or at every position with `per_position=False`.
Noising (default) patches corrupt values into the clean run; denoising clean values into the
corrupt run. Effects follow the sign convention of `analyses.patching.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

from analyses.patching import engine, runs, suffix
from analyses.patching.errors import UnknownMethodError
from analyses.patching.metrics import resolve
from analyses.patching.results import NodeEffects
from analyses.patching.suffix import suffix_values

# short name -> (site template, patched per head)
NODE_SITES: dict[str, tuple[str, bool]] = {
    "resid_pre": ("blocks.{L}.hook_resid_pre", False),
    "attn_out": ("blocks.{L}.hook_attn_out", False),
    "mlp_out": ("blocks.{L}.hook_mlp_out", False),
    "z": ("blocks.{L}.attn.hook_z", True),
    "q": ("blocks.{L}.attn.hook_q", True),
    "k": ("blocks.{L}.attn.hook_k", True),
    "v": ("blocks.{L}.attn.hook_v", True),
    "pattern": ("blocks.{L}.attn.hook_pattern", True),
}


@dataclass(frozen=True)
class Patch:
    """One patch: a site kind at a layer, a head (head sites), and a position (None: every position)."""

    site: str
    layer: int
    head: int | None
    position: int | None

    def name(self) -> str:
        return NODE_SITES[self.site][0].replace("{L}", str(self.layer))


def plan(model, n_pos: int, sites: Sequence[str], per_position: bool = True, layers: Iterable[int] | None = None,
         heads: Iterable[int] | None = None, positions: Iterable[int] | None = None) -> list[Patch]:
    """Every patch of the chosen sites, layers, heads and positions, in (site, layer, head, position) order."""
    for site in sites:
        if site not in NODE_SITES:
            raise UnknownMethodError(f"Unknown site {site!r} for activation patching: choose from {list(NODE_SITES)}.")
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    head_ids = list(range(model.n_heads)) if heads is None else list(heads)
    pos_ids = [None] if not per_position else list(range(n_pos)) if positions is None else list(positions)
    return [Patch(site, layer, head, pos) for site in sites for layer in layers
            for head in (head_ids if NODE_SITES[site][1] else [None]) for pos in pos_ids]


def activation_patch(model, task, sites: Sequence[str] = ("z",), *, metric=None, direction: str = "noising",
                     per_position: bool = True, layers: Iterable[int] | None = None,
                     heads: Iterable[int] | None = None, positions: Iterable[int] | None = None,
                     ablation="corrupt", budget_mb: float = runs.DEFAULT_BUDGET_MB,
                     progress: bool | None = None) -> NodeEffects:
    """Effect on the metric of patching each site, batched; one dataclass whatever the options.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> activation_patch(model, task, sites=["resid_pre", "mlp_out"], per_position=False).effects.shape
    torch.Size([4])
    """
    runs.check_source(direction, ablation)
    runs.check_budget(budget_mb)
    patches = plan(model, task.n_pos, sites, per_position, layers, heads, positions)
    metric = resolve(metric, model, task)
    base = task.clean if direction == "noising" else task.corrupt
    names = sorted({p.name() for p in patches})
    with torch.no_grad():
        src, ref_other = runs.source_run(model, task, names, direction, ablation, metric)
        effects, ref = run_patches(model, base, metric, patches, src, budget_mb, progress)
    clean, corrupt = (ref, ref_other) if direction == "noising" else (ref_other, ref)
    return NodeEffects.build("activation", model, task, metric, patches, effects, float(clean), float(corrupt),
                             direction, ablation)


def run_patches(model, base, metric, patches: list[Patch], src, budget_mb: float = runs.DEFAULT_BUDGET_MB,
                progress: bool | None = None) -> tuple[Tensor, Tensor]:
    """Effect of each patch (patch,) and the unpatched metric, in batched chunks without a sync per patch.

    Residual patches (z, attn_out, mlp_out, resid_pre) read by a last-position metric run from where
    they enter, on later layers and positions only (`analyses.patching.engine`). Others are grouped by
    position; when the metric reads only the last position, each group runs from its position on
    (`analyses.patching.suffix`). Each chunk carries one unpatched copy of the
    prompts, the reference of that chunk: rows of one batch are computed alike, so a patch that
    changes nothing has an effect of exactly 0.
    """
    n, n_pos = len(base), base.ids.shape[1]
    if engine.applies(model, {p.site for p in patches}, metric, n_pos):
        return engine.patch_effects(model, base, metric, patches, src, budget_mb, progress)
    shared = suffix.applies({p.site for p in patches}, metric, n_pos)
    kv = suffix.prefix(model, base) if shared else None
    if shared:  # suffix runs add (source - base): the base's own values there may differ by float rounding
        names = sorted({p.name() for p in patches})
        _, base_cache = model.run_with_cache(base, names=names, stop_at_layer=model.n_layers)
        src = {name: src[name] - base_cache[name] for name in names}
    out = torch.empty(len(patches), device=model.device, dtype=runs.value_dtype(model))
    work = list(_work(model, patches, n, n_pos, budget_mb, shared))
    ref = None
    for start, index in runs.progress(work, len(work), progress, "activation patching"):
        chunk = [patches[i] for i in index]
        masks = _masks(chunk, n_pos - start, model.n_heads, start)
        hooks = {name: _hook(mask, src[name][:, start:] if _positional(name) else src[name], shared)
                 for name, mask in masks.items()}
        if shared:
            values = suffix_values(model, base, kv, start, len(chunk) + 1, hooks, metric)
        else:
            with model.hooks(fwd=hooks):
                values = runs.metric_rows(model, runs.tile(base, len(chunk) + 1), metric)
        values = metric.per_patch(values)
        out[torch.tensor(index, device=out.device)] = (values[:-1] - values[-1]).to(out.dtype)
        ref = values[-1] if ref is None else ref
    return out, ref


def _work(model, patches: list[Patch], n: int, n_pos: int, budget_mb: float, shared: bool):
    """(start position, patch indices) per chunk: grouped by position when runs share prefixes."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(patches):
        groups.setdefault(p.position or 0 if shared else 0, []).append(i)
    for start, index in sorted(groups.items()):
        row_bytes = runs.row_bytes(model, n_pos - start) + (suffix.cache_bytes(model, n_pos) if shared else 0)
        for part in runs.chunks(len(index), n, row_bytes, budget_mb):
            yield start, index[part]


def _positional(name: str) -> bool:
    return not name.endswith("hook_pattern")


def _masks(chunk: list[Patch], n_pos: int, n_heads: int, start: int = 0) -> dict[str, Bool[Tensor, "patch ..."]]:
    """Per site: which (patch, position[, head]) entries take the source value.

    Head sites are (patch, pos, head), the pattern (patch, head, q_pos), the others (patch, pos).
    """
    masks: dict[str, Tensor] = {}
    for j, p in enumerate(chunk):
        name, per_head = p.name(), NODE_SITES[p.site][1]
        if name not in masks:
            rows = len(chunk) + 1
            shape = (rows, n_heads, n_pos) if p.site == "pattern" else (
                (rows, n_pos, n_heads) if per_head else (rows, n_pos))
            masks[name] = torch.zeros(shape, dtype=torch.bool)  # the last row stays unpatched
        pos = slice(None) if p.position is None else p.position - start
        if p.site == "pattern":
            masks[name][j, p.head, pos] = True
        elif per_head:
            masks[name][j, pos, p.head] = True
        else:
            masks[name][j, pos] = True
    return masks


def _hook(mask: Tensor, source: Tensor, additive: bool = False):
    """Replace the masked entries of each patch's rows by the source value, or add it (no host sync)."""
    mask = mask.to(source.device)

    def hook(x: Tensor, site) -> Tensor:
        k = mask.shape[0]
        xv = x.view(k, -1, *x.shape[1:])  # (patch, prompt, ...)
        m = mask.view(k, 1, *mask.shape[1:], *([1] * (x.ndim - mask.ndim)))
        value = source.to(x.dtype)[None]
        new = xv + torch.where(m, value, 0) if additive else torch.where(m, value, xv)
        return new.view(x.shape)

    return hook
