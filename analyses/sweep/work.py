"""One unit of sweep work: load a checkpoint, run the analysis, write its rows to the store.

    >>> import tempfile
    >>> from analyses.sweep.registry import analysis
    >>> from analyses.sweep.revisions import checkpoints
    >>> spec = analysis("attention")
    >>> job = Job(checkpoints("toy-4l", "step0")[0], spec, spec.bind({}), tempfile.mkdtemp())
    >>> timing = run(job)
    >>> job.store.get(job.key, "toy-4l", "step0")[["model", "revision", "layer", "head"]].shape
    (8, 4)

Both executors run exactly this. A Ray task calls `run`. The local executor splits loading from
`analyse`: `find` (in the main thread) checks whether the next checkpoint fits the live model
(`analyses.sweep.reuse`); `prepare` (in its loading thread, while the current checkpoint is
analysed) reads its weights, or loads it whole when it does not fit; `take` (in the main thread)
copies the weights read into the live model.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd

import interp
from analyses.sweep import reuse
from analyses.sweep.integrity import weights_sha256
from analyses.sweep.registry import Analysis
from analyses.sweep.revisions import Checkpoint
from analyses.sweep.store import KEY_COLUMNS, Key, ResultStore
from interp import files, toy
from interp.errors import InputError, InterpError
from interp.loading import checkpoint_files


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one (model, revision): picklable, no model inside."""

    checkpoint: Checkpoint
    analysis: Analysis
    params: dict
    store_root: str
    dtype: str = "float32"
    device: str | None = None

    @functools.cached_property
    def key(self) -> Key:
        return self.analysis.key(self.params, self.dtype)

    @functools.cached_property
    def store(self) -> ResultStore:
        return ResultStore(self.store_root)


@dataclass
class Loaded:
    """A loaded checkpoint, its weights' fingerprint, how long loading took, and what it can take in next."""

    model: interp.Model
    weights_sha256: str
    seconds: float
    template: reuse.Template | None = None  # set when later checkpoints may be swapped into this model
    target: tuple[str, str, str | None] = ("", "float32", None)  # the (model, dtype, device) it was loaded for
    swapped: bool = False  # whether this checkpoint was swapped into a live model


@dataclass
class Lookup:
    """Whether a checkpoint may go into the live model: its files when they fit it (None: load it whole)."""

    found: reuse.Found | None
    seconds: float


@dataclass
class Read:
    """A later checkpoint of the live model, its weights read (`reuse.fetch`), waiting to be copied in."""

    fetched: reuse.Fetched
    seconds: float


def load(job: Job, reusable: bool = False) -> Loaded:
    """Load the job's checkpoint (quietly) and fingerprint its weights; with `reusable`, note its template."""
    start = time.perf_counter()
    ckpt = job.checkpoint
    with quiet_loading():
        model = interp.load(ckpt.model, revision=ckpt.revision, dtype=job.dtype, device=job.device)
    sha = weights_sha256(ckpt.model, ckpt.revision, model.hf)
    template = reuse.Template.of(model) if reusable else None
    return Loaded(model, sha, time.perf_counter() - start, template, _target(job))


def swappable(live: Loaded | None, job: Job | None) -> bool:
    """Whether `job` is a later checkpoint of the live model's name (so probably swapped in, not loaded whole)."""
    return live is not None and job is not None and live.template is not None and live.target == _target(job)


def find(job: Job, live: Loaded | None) -> Lookup:
    """The job's files if its checkpoint may go into the live model (`reuse.find`: no weights read)."""
    start = time.perf_counter()
    ckpt = job.checkpoint
    found = reuse.find(ckpt.model, ckpt.revision, live.template) if swappable(live, job) else None
    return Lookup(found, time.perf_counter() - start)


