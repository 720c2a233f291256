"""Attention: patterns read from the cache, head detectors scored on them, and their figures.

    >>> import interp
    >>> from analyses.attention import detect_heads, patterns
    >>> model = interp.load("toy")
    >>> fig = patterns(model, "The cat sat. The cat").figure(layer=1, head=2)
    >>> detect_heads(model).top("prev_token", k=1)
    [(0, 1)]

`patterns` -> `AttentionPatterns` (patterns.py); `detect_heads` / `head_scores` -> `HeadScores`
(detectors.py, with the formulas); plotly figures in figures.py; `pythia-interp attention` in
command.py.
"""

from analyses.attention.detectors import (
    DETECTORS,
    HeadScores,
    detect_heads,
    detection_patterns,
    head_scores,
    ordinary_ids,
    pattern_scores,
    repeated_random_tokens,
)
from analyses.attention.patterns import AttentionPatterns, patterns

__all__ = [
    "DETECTORS",
    "AttentionPatterns",
    "HeadScores",
    "detect_heads",
    "detection_patterns",
    "head_scores",
    "ordinary_ids",
    "pattern_scores",
    "patterns",
    "repeated_random_tokens",
]
