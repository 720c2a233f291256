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
analysis before it runs. For every later checkpoint of the same model (`analyses.sweep.reuse`),
the work is split by what it holds. Finding its files and checking that they fit the live model
(`find`), making tensors of the bytes read and copying them into the live model (`take`) are
Python bookkeeping that holds the GIL: the main thread does it, since in a loading thread it
would only wait for the GIL and make the analysis wait for it in turn (with a small model, whose
analysis is mostly Python, that costs more than doing the work in line). Reading the weights
(`fetch`: a small file read whole and hashed, a large one mapped and read ahead by the OS) is
I/O and hashing that release the GIL: the loading thread does it while the analysis before runs,
and has the OS read the following checkpoint's files ahead. (The loading thread keeps torch's
settings: `torch.set_num_threads` and thread priorities reach beyond one thread.)
The analysis gets the same `Model` object at every checkpoint of a model, its weights and revision
updated: an analysis must not keep the model past its call. Memory holds the live model and the
next checkpoint's weights (two models only while the next checkpoint is loaded whole).
"""

from __future__ import annotations

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
            ahead.start(following, live, after)  # read (or load) the next checkpoint during this analysis
            try:
                timing = work.analyse(job, live, written)
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
        """Ready `job`: find its files here, read them (or load it whole) in the loading thread, and have the OS
        read `after`'s files ahead."""
        if self.enabled and job is not None and self.pending is None:
            self.pending = self.pool.submit(work.prepare, job, work.find(job, live), after)

    def take(self, job: work.Job, live: work.Loaded | None, following: work.Job | None) -> work.Loaded:
        """The job's checkpoint, readied ahead or now (then reading `following`'s files ahead)."""
        if self.pending is not None:
            prepared = self.pending.result()
        else:
            prepared = work.prepare(job, work.find(job, live), following if self.enabled else None)
        self.pending = None
        return work.take(job, prepared, live)

    def cancel(self) -> None:
        if self.pending is not None:
            self.pending.cancel()


def _at(jobs: Sequence[work.Job], i: int) -> work.Job | None:
    return jobs[i] if i < len(jobs) else None
