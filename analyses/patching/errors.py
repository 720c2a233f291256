"""Errors of the patching analyses; each is an `InterpError` whose message names the fix."""

from interp.errors import InterpError


class PatchingError(InterpError, ValueError):
    """Bad input to a patching method."""


class GraphError(PatchingError):
    """A sender, receiver or edge that the model's graph does not have."""


class TaskError(PatchingError):
    """Clean and corrupt prompts that do not align, or answers that are not single tokens."""


class UnknownMethodError(PatchingError):
    """A method, site, metric or ablation name we do not know."""


class WeakTaskWarning(UserWarning):
    """The clean and corrupt runs give (almost) the same metric, so normalised numbers divide by about 0."""
