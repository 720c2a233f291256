"""Residual patches run from where they enter: later layers, later positions, and only what the metric reads.

    >>> import interp
    >>> from analyses.patching import activation_patch, tasks
    >>> from analyses.patching.metrics import LogitDiff
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> applies(model, {"z", "mlp_out"}, LogitDiff.of(task), task.n_pos), applies(model, {"k"}, LogitDiff.of(task), 8)
    (True, False)
    >>> effects = activation_patch(model, task, sites=["z"]).effects    # runs through this module

A patch of a head's z, a layer's attn_out or mlp_out, or resid_pre adds one vector per position,
delta, to the residual stream: W_O (z_source - z_base) for a head, source - base otherwise. It
enters at a known point: Pythia's attention and MLP both read resid_pre, so an attention or MLP
patch at layer L enters before layer L + 1; on GPT-2 an attention patch enters resid_mid of layer
L, before its MLP. So a patched run is the base run up to that point and needs only:

- the layers after the entry point (the base run's residual there, plus delta);
- the positions from the first one delta touches (attention is causal; the earlier positions' keys
  and values are the base run's);
- on Pythia, in the layer a one-position patch enters, the later positions read an unchanged
  resid_pre: their q, k, v and MLP output are the base run's, and only their attention is redone;
- after the last attention, only the positions the metric reads (the last one).

A patch whose delta is exactly zero (the source equals the base there, e.g. a position before the
first token clean and corrupt differ in) changes nothing: its effect is exactly 0 and it is not
run. So is a patch entering after the last attention at a position the metric does not read.

Rows are patch-major (row = patch * n_prompts + prompt). The layers run here are written from the
model's own modules (LayerNorms, projections, MLP, rotary) with the attention arithmetic of HF's
eager code, softmax in at least fp32 as the default (sdpa) attention takes it. Their results equal
one forward per patch to float rounding (the tests check 1e-5 in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from analyses.patching import runs, suffix
from analyses.patching.metrics import Metric
from interp.attention import additive_mask
from interp.tokens import Tokens

SITES = {"resid_pre", "attn_out", "mlp_out", "z"}


def applies(model, sites: set[str], metric: Metric, n_pos: int) -> bool:
    """Whether patches of these sites, read by this metric, can run here (the metric reads only the last position)."""
    supported = model.parallel_residual or model.arch.kind == "gpt2"
    odd = getattr(model.hf.config, "reorder_and_upcast_attn", False)  # GPT-2's fp32 attention path: use hooks
    return supported and not odd and sites <= SITES and suffix.applies(sites, metric, n_pos)


@dataclass(frozen=True)
class Entry:
    """Where one patch enters: step (the layer on Pythia; half-layers on GPT-2), first position, delta's row."""

    step: int
    start: int
    index: int  # the patch's index in the caller's list


