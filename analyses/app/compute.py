"""Where the explorer gets its numbers: the analyses, imported lazily from one place.

    >>> from analyses.app import compute
    >>> compute.attention().__name__
    'analyses.attention_maps'

The app never computes an analysis itself; it calls these and lays out their results. When an
analysis moves, its module path changes here and nowhere else.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

ATTENTION = "analyses.attention_maps"  # patterns(model, x), detect_heads(model, ...), AttentionPatterns.scores()
LENS = "analyses.logit_lens"  # logit_lens(model, x, target=...)
OPTIONAL: dict[str, tuple[str, ...]] = {  # views that appear once their analysis exists
    "rope": ("analyses.rope", "analyses.rope_probe"),
    "patching": ("analyses.patching",),
}


def attention() -> ModuleType:
    """The attention-maps module (patterns, head detectors)."""
    return importlib.import_module(ATTENTION)


def lens() -> ModuleType:
    """The logit-lens module."""
    return importlib.import_module(LENS)


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
