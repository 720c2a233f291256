"""pythia-interp core: load any Pythia checkpoint and see inside the real HF model.

    >>> import interp
    >>> model = interp.load("toy")
    >>> logits, cache = model.run_with_cache("Hello, I am")
"""

from interp.cache import ActivationCache, Components, Provenance
from interp.errors import (
    HookShapeError,
    InputError,
    InterpError,
    SiteNotAvailableError,
    UnknownModelError,
    UnknownRevisionError,
    UnknownSiteError,
    UnsupportedModelError,
    WeightsNotFoundError,
)
from interp.loading import load
from interp.model import Model, Tokens
from interp.sites import Site

__all__ = [
    "ActivationCache", "Components", "HookShapeError", "InputError", "InterpError", "Model", "Provenance",
    "Site", "SiteNotAvailableError", "Tokens", "UnknownModelError", "UnknownRevisionError", "UnknownSiteError",
    "UnsupportedModelError", "WeightsNotFoundError", "load",
]
