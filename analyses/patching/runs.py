"""Shared plumbing of the patching methods: batched runs, ablation sources, metric values, chunking.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> from analyses.patching.metrics import LogitDiff
    >>> rows = tile(task.clean, 3)                              # three copies of the prompts, patch-major
    >>> metric_rows(model, rows, LogitDiff.of(task)).shape      # one metric value per row
    torch.Size([12])

Every run goes through the model's own forward with `model.hooks(fwd=...)`; the final LayerNorm
and unembedding run only at the metric's positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.patching.errors import PatchingError, UnknownMethodError
from analyses.patching.metrics import Metric
from interp.cache import ActivationCache
from interp.tokens import Tokens

ABLATIONS = ("corrupt", "mean", "zero")
DIRECTIONS = ("noising", "denoising")
DEFAULT_BUDGET_MB = 1024


def module(model, site: str) -> torch.nn.Module:
    """The module behind a site."""
    return model.module(site)


def parallel_residual(model) -> bool:
    return bool(model.parallel_residual)


def value_dtype(model) -> torch.dtype:
    """Metric values and scores are kept in fp32, or fp64 for a double-precision model."""
    return torch.promote_types(model.dtype, torch.float32)


def tile(tokens: Tokens, k: int) -> Tokens:
    """k copies of a batch along the batch axis, patch-major (row = copy * n + prompt)."""
    return Tokens(tokens.ids.repeat(k, 1), tokens.attention_mask.repeat(k, 1))


def unembed(model, resid: Float[Tensor, "row k d_model"]) -> Float[Tensor, "row k d_vocab"]:
    """Logits from residual-stream vectors through the model's final LayerNorm and unembedding."""
    return module(model, "hook_logits")(module(model, "ln_final.hook_normalized")(resid))


def metric_values(model, metric: Metric, resid: Float[Tensor, "row k d_model"]) -> Float[Tensor, " row"]:
    """The metric of each row from residual-stream vectors at its positions. A metric that reads a few logits
    (a logit difference) gets only those columns of the unembedding: the same numbers, to rounding, for
    about 1/25,000 of the product."""
    tokens = metric.tokens()
    if tokens is None:
        return metric.values(unembed(model, resid))
    head = module(model, "hook_logits")
    tokens = tokens.to(head.weight.device)
    bias = head.bias[tokens] if head.bias is not None else None
    logits = torch.nn.functional.linear(module(model, "ln_final.hook_normalized")(resid), head.weight[tokens], bias)
    return metric.on_tokens(tokens).values(logits)


def final_resid(model, tokens: Tokens) -> Float[Tensor, "row pos d_model"]:
    """The residual stream entering the final LayerNorm (hooks of an enclosing `model.hooks` apply)."""
    resid, _ = model.run_with_cache(tokens, names=[], stop_at_layer=model.n_layers)
    return resid


def metric_rows(model, tokens: Tokens, metric: Metric) -> Float[Tensor, " row"]:
    """The metric of each row, unembedding only the positions the metric reads."""
    return metric.values(unembed(model, metric.gather(final_resid(model, tokens))))


def source_run(model, task, names: list[str], direction: str, ablation,
               metric: Metric) -> tuple[ActivationCache, Tensor]:
    """The patched-in values (as `sources`) and M of the other run, from one forward where they share it."""
    if isinstance(ablation, str) and ablation == "corrupt":
        check_choice(direction, DIRECTIONS, "direction")
        other = task.corrupt if direction == "noising" else task.clean
        resid, cache = model.run_with_cache(other, names=names, stop_at_layer=model.n_layers)
        return cache, metric.values(unembed(model, metric.gather(resid))).mean()
    src = sources(model, task, names, direction, ablation)
    return src, metric_rows(model, task.corrupt if direction == "noising" else task.clean, metric).mean()


def first_change(task, ablation) -> int:
    """The first position where the clean and corrupt prompts differ (in any prompt), when the corrupt run is
    the ablation; 0 otherwise. Before it every sender's ablated output is its clean one: masked runs share
    those positions with the unmasked run (at most the last position is left to run), and attribution's
    changes are 0 there."""
    if not (isinstance(ablation, str) and ablation == "corrupt"):
        return 0
    clean, corrupt = task.clean, task.corrupt
    differs = (clean.ids != corrupt.ids) | (clean.attention_mask != corrupt.attention_mask)
    columns = differs.any(0).nonzero()
    n_pos = clean.ids.shape[1]
    return min(int(columns[0]) if len(columns) else n_pos, n_pos - 1)


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise UnknownMethodError(f"Unknown {what} {value!r}: choose one of {', '.join(choices)}.")
    return value


