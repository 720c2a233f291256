"""Sweep adapters for analyses that live in other subpackages, built when first asked for (see registry.Lazy).

    >>> from analyses.sweep.registry import ANALYSES
    >>> ANALYSES["rope"].requires, ANALYSES["rope"].build
    (('analyses.rope',), 'analyses.sweep.hooks:rope')

Each function returns an `Analysis` whose `run(model, **params)` calls that subpackage's public
functions only, and whose parameters (with their defaults) enter the store key.
"""

from __future__ import annotations

from analyses.sweep.registry import Analysis, figures_from


def rope() -> Analysis:
    """The RoPE head table per checkpoint: rotary share, positional index, kernel argmax offset, label, band."""
    return Analysis("rope", _rope, {"prompts": None, "n_tokens": 256}, data=("prompts",),
                    figures=figures_from("rope_figures"),
                    description="RoPE use per head: rotary share, positional index, kernel offset, label")


def _rope(model, *, prompts=None, n_tokens=256):
    """`analyses.rope.head_table` on the prompts, or on the first `n_tokens` of its sample text."""
    from analyses.rope import head_table, sample_tokens

    x = list(prompts) if prompts is not None else sample_tokens(model, n_tokens)
    return head_table(model, x).to_frame()
