"""The embedded toy suite: small models trained here (Pythia's architecture, and GPT-2's), with their checkpoints.

    >>> from interp import toy
    >>> toy.resolve("toy"), toy.revisions("toy-2l")[:3]
    ('toy-2l', ['step0', 'step1', 'step2'])
    >>> toy.checkpoint_path("toy-2l", "main").name  # the final step
    'step3600'
    >>> toy.HEADS["toy-2l"]["previous_token"]
    ((0, 1),)

See interp/toy/README.md (the model card) for data, training and which heads do what.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from interp.errors import UnknownModelError, UnknownRevisionError, WeightsNotFoundError

NAMES: tuple[str, ...] = ("toy-2l", "toy-4l", "toy-gpt2")
ARCH: dict[str, str] = {"toy-2l": "neox", "toy-4l": "neox", "toy-gpt2": "gpt2"}  # GPTNeoXForCausalLM or GPT2LMHeadModel
DEFAULT: str = "toy-2l"
# Models whose checkpoints are stored as model.safetensors.xz (`xz -d` gives model.safetensors), to fit 10 MB.
PACKED: frozenset[str] = frozenset({"toy-gpt2"})
ALIASES: dict[str, str] = {"toy": DEFAULT}
# What the model card's named heads do at the final checkpoint, as (layer, head).
HEADS: dict[str, dict[str, tuple[tuple[int, int], ...]]] = {
    "toy-2l": {"previous_token": ((0, 1),), "induction": ((1, 0), (1, 1), (1, 2))},
    "toy-4l": {"previous_token": ((0, 0),), "induction": ((1, 0), (1, 1))},
    "toy-gpt2": {"previous_token": (), "induction": ()},  # none forms within the shared schedule
}
MODELS_DIR = Path(__file__).resolve().parent / "models"
_STEP = re.compile(r"step(\d+)")


def resolve(name: str) -> str | None:
    """The toy model a name means ("toy" -> DEFAULT), or None when it names no toy model."""
    if not isinstance(name, str):
        return None
    name = ALIASES.get(name, name)
    return name if name in NAMES else None


def _known(name: str) -> str:
    """Resolve `name` or raise an UnknownModelError (a ValueError) listing the toy names."""
    resolved = resolve(name)
    if resolved is None:
        choices = ", ".join(repr(n) for n in (*ALIASES, *NAMES))
        raise UnknownModelError(f"{name!r} is not a toy model; choose one of {choices}.")
    return resolved


def model_dir(name: str) -> Path:
    """Directory of one toy model: its tokenizer, training.json and step<N>/ checkpoints."""
    return MODELS_DIR / _known(name)


def revisions(name: str) -> list[str]:
    """Saved checkpoints in training order, e.g. ["step0", "step1", ..., "step3600"]."""
    root = model_dir(name)
    try:
        with os.scandir(root) as entries:
            folders = [e.name for e in entries if e.is_dir()]
    except FileNotFoundError:
        folders = []
    steps = sorted(int(m.group(1)) for folder in folders if (m := _STEP.fullmatch(folder)))
    if not steps:
        raise WeightsNotFoundError(
            f"No checkpoints under {root}; train them from a source checkout with "
            f"`python -m toy_training.train --model {root.name}`."
        )
    return [f"step{s}" for s in steps]


def checkpoint_path(name: str, revision: str | None = None) -> Path:
    """Directory of one checkpoint; revision None or "main" means the final step."""
    saved = revisions(name)
    if revision is None or revision == "main":
        return model_dir(name) / saved[-1]
    if revision in saved:
        return model_dir(name) / revision
    raise UnknownRevisionError(
        f"{_known(name)} has no checkpoint {revision!r}; {_hint(revision, saved)} "
        f"Saved: {', '.join(saved)} (or 'main' for {saved[-1]})."
    )


def _hint(revision: object, saved: list[str]) -> str:
    """Name the saved steps on either side of a step number, or show what a revision looks like."""
    match = _STEP.fullmatch(str(revision))
    if match is None:
        return f"revisions look like {saved[-1]!r} or 'main'."
    step = int(match.group(1))
    below = [s for s in saved if int(s[4:]) < step]
    above = [s for s in saved if int(s[4:]) > step]
    return f"nearest: {', '.join(below[-1:] + above[:1])}."
