"""The explorer's memory: loaded models in an LRU within a byte budget, results in an LRU by count.

    >>> from analyses.app.cache import LRU, ModelPool
    >>> results = LRU(max_items=2)
    >>> results.get(("toy-2l", "step0", "Hi", "lens"), lambda: 41 + 1)
    42
    >>> pool = ModelPool(lambda key: bytearray(10), budget_bytes=25, size=len)
    >>> _ = pool.get("a"), pool.get("b"), pool.get("c")     # 30 bytes > 25: "a" goes
    >>> pool.keys()
    ['b', 'c']
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


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

    @property
    def used_bytes(self) -> int:
        """Bytes held by the loaded models."""
        return sum(size for _, size in self._models.values())

    def keys(self) -> list[Hashable]:
        """Keys of the loaded models, least recently used first."""
        return list(self._models)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._models
