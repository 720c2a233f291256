"""pythia-interp core: load any Pythia checkpoint and see inside the real HF model.

>>> import interp
>>> model = interp.load("toy")
>>> logits, cache = model.run_with_cache("Hello, I am")
>>> logits.shape[:2], cache["pattern", 0].shape[:2]
(torch.Size([1, 7]), torch.Size([1, 3]))
"""

from interp.arch import Architecture
from interp.cache import ActivationCache, Components, Provenance
from interp.errors import (
    HookShapeError,
    InputError,
    InterpError,
    InvalidOptionError,
    SiteNotAvailableError,
    TokenizerWarning,
    UnknownModelError,
    UnknownRevisionError,
    UnknownSiteError,
    UnsupportedModelError,
    WeightsNotFoundError,
)
from interp.loading import load
from interp.model import Model
from interp.sites import Site
from interp.tokens import Tokens

__all__ = [
    "ActivationCache",
    "Architecture",
    "Components",
    "HookShapeError",
    "InputError",
    "InterpError",
    "InvalidOptionError",
    "Model",
    "Provenance",
    "Site",
    "SiteNotAvailableError",
    "TokenizerWarning",
    "Tokens",
    "UnknownModelError",
    "UnknownRevisionError",
    "UnknownSiteError",
    "UnsupportedModelError",
    "WeightsNotFoundError",
    "load",
]
