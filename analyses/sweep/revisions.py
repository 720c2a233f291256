"""Which checkpoints a sweep visits: model names, revision specs, training steps and tokens seen.

    >>> [c.revision for c in checkpoints("toy", "log")][:9]
    ['step0', 'step1', 'step2', 'step4', 'step8', 'step16', 'step32', 'step64', 'step450']
    >>> c = checkpoints("pythia-70m", "step0,step1000,main")[1]
    >>> c.model, c.revision, c.step, c.tokens_seen
    ('pythia-70m', 'step1000', 1000, 2097152000)

A revision spec is "all" (every saved checkpoint: 154 for Pythia), "log" (about one per
doubling: step0, 1, 2, 4, ..., 512, then 1000, 2000, ..., 128000 and the final 143000 for Pythia),
or explicit revisions as a list or a comma-separated string (`step512`, `512` and `main` all work).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from interp import suite, toy
from interp.errors import InputError, UnknownModelError

PYTHIA_TOKENS_PER_STEP = 1024 * 2048  # batch 1024 sequences x 2048 tokens = 2,097,152
SPECS = ("all", "log")
_STEP = re.compile(r"(?:step)?(\d+)")


@dataclass(frozen=True)
class Checkpoint:
    """One (model, revision) of a sweep: `label` as asked ("main"), `revision` as saved ("step3600")."""

    model: str
    label: str
    revision: str
    step: int
    tokens_seen: int


def model_name(name: str) -> str:
    """Canonical name of a sweepable model: "toy" -> "toy-2l", "EleutherAI/pythia-70m" -> "pythia-70m".

    >>> model_name("toy"), model_name("EleutherAI/pythia-160m-deduped")
    ('toy-2l', 'pythia-160m-deduped')
    """
    toy_name = toy.resolve(name)
    if toy_name is not None:
        return toy_name
    try:
        return suite.resolve(name).hf_id.split("/", 1)[1]
    except UnknownModelError:
        known = [n.split("/", 1)[1] for n in suite.all_names()] + [*toy.ALIASES, *toy.NAMES]
        close = difflib.get_close_matches(str(name).lower(), known, n=4, cutoff=0.5)
        raise UnknownModelError(
            f"{name!r} is not a model a sweep can run over: sweeps take Pythia names (pythia-70m, ..., "
            f"pythia-12b, each also -deduped) and toy names ({', '.join((*toy.ALIASES, *toy.NAMES))}); "
            f"closest: {', '.join(close) or 'none'}."
        ) from None


def model_names(models: str | Sequence[str]) -> list[str]:
    """Canonical names of one or more models (a list, or a comma-separated string), duplicates dropped.

    >>> model_names("toy-2l,toy-4l")
    ['toy-2l', 'toy-4l']
    """
    items = [models] if isinstance(models, str) else list(models)
    names = [model_name(m.strip()) for item in items for m in str(item).split(",") if m.strip()]
    if not names:
        raise InputError(f"models={models!r} names no model; pass e.g. 'toy' or ['pythia-70m', 'pythia-160m'].")
    return list(dict.fromkeys(names))


def checkpoints(model: str, revisions: str | Sequence[str | int] | None = "all") -> list[Checkpoint]:
    """The checkpoints of `model` that `revisions` names, in the order given (all/log: training order).

    >>> [(c.label, c.revision, c.tokens_seen) for c in checkpoints("toy-4l", "step2,main")]
    [('step2', 'step2', 3072), ('main', 'step3600', 8601600)]
    """
    name = model_name(model)
    saved = suite.revisions(name)
    labels = _labels(revisions, saved, name)
    return [_checkpoint(name, label, saved) for label in labels]


def log_spaced(saved: Sequence[str]) -> list[str]:
    """step0, the power-of-two steps, the first other step times powers of two, and the final step.

    >>> log_spaced([f"step{s}" for s in suite.pythia_steps()])[-6:]
    ['step8000', 'step16000', 'step32000', 'step64000', 'step128000', 'step143000']
    """
    steps = [int(r[4:]) for r in saved]
    base = next((s for s in steps if s & (s - 1)), None)  # first step of the evenly spaced part

    def kept(step: int) -> bool:
        if step == 0 or not step & (step - 1):
            return True
        ratio = step / base
        return ratio == int(ratio) and not int(ratio) & (int(ratio) - 1)

    chosen = [r for r, s in zip(saved, steps, strict=True) if kept(s)]
    return chosen if chosen[-1] == saved[-1] else [*chosen, saved[-1]]


def step_of(revision: str, name: str) -> int:
    """Training step of a revision; `main` is the model's last checkpoint.

    >>> step_of("step450", "toy"), step_of("main", "toy")
    (450, 3600)
    """
    if revision == "main":
        revision = suite.revisions(name)[-1]
    match = re.fullmatch(r"step(\d+)", str(revision))
    if not match:
        raise InputError(f"Revision {revision!r} is not 'main' or 'step<N>'.")
    return int(match.group(1))


def tokens_seen(model: str, step: int) -> int:
    """Training tokens read before checkpoint `step`: Pythia 2,097,152 per step; the toy suite per phase.

    >>> tokens_seen("pythia-1b", 143000), tokens_seen("toy-2l", 2401)
    (299892736000, 3690496)
    """
    name = model_name(model)
    if toy.resolve(name) is None:
        return step * PYTHIA_TOKENS_PER_STEP
    batch, phases = _toy_phases(name)
    total = 0
    for first, last, seq_len in phases:
        total += max(0, min(step, last) - first + 1) * batch * seq_len
    return total


@lru_cache(maxsize=8)
def _toy_phases(name: str) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """Batch size and (first step, last step, row length) of each phase, from the model's training.json."""
    record = json.loads((toy.model_dir(name) / "training.json").read_text())
    phases = tuple((p["steps"][0], p["steps"][1], p["seq_len"]) for p in record["phases"])
    return record["spec"]["batch_size"], phases


def _labels(revisions: str | Sequence[str | int] | None, saved: list[str], name: str) -> list[str]:
    """Expand a revision spec into revision names, each checked against the saved ones."""
    if revisions is None or revisions == "all":
        return list(saved)
    if revisions == "log":
        return log_spaced(saved)
    items = revisions.split(",") if isinstance(revisions, str) else list(revisions)
    labels = [_normalise(item) for item in items if str(item).strip()]
    if not labels:
        raise InputError(
            f"revisions={revisions!r} names no checkpoint; use 'all', 'log' or e.g. 'step0,step512,main'."
        )
    for label in labels:
        suite.check_revision(name, label)
    return list(dict.fromkeys(labels))


def _normalise(item: str | int) -> str:
    """`512` -> "step512"; "main" and "step512" pass; anything else is returned for check_revision to name."""
    text = str(item).strip()
    if text == "main":
        return text
    match = _STEP.fullmatch(text)
    return f"step{int(match.group(1))}" if match else text


def _checkpoint(name: str, label: str, saved: list[str]) -> Checkpoint:
    revision = saved[-1] if label == "main" else label
    step = step_of(revision, name)
    return Checkpoint(name, label, revision, step, tokens_seen(name, step))
