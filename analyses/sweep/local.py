"""The local executor: checkpoints one after another, the next one loading while this one is analysed.

    >>> import tempfile
    >>> from analyses.sweep.registry import analysis
    >>> from analyses.sweep.revisions import checkpoints
    >>> from analyses.sweep.work import Job
    >>> spec, root = analysis("attention"), tempfile.mkdtemp()
    >>> jobs = [Job(c, spec, spec.bind({}), root) for c in checkpoints("toy-4l", "step0,step1")]
    >>> [t["revision"] for t in run_local(jobs)]
    ['step0', 'step1']

Memory holds at most two models: the one being analysed and the one loading. Loading reads
files and copies tensors, which release the GIL, so it overlaps the analysis well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from analyses.sweep import work


def run_local(jobs: Sequence[work.Job], prefetch: bool = True,
              on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every job in order; return their timings. `on_done(timing)` is called after each."""
    timings = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-load") as pool:
        pending: Future | None = pool.submit(work.load, jobs[0]) if jobs and prefetch else None
        for i, job in enumerate(jobs):
            loaded = pending.result() if pending is not None else work.load(job)
            pending = pool.submit(work.load, jobs[i + 1]) if prefetch and i + 1 < len(jobs) else None
            try:
                timing = work.analyse(job, loaded)
            except BaseException:
                if pending is not None:
                    pending.cancel()
                raise
            del loaded  # drop this model before the next one is taken
            timings.append(timing)
            if on_done is not None:
                on_done(timing)
    return timings
