"""RoPE use as a sweep analysis: `analyses.rope`'s head table at every checkpoint (built on first use).

    >>> from analyses.sweep.registry import ANALYSES
    >>> ANALYSES["rope"].requires, ANALYSES["rope"].build
    (('analyses.rope',), 'analyses.sweep.rope:rope')
    >>> rope().defaults
    {'prompts': None, 'n_tokens': 256}

`run(model, **params)` calls only the public functions of `analyses.rope`; its parameters (with
their defaults) enter the store key, the prompts as a hash.
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
