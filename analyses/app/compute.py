"""Where the explorer gets its numbers: the analyses, imported lazily from one place.

    >>> from analyses.app import compute
    >>> compute.attention().__name__ in compute.ATTENTION
    True

The app never computes an analysis itself; it calls these and lays out their results. When an
analysis moves, its module path changes here and nowhere else.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

# Each view's module, by the names it has had (the first that imports wins).
ATTENTION = ("analyses.attention", "analyses.attention_maps")  # patterns, detect_heads, head_scores, DETECTORS
LENS = ("analyses.lens", "analyses.logit_lens")  # logit_lens, METRICS
OPTIONAL: dict[str, tuple[str, ...]] = {  # views that appear once their analysis exists
    "rope": ("analyses.rope", "analyses.rope_probe"),
    "patching": ("analyses.patching",),
}


def attention() -> ModuleType:
    """The attention module (patterns, head detectors)."""
    return _first(ATTENTION)


def lens() -> ModuleType:
    """The logit-lens module."""
    return _first(LENS)


def _first(names: tuple[str, ...]) -> ModuleType:
    for name in names[:-1]:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):
                raise
    return importlib.import_module(names[-1])


def optional(view: str) -> ModuleType | None:
    """The module behind an optional view, or None while no candidate module exists.

    >>> optional("no-such-view") is None
    True
    """
    for name in OPTIONAL.get(view, ()):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                continue  # not written yet: the view stays hidden
            warnings.warn(f"{name} exists but cannot be imported ({err}); its view is hidden.", stacklevel=2)
            return None
    return None
