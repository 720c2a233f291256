"""The explorer's state: a catalog, the loaded models and every result computed so far.

    >>> from analyses.app.catalog import Catalog
    >>> from analyses.app.explorer import Explorer, Request
    >>> explorer = Explorer(Catalog(hub_cache="/nonexistent"))
    >>> request = Request("toy-2l", "step3600", "The cat sat on the mat. The cat")
    >>> explorer.patterns(request).pattern.shape          # (layer, batch, head, q_pos, k_pos)
    torch.Size([2, 1, 3, 13, 13])
    >>> explorer.patterns(request) is explorer.patterns(request)    # cached
    True

Each result is cached under (model, revision, prompt, view, options). Bad input raises an
`interp.InterpError` whose message the page shows; nothing here ever stops the server.
`prefetch` computes what is likely to be asked next (the slider's neighbours) in the background,
only for checkpoints that fit in the memory budget beside the models already loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from analyses.app import compute
from analyses.app.cache import LRU, Background, ModelPool
from analyses.app.catalog import Catalog, Entry
from interp.errors import InputError, InterpError, WeightsNotFoundError

MAX_PROMPT_CHARS = 20_000
DEFAULT_BUDGET = 4 << 30  # bytes of parameters kept loaded
PREFETCH_MAX_BYTES = 64 << 20  # a load holds the model lock; larger models would make a click wait for a guess


@dataclass(frozen=True)
class Request:
    """What one pane shows: a catalog key, a revision and the prompt."""

    model: str
    revision: str
    prompt: str


class Explorer:
    """Models and results behind the page; every method is safe to call from several threads."""

    def __init__(self, catalog: Catalog, budget_bytes: int = DEFAULT_BUDGET, max_results: int = 256):
        self.catalog = catalog
        self.models = ModelPool(self._load, budget_bytes)
        self.results = LRU(max_results)
        self._compute = threading.Lock()  # hooks attach to a shared model: one forward at a time
        self.background = Background()

    # ---- models -------------------------------------------------------------------------

    def entry(self, key: str) -> Entry:
        """The catalog entry of a dropdown value (UnknownModelError for anything unknown)."""
        return self.catalog.lookup(key)

    def revision_at(self, key: str, index) -> str:
        """The revision at a slider position (the default revision when `index` is None)."""
        entry = self.entry(key)
        if index is None:
            return self.catalog.default_revision(entry)
        revisions = self.catalog.revisions(entry)
        if not isinstance(index, int) or not 0 <= index < len(revisions):
            raise InputError(f"Checkpoint index {index!r} is outside 0..{len(revisions) - 1} for {key}.")
        return revisions[index]

    def shape(self, key: str, revision: str) -> tuple[int, int]:
        """(n_layers, n_heads) from the checkpoint's config, without loading weights."""
        entry = self.entry(key)
        self._require_on_disk(entry, revision)
        config = self.catalog.config(entry, revision)
        layers = config.get("num_hidden_layers", config.get("n_layer"))
        heads = config.get("num_attention_heads", config.get("n_head"))
        return int(layers), int(heads)

    def model(self, key: str, revision: str):
        """The loaded model (from the LRU, or loaded now if the checkpoint is on disk)."""
        entry = self.entry(key)
        self._require_on_disk(entry, revision)
        return self.models.get((entry.key, revision))

    def check(self, request: Request):
        """Validate a request (model, revision, prompt) and return its model; raises InterpError."""
        prompt = request.prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("The prompt is empty: type some text and press Run.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"The prompt has {len(prompt)} characters; the explorer takes at most {MAX_PROMPT_CHARS}.")
        model = self.model(request.model, request.revision)
        self._cached(request, "tokens", (), lambda: model.tokens(prompt))  # too long for the model raises here
        return model

    def prefetch(self, requests: list[Request], warm: Callable[[Request], Any]) -> None:
        """Run `warm(request)` in the background for each request whose checkpoint is on disk and fits
        in the budget (sized like a loaded checkpoint of the same model); a later call replaces it."""
        self.background.submit([lambda r=r: self._warm(r, warm) for r in requests])

    def _warm(self, request: Request, warm: Callable[[Request], Any]) -> None:
        entry = self.entry(request.model)
        if self.catalog.missing(entry, request.revision):
            return
        if (entry.key, request.revision) not in self.models:
            size = self.models.size_of(lambda key: key[0] == entry.key)
            if size is None or size > PREFETCH_MAX_BYTES or not self.models.fits(size):
                return
        warm(request)

    def _require_on_disk(self, entry: Entry, revision: str) -> None:
        missing = self.catalog.missing(entry, revision)
        if missing:
            raise WeightsNotFoundError(missing)

    def _load(self, key: tuple[str, str]):
        entry_key, revision = key
        with self._compute:
            return self.catalog.load(self.entry(entry_key), revision)

    # ---- results ------------------------------------------------------------------------

    def patterns(self, request: Request):
        """Attention patterns of every layer for the prompt (AttentionPatterns)."""
        model = self.check(request)
        return self._cached(request, "patterns", (), lambda: compute.attention().patterns(model, request.prompt))

    def scores(self, request: Request, on: str = "random"):
        """Head detector scores (HeadScores) on repeated random tokens or on the prompt."""
        if on == "prompt":
            pats = self.patterns(request)
            return self._cached(request, "scores", ("prompt",), lambda: compute.attention().head_scores(pats))
        if on != "random":
            raise InputError(f"Scores on {on!r}: choose 'random' (repeated random tokens) or 'prompt'.")
        model = self.model(request.model, request.revision)
        seq_len = min(50, n_ctx(model) // 2)
        key = Request(request.model, request.revision, "")  # independent of the prompt
        return self._cached(key, "scores", ("random", seq_len),
                            lambda: compute.attention().detect_heads(model, seq_len=seq_len))

    def lens(self, request: Request, target: str | None = None):
        """The logit lens of the prompt (LensResult), with an optional target token."""
        model = self.check(request)
        target = target or None
        return self._cached(request, "lens", (target,),
                            lambda: compute.lens().logit_lens(model, request.prompt, target=target))

    def optional(self, view: str, request: Request):
        """The result of an optional view (compute.EXTRAS), cached like the others."""
        extra, module = compute.EXTRAS[view], compute.optional(view)
        if module is None:
            raise InterpError(f"The {extra.label} analysis is not installed in this version.")
        model = self.check(request)
        key = request if extra.uses_prompt else Request(request.model, request.revision, "")
        return self._cached(key, view, (), lambda: extra.run(module, model, request.prompt))

    def memo(self, request: Request, view: str, options: tuple, build):
        """A cached value that needs no model lock (a figure built from cached results)."""
        return self.results.get((request.model, request.revision, request.prompt, view, options), build)

    def _cached(self, request: Request, view: str, options: tuple, work):
        key = (request.model, request.revision, request.prompt, view, options)

        def locked():
            with self._compute:
                return work()

        return self.results.get(key, locked)


def n_ctx(model) -> int:
    """The model's context length."""
    return int(model.n_ctx)
