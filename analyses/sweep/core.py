"""Any analysis across training checkpoints and model sizes: one tidy table, resumable from a store.

    >>> result = sweep("toy", "attention", ["step0", "main"])
    >>> result.to_frame()[["model", "revision", "step", "layer", "head", "induction"]].shape
    (12, 6)
    >>> fig = result.figure("induction", by=["layer", "head"])   # a line per head, log step axis

`models` is one name or several (`["toy-2l", "toy-4l"]`, `"pythia-70m,pythia-160m"`); `revisions`
is "all", "log" or a list (see `analyses.sweep.revisions`); `analysis` is a registered name
("attention", "lens", ...: `analyses.sweep.registry`) or any function model -> DataFrame. With
`store=` a directory, every checkpoint's rows are kept there and a rerun reads them instead of
loading the model: an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses.sweep.integrity import flag_duplicates
from analyses.sweep.registry import Analysis
from analyses.sweep.registry import analysis as find_analysis
from analyses.sweep.revisions import Checkpoint, checkpoints, model_names
from analyses.sweep.store import Key, ResultStore
from analyses.sweep.work import Job, quiet_loading
from interp.errors import InputError
from interp.options import dtype_of

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Sweep:
    """One row per checkpoint and analysis row: `model, revision, step, tokens_seen`, the analysis's columns,
    `weights_sha256` and `duplicate_of` (the earlier revision with identical weights, or "")."""

    frame: pd.DataFrame
    analysis: Analysis = field(repr=False)
    key: Key
    models: tuple[str, ...]
    store: Path | None = None
    computed: tuple[tuple[str, str], ...] = ()  # (model, revision) loaded and analysed by this call
    cached: tuple[tuple[str, str], ...] = ()  # read from the store
    timings: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def model(self) -> str:
        """The model name (names joined by ", " for a sweep over sizes)."""
        return ", ".join(self.models)

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def duplicates(self) -> pd.DataFrame:
        """The checkpoints whose weights are byte-identical to an earlier one's.

        >>> len(sweep("toy-4l", "attention", "step0,step1", progress=False).duplicates())
        0
        """
        cols = ["model", "revision", "step", "duplicate_of", "weights_sha256"]
        return self.frame.loc[self.frame["duplicate_of"] != "", cols].drop_duplicates().reset_index(drop=True)

    def figure(self, column: str, by: str | Sequence[str] | None = None, reduce: str = "max", x: str = "step"):
        """`column` against training step (log axis); a line per group of `by`, or `reduce` over rows per step."""
        from analyses.sweep.figures import trajectory

        return trajectory(self.frame, column, by=by, reduce=reduce, x=x, title=f"{column} across training")

    def figures(self) -> list:
        """The analysis's own figures over training (empty when it defines none)."""
        return self.analysis.figures(self) if self.analysis.figures is not None else []


def sweep(models: str | Sequence[str], analysis: str | Callable | Analysis,
          revisions: str | Sequence[str | int] | None = "all", *, params: Mapping[str, object] | None = None,
          store: str | Path | None = None, executor: str = "local", dtype: str | torch.dtype | None = None,
          device: str | None = None, prefetch: bool = True, progress: bool = True, ray_address: str | None = None,
          ray_options: Mapping[str, object] | None = None) -> Sweep:
    """Run `analysis` at every checkpoint of every model; results kept in `store` (a directory) when given.

    >>> result = sweep(["toy-2l", "toy-4l"], "attention", "step0,main", params={"seq_len": 20}, progress=False)
    >>> result.to_frame().groupby("model").size().to_dict()    # checkpoints x layers x heads
    {'toy-2l': 12, 'toy-4l': 16}
    """
    plan = _plan(models, analysis, revisions, params, dtype, executor)
    with contextlib.ExitStack() as stack:
        root = Path(store) if store is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        results = ResultStore(root.expanduser().absolute())  # absolute: Ray workers have their own cwd
        root = results.root
        jobs = {(c.model, c.revision): Job(c, plan.spec, plan.params, str(root), plan.dtype, device)
                for c in plan.checkpoints}
        stored = results.stored(plan.key, list(jobs))
        todo = [job for pair, job in jobs.items() if pair not in stored]
        written: dict = {}  # (model, revision) -> the Arrow table this call stored (local executor)
        with quiet_loading(), _progress(len(jobs), len(jobs) - len(todo), plan.spec.name, progress) as bar:
            timings = _execute(todo, executor, prefetch, ray_address, ray_options or {}, bar, written)
        frame = _assemble(plan.checkpoints, jobs, written)
    computed = tuple((j.checkpoint.model, j.checkpoint.revision) for j in todo)
    cached = tuple(k for k in jobs if k not in set(computed))
    return Sweep(frame, plan.spec, plan.key, tuple(plan.models), root if store is not None else None,
                 computed, cached, pd.DataFrame(timings))


@dataclass(frozen=True)
class _Plan:
    spec: Analysis
    params: dict
    dtype: str
    models: list[str]
    checkpoints: list[Checkpoint]

    @property
    def key(self) -> Key:
        return self.spec.key(self.params, self.dtype)


def _plan(models, analysis, revisions, params, dtype, executor) -> _Plan:
    """Check every argument before anything is loaded."""
    if executor not in EXECUTORS:
        raise InputError(f"executor={executor!r} is not one of {', '.join(EXECUTORS)}.")
    spec = find_analysis(analysis)
    names = model_names(models)
    ckpts = [c for name in names for c in checkpoints(name, revisions)]
    return _Plan(spec, spec.bind(params), dtype_name(dtype), names, ckpts)


def dtype_name(dtype: str | torch.dtype | None) -> str:
    """Canonical dtype name ("float32", "float16", "bfloat16"); None is float32, interp.load's default.

    >>> dtype_name("bf16"), dtype_name(torch.float16), dtype_name(None)
    ('bfloat16', 'float16', 'float32')
    """
    return str(dtype_of(dtype) or torch.float32).removeprefix("torch.")


def _execute(todo: list[Job], executor: str, prefetch: bool, address: str | None, options: Mapping,
             bar, written: dict) -> list[dict]:
    if not todo:
        return []
    if executor == "ray":
        from analyses.sweep.ray_executor import run_ray

        return run_ray(todo, address=address, on_done=lambda _: bar.update(1), **options)
    from analyses.sweep.local import run_local

    return run_local(todo, prefetch=prefetch, on_done=lambda _: bar.update(1), written=written)


def _assemble(ckpts: list[Checkpoint], jobs: dict[tuple[str, str], Job], written: Mapping) -> pd.DataFrame:
    """Every checkpoint's stored rows in plan order, labelled as asked, duplicates flagged (what this call
    wrote itself is not read back where Parquet returns it as it was: `ResultStore.get_all`)."""
    job = jobs[(ckpts[0].model, ckpts[0].revision)]  # every job of a sweep has the same key and store
    pairs = [(c.model, c.revision) for c in ckpts]
    frame, lengths = job.store.get_all(job.key, pairs, written, drop=["analysis", "key"])
    frame["revision"] = np.repeat(np.array([c.label for c in ckpts], dtype=object), lengths)
    return flag_duplicates(frame)


@contextlib.contextmanager
def _progress(total: int, done: int, name: str, enabled: bool):
    """A tqdm bar of checkpoints done (those read from the store count at once), with time left."""
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=done, desc=f"sweep {name}", unit="ckpt", disable=not enabled,
              dynamic_ncols=True) as bar:
        yield bar
