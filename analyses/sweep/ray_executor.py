"""The Ray executor: one task per (model, revision), every task writing into the same results store.

    sweep(["pythia-1b"], "attention", "all", store="/shared/store", executor="ray")   # doctest: +SKIP

`ray` is an optional extra (`pip install "pythia-interp[ray]"`), imported only here. The sweep uses
the Ray of this process if it is already initialised, else connects to `address` (or the
`RAY_ADDRESS` environment variable: `ray.init(address=...)`), else starts a local Ray for the
duration of the sweep.

On a cluster every node needs pythia-interp installed, the checkpoints reachable (the hub, or a
shared HF_HOME) and the store on a filesystem all nodes share (NFS, Lustre, a mounted bucket).
A task whose worker dies is retried `max_retries` times; a task that still fails leaves no
result, and rerunning the same sweep computes only the checkpoints still missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from analyses.sweep import work
from interp.errors import InterpError


class SweepIncompleteError(InterpError, RuntimeError):
    """Some checkpoints failed; the finished ones are in the store and a rerun computes only the rest."""


def run_ray(jobs: Sequence[work.Job], address: str | None = None, max_retries: int = 2, num_cpus: float = 1,
            num_gpus: float = 0, on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every job as a Ray task; return the timings of those that finished (raise if any failed)."""
    ray = import_ray()
    started = _connect(ray, address)
    try:
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)(_task)
        pending = {task.remote(job): job for job in jobs}
        timings, failures = [], []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                timing = ray.get(done[0])
            except ray.exceptions.RayError as err:
                failures.append((job, err))
                continue
            timings.append(timing)
            if on_done is not None:
                on_done(timing)
    finally:
        if started:
            ray.shutdown()
    if failures:
        raise SweepIncompleteError(_failure_message(failures, len(jobs), jobs[0].store_root))
    return timings


def import_ray():
    """The `ray` module, or an error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InterpError("executor='ray' needs Ray: `pip install 'ray>=2.9'` (or pythia-interp[ray]), "
                          "or use executor='local'.") from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """Initialise Ray unless it already is; return whether this call started it (and so must stop it)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise InterpError(f"No Ray cluster at {address!r} ({type(err).__name__}: {str(err)[:200]}). Start one with "
                          "`ray start --head`, fix --ray-address / RAY_ADDRESS, or leave both unset for a local "
                          "Ray.") from None
    return True


def _task(job: work.Job) -> dict:
    """One checkpoint on a Ray worker."""
    with work.quiet_loading():
        return work.run(job)


def _failure_message(failures: list, total: int, store: str) -> str:
    first_job, first_err = failures[0]
    reason = str(first_err).strip().splitlines()[0] if str(first_err).strip() else type(first_err).__name__
    names = ", ".join(f"{j.checkpoint.model} {j.checkpoint.revision}" for j, _ in failures[:5])
    more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
    return (f"{len(failures)} of {total} checkpoints failed ({names}{more}; first: {type(first_err).__name__}: "
            f"{reason[:200]}). The others are in the store {store}; rerun the same sweep to compute only the "
            "missing ones.")