def prepare(job: Job, lookup: Lookup, ahead: Job | None = None) -> Loaded | Read:
    """The loading thread's part: read the found weights (`reuse.fetch`), or load the job's checkpoint whole when
    none were found; then have the OS read the `ahead` job's weight files into its page cache."""
    start = time.perf_counter()
    if lookup.found is None:
        prepared = load(job, reusable=True)
        prepared.seconds += lookup.seconds
    else:
        prepared = Read(reuse.fetch(lookup.found), lookup.seconds + time.perf_counter() - start)
    if ahead is not None:
        read_ahead(ahead)
    return prepared


def read_ahead(job: Job) -> None:
    """Have the OS read a hub checkpoint's weight files (those in the local cache) into its page cache, in the
    background: the next `prepare` then maps pages that are there. (The toy suite's are small.)"""
    if toy.resolve(job.checkpoint.model) is not None:
        return
    with contextlib.suppress(InterpError, OSError):
        for path in checkpoint_files(job.checkpoint.model, job.checkpoint.revision).weights:
            files.read_ahead(path)


def take(job: Job, prepared: Loaded | Read, live: Loaded | None) -> Loaded:
    """The checkpoint to analyse: a whole model as loaded, or the live model with the read tensors copied in
    (loaded whole after all if they do not fit it)."""
    if isinstance(prepared, Loaded):
        return prepared
    start = time.perf_counter()
    staged = reuse.fit(prepared.fetched, live.template)
    if staged is None:
        return load(job, reusable=True)
    ckpt = job.checkpoint
    sha = weights_sha256(ckpt.model, ckpt.revision, known=staged.digests)
    model = reuse.swap_(live.model, staged)
    seconds = prepared.seconds + time.perf_counter() - start
    return Loaded(model, sha, seconds, live.template, live.target, swapped=True)


def analyse(job: Job, loaded: Loaded, written: dict | None = None) -> dict:
    """Run the analysis on a loaded checkpoint and write its rows; return the timings. With `written`, keep the
    Arrow table written there under (model, revision)."""
    start = time.perf_counter()
    frame = job.analysis.run(loaded.model, **job.params)
    analysed = time.perf_counter()
    ckpt = job.checkpoint
    store = job.store
    table = store.table(job.key, ckpt.model, ckpt.revision, _with_key_columns(frame, job, loaded.weights_sha256))
    store.write(job.key, ckpt.model, ckpt.revision, table)
    if written is not None:
        written[(ckpt.model, ckpt.revision)] = table
    return {"model": ckpt.model, "revision": ckpt.revision, "load_s": loaded.seconds, "swapped": loaded.swapped,
            "analysis_s": analysed - start, "write_s": time.perf_counter() - analysed}


def run(job: Job) -> dict:
    """Load, analyse, write: one Ray task."""
    loaded = load(job)
    return analyse(job, loaded)


def _target(job: Job) -> tuple[str, str, str | None]:
    return job.checkpoint.model, job.dtype, job.device


def _with_key_columns(frame: pd.DataFrame, job: Job, sha: str) -> pd.DataFrame:
    """The analysis's rows with the store key's columns around them."""
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"analysis {job.analysis.name!r} returned {type(frame).__name__}, not a DataFrame.")
    clash = sorted(set(frame.columns) & set(KEY_COLUMNS))
    if clash:
        raise InputError(f"analysis {job.analysis.name!r} returned columns {clash}, which the sweep adds itself; "
                         "rename them.")
    ckpt = job.checkpoint
    front = pd.DataFrame({"model": ckpt.model, "revision": ckpt.revision, "step": ckpt.step,
                          "tokens_seen": ckpt.tokens_seen}, index=frame.index)
    back = pd.DataFrame({"weights_sha256": sha, "analysis": job.analysis.name, "key": job.key.digest},
                        index=frame.index)
    return pd.concat([front, frame, back], axis=1)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' and the hub's per-checkpoint progress bars, restoring them afterwards."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    bars_on = hf_logging.is_progress_bar_enabled()
    hub_on = not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
        if hub_on:
            hub_utils.enable_progress_bars()
