"""The explorer's memory: loaded models in an LRU within a byte budget, results in an LRU by count,
and a background worker that computes what is likely to be asked next.

    >>> from analyses.app.cache import LRU, ModelPool
    >>> results = LRU(max_items=2)
    >>> results.get(("toy-2l", "step0", "Hi", "lens"), lambda: 41 + 1)
    42
    >>> pool = ModelPool(lambda key: bytearray(10), budget_bytes=25, size=len)
    >>> _ = pool.get("a"), pool.get("b"), pool.get("c")     # 30 bytes > 25: "a" goes
    >>> pool.keys()
    ['b', 'c']
    >>> pool.fits(5), pool.fits(6)                            # room for 5 more bytes, not 6
    (True, False)
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("analyses.app")


def parameter_bytes(model) -> int:
    """Bytes held by a model's parameters and buffers."""
    tensors = [*model.hf.parameters(), *model.hf.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class LRU:
    """A thread-safe least-recently-used map that computes missing values once."""

    def __init__(self, max_items: int = 256):
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value of `key`, computing and storing it on a miss (errors are not cached)."""
        with self._lock:
            if key in self._items:
                self.hits += 1
                self._items.move_to_end(key)
                return self._items[key]
            self.misses += 1
        value = compute()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()


class ModelPool:
    """Loaded models, least recently used evicted first once their bytes exceed the budget.

    The model just asked for always stays, even alone above the budget.
    """

    def __init__(self, load: Callable[[Hashable], Any], budget_bytes: int,
                 size: Callable[[Any], int] = parameter_bytes):
        self.load, self.budget_bytes, self.size = load, budget_bytes, size
        self._models: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.RLock()  # one load at a time: two threads never load the same model twice

    def get(self, key: Hashable) -> Any:
        """The model for `key`, loaded on first use."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key][0]
            model = self.load(key)
            self._models[key] = (model, self.size(model))
            self._evict(keep=key)
            return model

    def _evict(self, keep: Hashable) -> None:
        while self.used_bytes > self.budget_bytes and len(self._models) > 1:
            oldest = next(k for k in self._models if k != keep)
            del self._models[oldest]

    def fits(self, nbytes: int) -> bool:
        """Whether `nbytes` more would stay within the budget, evicting nothing."""
        return self.used_bytes + nbytes <= self.budget_bytes

    def size_of(self, match: Callable[[Hashable], bool]) -> int | None:
        """Bytes of a loaded model whose key matches (another checkpoint of the same model), or None."""
        with self._lock:
            return next((size for key, (_, size) in self._models.items() if match(key)), None)

    @property
    def used_bytes(self) -> int:
        """Bytes held by the loaded models."""
        return sum(size for _, size in self._models.values())

    def keys(self) -> list[Hashable]:
        """Keys of the loaded models, least recently used first."""
        return list(self._models)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._models


class Background:
    """One worker thread for the latest batch of tasks: it starts after `delay` seconds, and a new batch
    replaces what is left of the previous one (the page moved on).

    >>> done = []
    >>> worker = Background(delay=0)
    >>> worker.submit([lambda: done.append(1), lambda: done.append(2)])
    >>> worker.wait()
    >>> done
    [1, 2]
    """

    def __init__(self, delay: float = 0.3):
        self.delay = delay
        self._tasks: list[Callable[[], Any]] = []
        self._due = 0.0
        self._busy = self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, tasks: list[Callable[[], Any]]) -> None:
        """Run `tasks` in order, `delay` seconds from now, instead of any still waiting."""
        with self._cond:
            if self._closed:
                return
            self._tasks, self._due = list(tasks), time.monotonic() + self.delay
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="explorer-prefetch", daemon=True)
                self._thread.start()
                # before the interpreter's thread pools shut down (torch and transformers load with them)
                getattr(threading, "_register_atexit", atexit.register)(self.close)
            self._cond.notify_all()

    def wait(self, timeout: float = 60.0) -> None:
        """Block until every submitted task has run (for tests and benchmarks)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._tasks and not self._busy, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Drop the waiting tasks and let the running one finish (at exit: no thread dies inside torch)."""
        with self._cond:
            self._tasks, self._closed = [], True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._tasks or self._closed)
                if self._closed:
                    return
                wait = self._due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                task, self._busy = self._tasks.pop(0), True
            try:
                task()
            except Exception:  # noqa: BLE001 - a guess that failed costs nothing; the page asks again
                log.debug("background task failed", exc_info=True)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
