"""Lenses: decode the residual stream at every layer boundary (logit lens, tuned lens), with figures.

    >>> import interp
    >>> from analyses.lens import logit_lens
    >>> result = logit_lens(interp.load("toy"), "def f(x): return x", target=" x")
    >>> result.layers                   # 0 = embedding, L+1 = after block L
    [0, 1, 2]

`logit_lens` / `lens_from_cache` -> `LensResult` (logit.py); `train_tuned_lens` -> `TunedLens` and
`compare_lenses` -> `LensComparison` (tuned.py); plotly figures in figures.py; the
`pythia-interp logit-lens` and `tuned-lens` commands in command.py.
"""

from analyses.lens.logit import (
    METRICS,
    LensResult,
    LogitLens,
    Readout,
    boundary,
    decode,
    lens_from_cache,
    logit_lens,
    resid_names,
)
from analyses.lens.tuned import (
    LensComparison,
    LensInfo,
    LensNotFoundError,
    TunedLens,
    compare_lenses,
    default_text,
    token_stream,
    train_tuned_lens,
)

__all__ = [
    "METRICS",
    "LensComparison",
    "LensInfo",
    "LensNotFoundError",
    "LensResult",
    "LogitLens",
    "Readout",
    "TunedLens",
    "boundary",
    "compare_lenses",
    "decode",
    "default_text",
    "lens_from_cache",
    "logit_lens",
    "resid_names",
    "token_stream",
    "train_tuned_lens",
]