def check_source(direction: str, ablation: str | ActivationCache) -> None:
    """A direction and an ablation that go together (before any run)."""
    check_choice(direction, DIRECTIONS, "direction")
    if isinstance(ablation, ActivationCache):
        return
    check_choice(ablation, ABLATIONS, "ablation")
    if ablation != "corrupt" and direction == "denoising":
        raise UnknownMethodError(f"ablation={ablation!r} replaces clean values, so it only makes sense when "
                                 "noising; use direction='noising', or ablation='corrupt' to denoise.")


def check_budget(budget_mb: float) -> float:
    """A memory budget in MiB: a positive number."""
    if not isinstance(budget_mb, (int, float)) or not math.isfinite(budget_mb) or budget_mb <= 0:
        raise PatchingError(f"budget_mb={budget_mb!r}: give the memory a batched run may use, in MiB, as a "
                                 f"positive number (the default is {DEFAULT_BUDGET_MB}).")
    return budget_mb


def sources(model, task, names: list[str], direction: str, ablation: str | ActivationCache) -> ActivationCache:
    """The values patched in at each site: the other run's, the clean mean over prompts, zeros, or a cache."""
    check_source(direction, ablation)
    if isinstance(ablation, ActivationCache):
        return ablation
    run = task.corrupt if direction == "noising" and ablation == "corrupt" else task.clean
    _, cache = model.run_with_cache(run, names=names)
    if ablation == "corrupt":
        return cache
    mask = task.clean.attention_mask.to(model.device)
    store = {name: _ablate(cache[name], mask, ablation, by_query="pattern" in name) for name in cache}
    return ActivationCache(store, cache.provenance)


def _ablate(x: Tensor, mask: Tensor, ablation: str, by_query: bool = False) -> Tensor:
    """Zeros, or the mean over prompts at each position (over prompts with a real token there)."""
    if ablation == "zero":
        return torch.zeros_like(x)
    if by_query:  # (batch, head, q_pos, k_pos): positions on axis 2
        weights = mask[:, None, :, None].to(x.dtype)
    else:
        weights = mask.view(*mask.shape, *([1] * (x.ndim - 2))).to(x.dtype)
    mean = (x * weights).sum(0, keepdim=True) / weights.sum(0, keepdim=True).clamp(min=1)
    return mean.expand_as(x).contiguous()


def spaced(index: list[int]) -> slice | list[int]:
    """A slice when the indices are evenly spaced and increasing (a layer's q, k or v receivers are),
    so that indexing with it gives a view; the list otherwise."""
    step = index[1] - index[0] if len(index) > 1 else 1
    if step > 0 and index == list(range(index[0], index[-1] + 1, step)):
        return slice(index[0], index[-1] + 1, step)
    return index


def row_bytes(model, n_pos: int) -> int:
    """Rough peak bytes one batch row needs during a no-grad forward."""
    width = 2 * model.d_mlp + 8 * model.d_model + 3 * model.n_heads * n_pos
    return max(1, torch.finfo(model.dtype).bits // 8) * n_pos * width


def chunks(n_items: int, rows_per_item: int, bytes_per_row: int, budget_mb: float) -> Iterator[slice]:
    """Slices of items so that one chunk's rows fit the memory budget."""
    per_chunk = max(1, int(budget_mb * 2**20) // max(1, rows_per_item * bytes_per_row))
    for start in range(0, n_items, per_chunk):
        yield slice(start, min(n_items, start + per_chunk))


def n_chunks(n_items: int, rows_per_item: int, bytes_per_row: int, budget_mb: float) -> int:
    per_chunk = max(1, int(budget_mb * 2**20) // max(1, rows_per_item * bytes_per_row))
    return math.ceil(n_items / per_chunk)


def progress(iterable, total: int, show: bool | None, desc: str):
    """A tqdm bar over chunks when asked, or by default when there are many."""
    if show is None:
        show = total > 4
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)
