"""Typed errors. Each message names the bad value, the valid choices and the fix."""


class InterpError(Exception):
    """Base class of every error this library raises on bad input."""


class UnknownModelError(InterpError, ValueError):
    """A model name that is neither in the suite nor a local directory."""


class UnknownRevisionError(InterpError, ValueError):
    """A revision that is not one of the model's saved checkpoints."""


class UnsupportedModelError(InterpError, TypeError):
    """A model that is not GPT-NeoX."""


class WeightsNotFoundError(InterpError, OSError):
    """Weights that are not on disk and cannot be downloaded."""


class UnknownSiteError(InterpError, KeyError):
    """A hook site name that does not exist; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SiteNotAvailableError(InterpError, ValueError):
    """A site that exists in general but not on this model (e.g. `hook_resid_mid` on Pythia)."""


class HookShapeError(InterpError, ValueError):
    """A hook returned a tensor of the wrong shape."""


class InputError(InterpError, ValueError):
    """Bad tokens or prompts: empty, too long, out of vocabulary."""


class InvalidOptionError(InterpError, ValueError):
    """An option outside its accepted values: a dtype, a device, an attention implementation."""


class TokenizerWarning(UserWarning):
    """Loading fell back to the shipped GPT-NeoX-20B tokenizer, or found no tokenizer at all."""