class Engine:
    """The base run's states at every step's input, its keys and values, and the model's steps."""

    def __init__(self, model, base: Tokens, metric: Metric, names: list[str]):
        self.model, self.base, self.metric = model, base, metric
        self.arch, self.n = model.arch, len(base)
        self.parallel = bool(model.parallel_residual)
        self.n_steps = model.n_layers if self.parallel else 2 * model.n_layers
        names = [*names, *(f"blocks.{ly}.hook_resid_pre" for ly in range(model.n_layers))]
        names += [f"blocks.{ly}.hook_{'mlp_out' if self.parallel else 'resid_mid'}" for ly in range(model.n_layers)]
        final, cache = model.run_with_cache(base, names=sorted(set(names)), stop_at_layer=model.n_layers)
        self.states = [self._state_name(s) for s in range(self.n_steps)]
        self.cache = cache
        self.final = final
        self.mask = base.attention_mask.to(model.device).bool()
        self.cos_sin = self._rotary(base.position_ids.to(model.device))
        resid = [cache[f"blocks.{ly}.hook_resid_pre"] for ly in range(model.n_layers)]
        self.base_qkv = [self._qkv(ly, x, slice(None)) for ly, x in enumerate(resid)]  # (prompt, head, pos, d_head)
        self.reference = self.values(final[:, -1:])
        self.diffs: dict[str, Tensor] = {}  # source - base per site
        self.touched: dict[str, dict[int | None, list[int]]] = {}

    # ---- entry points -------------------------------------------------------------------

    def _state_name(self, step: int) -> str:
        return state_name(self.parallel, step)

    def entry_step(self, site: str, layer: int) -> int:
        """The step at whose input a patch of `site` at `layer` enters (n_steps: after the last layer)."""
        if site == "resid_pre":
            return layer if self.parallel else 2 * layer
        if self.parallel or site == "mlp_out":
            return layer + 1 if self.parallel else 2 * layer + 2
        return 2 * layer + 1  # GPT-2's attention output enters resid_mid

    def entry(self, patch, index: int, src) -> tuple[Entry, Tensor] | None:
        """Where a patch enters and its delta (prompt, pos, d_model) over the positions it touches; None if it
        changes nothing the metric reads (its delta is zero, or it enters after the last attention elsewhere)."""
        name = patch.name()
        touched = self._touched(name, src)[patch.head]  # positions where any prompt's value changes
        if patch.position is not None:
            touched = [patch.position] if patch.position in touched else []
        if not touched:
            return None
        step, start, end = self.entry_step(patch.site, patch.layer), touched[0], touched[-1] + 1
        if step > self.last_attention_step() and end != self.mask.shape[1]:
            return None
        diff = self.diffs[name][:, start:end]
        if patch.site == "z":
            diff = diff[:, :, patch.head] @ self.model.W_O[patch.layer, patch.head]
        return Entry(step, start, index), diff

    def _touched(self, name: str, src) -> dict[int | None, list[int]]:
        """Per head (None for a whole-layer site): the positions where source and base differ in any prompt.

        One host read per site, not per patch."""
        if name not in self.touched:
            self.diffs[name] = diff = src[name].to(self.model.dtype) - self.cache[name]
            changed = diff.ne(0).any(-1).any(0)  # (pos, head) for z, (pos,) otherwise
            if changed.ndim == 2:
                self.touched[name] = {h: col.nonzero().flatten().tolist() for h, col in enumerate(changed.T.cpu())}
            else:
                self.touched[name] = {None: changed.cpu().nonzero().flatten().tolist()}
        return self.touched[name]

    def state(self, step: int) -> Float[Tensor, "prompt pos d_model"]:
        return self.final if step == self.n_steps else self.cache[self.states[step]]

    def last_attention_step(self) -> int:
        return self.n_steps - 1 if self.parallel else self.n_steps - 2

    # ---- the run --------------------------------------------------------------------------

    def run(self, chunk: list[tuple[Entry, Tensor]]) -> Float[Tensor, " patch"]:
        """The metric of each patched run, all sharing one start position.

        Rows join at their entry step, so each step runs only on the rows that have entered by then.
        On Pythia, a row whose delta touches one position enters through `entry_layer`.
        """
        start = chunk[0][0].start
        h = None  # (active rows, positions, d_model): rows whose entry step is behind us
        joined: list[int] = []  # chunk index of each block of n rows of h
        by_step: dict[int, list[int]] = {}
        for i, (e, _) in enumerate(chunk):
            by_step.setdefault(e.step, []).append(i)
        last_only = False
        for step in range(min(by_step), self.n_steps + 1):
            entering = by_step.get(step, [])
            single = [i for i in entering if self.parallel and step < self.n_steps and chunk[i][1].shape[1] == 1]
            spread = [i for i in entering if i not in set(single)]
            if spread:  # these rows enter here: the base state plus their delta
                new = _add(self.state(step)[:, start:], [chunk[i][1] for i in spread]).flatten(0, 1)
                h = _join(h, new[:, -1:] if last_only else new)
                joined += spread
            if step == self.n_steps:
                break
            last_only = last_only or step >= self.last_attention_step()
            if h is not None:
                h = self.step(step, h, start, only_last=last_only)
            if single:
                h = _join(h, self.entry_layer(step, torch.cat([chunk[i][1] for i in single]), start, last_only))
                joined += single
        values = self.metric.per_patch(self.values(h[:, -1:]))
        out = torch.empty_like(values)
        out[torch.tensor(joined, device=values.device)] = values
        return out

    def entry_layer(self, layer: int, delta: Float[Tensor, "patch*prompt 1 d_model"], start: int,
                    only_last: bool) -> Tensor:
        """A Pythia layer for rows whose input differs from the base only at position `start`, by `delta`.

        Later positions read the same resid_pre as in the base run, so their q, k, v and MLP output
        are the base run's; only their attention changes, through the one new key and value.
        """
        rows, n_pos = delta.shape[0] // self.n, self.mask.shape[1]
        x = self.state(layer)[:, start:start + 1].repeat(rows, 1, 1) + delta.view(-1, *delta.shape[1:])
        q_new, k_new, v_new = self._qkv(layer, x, slice(start, start + 1))
        q, k, v = (t.repeat(rows, 1, 1, 1) for t in self.base_qkv[layer])
        k[:, :, start:start + 1], v[:, :, start:start + 1] = k_new, v_new
        q = q[:, :, start:]
        q[:, :, :1] = q_new
        queries = slice(-1, None) if only_last else slice(None)
        attn = self._scores_to_output(layer, q[:, :, queries], k, v, start if not only_last else n_pos - 1, rows)
        mlp = self.cache[f"blocks.{layer}.hook_mlp_out"][:, start:].repeat(rows, 1, 1)
        if not only_last or start == n_pos - 1:
            mlp[:, :1] = self._module("mlp", layer)(self._module("ln2", layer)(x))
        base = self.state(layer)[:, start:].repeat(rows, 1, 1)
        base[:, :1] = x
        return (mlp[:, queries] + attn) + base[:, queries]

    def values(self, resid: Float[Tensor, "row 1 d_model"]) -> Float[Tensor, " row"]:
        return runs.metric_values(self.model, self.metric, resid)

    def step(self, step: int, h: Tensor, start: int, only_last: bool) -> Tensor:
        """One step on rows of positions start.. (only the last position comes out when `only_last`)."""
        if self.parallel:
            layer = step
            attn = self._attention(layer, h, start, only_last)
            x = h[:, -1:] if only_last else h
            mlp = self._module("mlp", layer)(self._module("ln2", layer)(x))
            return mlp + attn + x
        layer, half = divmod(step, 2)
        if half == 0:
            attn = self._attention(layer, h, start, only_last)
            return attn + (h[:, -1:] if only_last else h)
        return self._module("mlp", layer)(self._module("ln2", layer)(h)) + h

    def _module(self, role: str, layer: int) -> nn.Module:
        return self.arch.module(self.model.hf, role, layer)

    def _attention(self, layer: int, h: Tensor, start: int, only_last: bool) -> Tensor:
        """The attention block's output at the suffix's positions (or the last), keys before `start` from the base."""
        q, k, v = self._qkv(layer, h, slice(start, None))
        rows = h.shape[0] // self.n
        if start:
            _, pk, pv = self.base_qkv[layer]
            k = torch.cat([pk[:, :, :start].repeat(rows, 1, 1, 1), k], dim=2)
            v = torch.cat([pv[:, :, :start].repeat(rows, 1, 1, 1), v], dim=2)
        n_pos = self.mask.shape[1]
        if only_last:
            return self._scores_to_output(layer, q[:, :, -1:], k, v, n_pos - 1, rows)
        return self._scores_to_output(layer, q, k, v, start, rows)

    def _scores_to_output(self, layer: int, q: Tensor, k: Tensor, v: Tensor, first_query: int, rows: int) -> Tensor:
        """HF's attention arithmetic for queries at positions first_query.. over every key, through the output."""
        module = self._module("attn", layer)
        scores = torch.matmul(q, k.transpose(-1, -2)) * module.scaling
        if self.arch.kind == "gpt2" and getattr(module, "scale_attn_by_inverse_layer_idx", False):
            scores = scores / float(layer + 1)
        scores = scores + self._mask(first_query, scores).repeat(rows, 1, 1, 1)
        # softmax in at least fp32, as the models' default (sdpa) attention takes it in every dtype
        pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
        z = torch.matmul(pattern.to(v.dtype), v).transpose(1, 2).flatten(2)  # (row, pos, d_model)
        return self._module("out", layer)(z)

    def _mask(self, first_query: int, scores: Tensor) -> Tensor:
        return query_mask(self.mask, first_query, scores)[:, None]  # (prompt, 1, q, k)

    def _qkv(self, layer: int, h: Tensor, positions: slice) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (row, head, pos, d_head) of states at `positions`, rotated as the model rotates them."""
        fused = self._module("qkv", layer)(self._module("ln1", layer)(h))
        q, k, v = (self.arch.split_qkv(fused, self.model.n_heads, i).transpose(1, 2) for i in range(3))
        if self.cos_sin is not None:
            cos, sin = (t[:, positions].repeat(h.shape[0] // self.n, 1, 1) for t in self.cos_sin)
            q, k = self.arch.apply_rotary(q, k, cos, sin)
        return q, k, v

    def _rotary(self, position_ids: Tensor) -> tuple[Tensor, Tensor] | None:
        return rotary(self.model, self.final, position_ids)


def state_name(parallel: bool, step: int) -> str:
    """The site of the residual stream entering a step: a layer on Pythia, half a layer on GPT-2."""
    if parallel:
        return f"blocks.{step}.hook_resid_pre"
    layer, half = divmod(step, 2)
    return f"blocks.{layer}.hook_resid_{'mid' if half else 'pre'}"


def query_mask(mask: Tensor, first_query: int, scores: Tensor) -> Float[Tensor, "prompt q_pos k_pos"]:
    """HF's additive mask for queries at positions first_query..: causal and padding (`mask`, (prompt, pos)),
    in the dtype of `scores`."""
    n_pos = mask.shape[1]
    queries = torch.arange(first_query, n_pos, device=mask.device)
    keys = torch.arange(n_pos, device=mask.device)
    allowed = (keys[None, :] <= queries[:, None])[None] & mask[:, None, :]  # (prompt, q, k)
    return additive_mask(allowed, scores.flatten(0, -3)[0])


def rotary(model, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor] | None:
    """The model's rotary (cos, sin) at these positions, (prompt, pos, rotary dims); None without rotary."""
    if model.arch.positional != "rotary":
        return None
    return model.hf.get_submodule(model.arch.path("rotary"))(x, position_ids)


