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
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# Each view's module, by the names it has had (the first that imports wins).
ATTENTION = ("analyses.attention", "analyses.attention_maps")  # patterns, detect_heads, head_scores, DETECTORS
LENS = ("analyses.lens", "analyses.logit_lens")  # logit_lens, METRICS


@dataclass(frozen=True)
class Extra:
    """An analysis that gets its own tab once it is installed: how to run it, which figures to show."""

    modules: tuple[str, ...]  # candidate module names; the tab is hidden while none imports
    label: str
    run: Callable[[ModuleType, Any, str], Any]  # (module, model, prompt) -> result
    figures: Callable[[Any], list]  # result -> plotly figures
    n_figures: int = 1
    uses_prompt: bool = True  # False: computed once per model and checkpoint


def _rope(module: ModuleType, model, prompt: str):
    return module.probe(model, prompt)


def _induction_patching(module: ModuleType, model, prompt: str):
    return module.activation_patch(model, module.tasks.induction(model, n_prompts=8), sites=["z"])


EXTRAS: dict[str, Extra] = {
    "rope": Extra(("analyses.rope",), "RoPE probing", _rope, lambda result: result.figures(), n_figures=5),
    "patching": Extra(("analyses.patching",), "Patching (induction)", _induction_patching,
                      lambda result: [result.figure()], uses_prompt=False),
}


def attention() -> ModuleType:
    """The attention module (patterns, head detectors)."""
    return _first(ATTENTION)


def attention_figures() -> ModuleType:
    """The attention analysis's figure helpers (`fit`: how long prompts are pooled to fit a figure)."""
    return importlib.import_module(attention().__name__ + ".figures")


def lens() -> ModuleType:
    """The logit-lens module."""
    return _first(LENS)


def optional(view: str) -> ModuleType | None:
    """The module behind an optional view, or None while no candidate module exists.

    >>> optional("no-such-view") is None
    True
    """
    extra = EXTRAS.get(view)
    for name in extra.modules if extra else ():
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                continue  # not written yet: the view stays hidden
            warnings.warn(f"{name} exists but cannot be imported ({err}); its view is hidden.", stacklevel=2)
            return None
    return None


def _first(names: tuple[str, ...]) -> ModuleType:
    for name in names[:-1]:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):
                raise
    return importlib.import_module(names[-1])
