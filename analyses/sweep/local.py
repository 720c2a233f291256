"""The local executor: checkpoints one after another, the next one loading while this one is analysed.

    >>> import tempfile
    >>> from analyses.sweep.registry import analysis
    >>> from analyses.sweep.revisions import checkpoints
    >>> from analyses.sweep.work import Job
    >>> spec, root = analysis("attention"), tempfile.mkdtemp()
    >>> jobs = [Job(c, spec, spec.bind({}), root) for c in checkpoints("toy-4l", "step0,step1")]
    >>> [t["revision"] for t in run_local(jobs)]
    ['step0', 'step1']

The sweep's first checkpoint is loaded whole in the main thread (there is nothing to overlap it
with); the first checkpoint of any other model is loaded whole in the loading thread while the
analysis before it runs. For every later checkpoint of the same model, the loading thread only finds its
files, checks that they fit, maps (or, when small, reads) them and has the OS read the next one
ahead, and the main thread copies the tensors into the live model in place
(`analyses.sweep.reuse`). That staging is a few milliseconds of mostly GIL-free work, done while
the previous checkpoint's rows are written: the write runs on one core, whereas the analysis keeps
both busy (torch's threads), so staging then takes almost nothing from it. (The loading thread
keeps torch's settings: `torch.set_num_threads` and thread priorities reach beyond one thread.)
The analysis gets the same `Model` object at every checkpoint of a model, its weights and revision
updated: an analysis must not keep the model past its call. Memory holds the live model and the
next checkpoint's tensors (two models only while the next checkpoint is loaded whole).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from analyses.sweep import work


def run_local(jobs: Sequence[work.Job], prefetch: bool = True, on_done: Callable[[dict], None] | None = None,
              written: dict | None = None) -> list[dict]:
    """Run every job in order; return their timings. `on_done(timing)` is called after each; `written` (a dict)
    receives the Arrow table stored for each (model, revision)."""
    timings: list[dict] = []
    live: work.Loaded | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-load") as pool:
        ahead = _Ahead(pool, prefetch)  # the first checkpoint loads here: there is nothing to overlap it with
        for i, job in enumerate(jobs):
            following, after = _at(jobs, i + 1), _at(jobs, i + 2)
            live = ahead.take(job, live, following)
            if not work.swappable(live, following):
                ahead.start(following, live, after)  # a whole model: load it during the whole analysis
            try:  # a checkpoint to stage: stage it while the rows are written, on the core the analysis left
                timing = work.analyse(job, live, functools.partial(ahead.start, following, live, after), written)
            except BaseException:
                ahead.cancel()
                raise
            timings.append(timing)
            if on_done is not None:
                on_done(timing)
    return timings


class _Ahead:
    """The loading thread and the one checkpoint it readies next (nothing ahead without prefetch)."""

    def __init__(self, pool: ThreadPoolExecutor, enabled: bool):
        self.pool, self.enabled, self.pending = pool, enabled, None

    def start(self, job: work.Job | None, live: work.Loaded | None, after: work.Job | None) -> None:
        """Ready `job` in the loading thread (once), reading `after`'s files ahead."""
        if self.enabled and job is not None and self.pending is None:
            self.pending = self.pool.submit(work.prepare, job, live, after)

    def take(self, job: work.Job, live: work.Loaded | None, following: work.Job | None) -> work.Loaded:
        """The job's checkpoint, readied ahead or now (then reading `following`'s files ahead)."""
        if self.pending is not None:
            prepared = self.pending.result()
        else:
            prepared = work.prepare(job, live, following if self.enabled else None)
        self.pending = None
        return work.take(prepared, live)

    def cancel(self) -> None:
        if self.pending is not None:
            self.pending.cancel()


def _at(jobs: Sequence[work.Job], i: int) -> work.Job | None:
    return jobs[i] if i < len(jobs) else None