def _join(h: Tensor | None, new: Tensor) -> Tensor:
    return new if h is None else torch.cat([h, new])


def _add(state: Tensor, deltas: list[Tensor]) -> Float[Tensor, "patch prompt pos d_model"]:
    """One copy of the base state per patch, with the patch's delta added over the span it touches."""
    new = state[None].repeat(len(deltas), 1, 1, 1)
    spans = {d.shape[1] for d in deltas}
    if len(spans) == 1:
        span = spans.pop()
        new[:, :, :span] += torch.stack(deltas)
    else:
        for row, d in zip(new, deltas, strict=True):
            row[:, : d.shape[1]] += d
    return new


def patch_effects(model, base: Tokens, metric: Metric, patches: list, src, budget_mb: float,
                  progress: bool | None = None) -> tuple[Tensor, Tensor]:
    """Effect of each patch (patch,) and the unpatched metric: patches grouped by first position, chunked."""
    names = sorted({p.name() for p in patches})
    with torch.no_grad():
        engine = Engine(model, base, metric, names)
        reference = metric.per_patch(engine.reference)[0]
        out = torch.zeros(len(patches), device=model.device, dtype=runs.value_dtype(model))
        groups: dict[int, list[tuple[Entry, Tensor]]] = {}
        for i, p in enumerate(patches):
            entry = engine.entry(p, i, src)
            if entry is not None:
                groups.setdefault(entry[0].start, []).append(entry)
        n_pos, work = engine.mask.shape[1], []
        for start, group in sorted(groups.items()):
            group.sort(key=lambda e: e[0].step)
            row_bytes = runs.row_bytes(model, n_pos - start) + 2 * runs.row_bytes(model, 1) * n_pos
            work += [group[part] for part in runs.chunks(len(group), engine.n, row_bytes, budget_mb)]
        for chunk in runs.progress(work, len(work), progress, "activation patching"):
            index = torch.tensor([e.index for e, _ in chunk], device=out.device)
            out[index] = (engine.run(chunk) - reference).to(out.dtype)
    return out, reference
