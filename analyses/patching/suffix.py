"""Patched runs that share the unpatched prefix: positions before a patch run once, through the KV cache.

    >>> import interp
    >>> from analyses.patching import activation_patch, tasks
    >>> from analyses.patching.metrics import LogitDiff
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> applies({"z", "k"}, LogitDiff.of(task), task.n_pos), applies({"pattern"}, LogitDiff.of(task), task.n_pos)
    (True, False)
    >>> effects = activation_patch(model, task, sites=["z"]).effects    # runs through this module

A patch at position p cannot change anything before p (attention is causal), so the patched rows
only need positions p.. : the model's own forward runs on those, with the keys and values of the
positions before p taken from one unpatched run (HF's `past_key_values`). The hooks then see the
suffix (their position axis starts at p). It applies when the metric reads only the last position
and no patch sits inside attention (the attention tap recomputes from the whole sequence).
"""

from __future__ import annotations

import torch
from torch import Tensor

from analyses.patching.metrics import Metric
from interp.tokens import Tokens

INSIDE = {"pattern"}


def applies(sites: set[str], metric: Metric, n_pos: int) -> bool:
    """Whether patches of these sites, read by this metric, can run on suffixes."""
    positions = metric.positions
    last_only = positions is not None and positions.shape[1] == 1 and bool((positions % n_pos == n_pos - 1).all())
    return last_only and not (sites & INSIDE)


def prefix(model, base: Tokens) -> list[tuple[Tensor, Tensor]]:
    """Keys and values of every layer in the unpatched run, (prompt, head, pos, d_head) each."""
    with torch.no_grad():
        out = model.hf(**base.hf_inputs(), use_cache=True)
    return [(k, v) for k, v, *_ in out.past_key_values]


def suffix_values(model, base: Tokens, kv: list[tuple[Tensor, Tensor]], start: int, copies: int, hooks: dict,
                  metric: Metric) -> Tensor:
    """The metric of `copies` copies of the prompts run from position `start` on, with `hooks` attached."""
    from transformers import DynamicCache

    ids = base.ids[:, start:].repeat(copies, 1)
    mask = base.attention_mask.repeat(copies, 1)
    positions = base.position_ids[:, start:].repeat(copies, 1)
    cache = DynamicCache([(k[:, :, :start].repeat(copies, 1, 1, 1), v[:, :, :start].repeat(copies, 1, 1, 1))
                          for k, v in kv]) if start else None
    with torch.no_grad(), model.hooks(fwd=hooks):
        logits = model.hf(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                          use_cache=start > 0, logits_to_keep=1).logits  # (row, 1, d_vocab)
    return metric.values(logits)


def cache_bytes(model, n_pos: int) -> int:
    """Bytes one row's prefix keys and values take, with the copy the forward concatenates."""
    return 4 * model.n_layers * n_pos * model.d_model * (torch.finfo(model.dtype).bits // 8)
