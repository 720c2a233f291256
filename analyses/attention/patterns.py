"""Attention patterns from the cache, with their figures.

    >>> import interp
    >>> pats = patterns(interp.load("toy"), "The cat sat on the mat. The cat")
    >>> fig = pats.figure(layer=1, head=2)      # one head; pats.figure() is every head with a slider

Patterns are read from `run_with_cache` (the model's own softmax), never recomputed here. Head
detectors score them: `analyses.attention.detectors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

import interp
from interp.cache import ActivationCache, Provenance
from interp.errors import InputError

__all__ = ["AttentionPatterns", "patterns"]
LongMode = Literal["pool", "crop"]


@dataclass(frozen=True)
class AttentionPatterns:
    """Attention patterns of some layers for a batch of prompts, with tokens and provenance."""

    pattern: Float[Tensor, "layer batch head q_pos k_pos"]
    layers: tuple[int, ...]  # model layer of each entry on the first axis
    str_tokens: list[list[str]]  # readable tokens of each row, real (unpadded) positions only
    provenance: Provenance

    @classmethod
    def from_cache(cls, cache: ActivationCache, str_tokens: list[list[str]] | None = None) -> AttentionPatterns:
        """Collect the `hook_pattern` sites a cache holds (any subset of layers), on the CPU.

        >>> model = interp.load("toy")
        >>> _, cache = model.run_with_cache("Hi there", names=lambda n: n.endswith("hook_pattern"))
        >>> AttentionPatterns.from_cache(cache).str_tokens      # ids when no tokens are given
        [['#41', '#74', '#875']]
        """
        layers = tuple(L for L in range(cache.n_layers) if f"blocks.{L}.attn.hook_pattern" in cache)
        if not layers:
            raise InputError(
                "The cache holds no attention patterns. Cache them with "
                "run_with_cache(x, names=lambda n: n.endswith('hook_pattern')), or call "
                "patterns(model, x)."
            )
        pattern = torch.stack([cache["pattern", L].cpu() for L in layers])  # (layer, batch, ...)
        prov = cache.provenance
        if str_tokens is None:
            str_tokens = [
                [f"#{i}" for i, m in zip(row, mask, strict=True) if m]
                for row, mask in zip(prov.tokens, prov.attention_mask, strict=True)
            ]
        return cls(pattern, layers, str_tokens, prov)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return self.pattern.shape[2]

    def row(self, batch: int = 0) -> tuple[Float[Tensor, "layer head q_pos k_pos"], list[int]]:
        """One prompt's patterns over its real tokens, and its token ids."""
        if not -len(self.str_tokens) <= batch < len(self.str_tokens):
            raise InputError(
                f"batch={batch} is out of range: these patterns hold {len(self.str_tokens)} "
                f"prompt(s); pass 0..{len(self.str_tokens) - 1}."
            )
        mask, ids = self.provenance.attention_mask[batch], self.provenance.tokens[batch]
        n = sum(mask)
        return self.pattern[:, batch, :, -n:, -n:], ids[-n:]

    def layer_index(self, layer: int) -> int:
        """Position on the first axis of a model layer (negative counts from the last held)."""
        layers = self.layers
        if layer < 0 and -len(layers) <= layer:
            return len(layers) + layer
        if layer not in layers:
            raise InputError(
                f"layer={layer} is not among the layers held here: {list(layers)}. "
                "Call patterns(model, x, layers=None) to hold them all."
            )
        return layers.index(layer)

    def to_frame(self, batch: int | None = 0):
        """Long table: layer, head, batch, q_pos, k_pos, q_token, k_token, weight (k_pos <= q_pos).

        Tokens are pandas categoricals; a 2048-token prompt gives about 2M rows per head.

        >>> frame = patterns(interp.load("toy"), "a = b").to_frame()
        >>> frame.query("layer == 1 and head == 0 and q_pos == 2")[["k_token", "weight"]].shape
        (3, 2)
        """
        import pandas as pd

        rows = range(len(self.str_tokens)) if batch is None else [batch]
        return pd.concat([self._row_frame(b) for b in rows], ignore_index=True)

    def _row_frame(self, batch: int):
        import pandas as pd

        pat, _ = self.row(batch)
        n_layers, n_heads, n = pat.shape[:3]
        q, k = np.tril_indices(n)  # causal cells, k <= q
        weights = pat[:, :, q, k].float().numpy()  # (layer, head, cell)
        vocab, codes = np.unique(np.array(self.str_tokens[batch], dtype=object), return_inverse=True)
        heads, cells = n_layers * n_heads, len(q)

        def tokens_at(pos: np.ndarray):  # categorical: one copy of each token string
            return pd.Categorical.from_codes(np.tile(codes[pos], heads), categories=vocab)

        return pd.DataFrame(
            {
                "layer": np.repeat(np.array(self.layers, dtype=np.int16), n_heads * cells),
                "head": np.tile(np.repeat(np.arange(n_heads, dtype=np.int16), cells), n_layers),
                "batch": np.full(heads * cells, batch, dtype=np.int16),
                "q_pos": np.tile(q.astype(np.int32), heads),
                "k_pos": np.tile(k.astype(np.int32), heads),
                "q_token": tokens_at(q),
                "k_token": tokens_at(k),
                "weight": weights.reshape(-1),
            }
        )

    def figure(
        self,
        layer: int | None = None,
        head: int | None = None,
        *,
        batch: int = 0,
        max_pos: int | None = None,
        long: LongMode = "pool",
        slider: bool = True,
    ):
        """One head (layer and head), one layer's heads (layer), or all heads with a layer slider.

        >>> pats = patterns(interp.load("toy"), "The cat sat. The cat")
        >>> one = pats.figure(1, 2)                 # one heatmap, tokens on both axes
        >>> grid = pats.figure(slider=False)        # static grid, a row per layer (for a paper)
        >>> len(one.data), len(grid.data)
        (1, 6)

        Prompts longer than `max_pos` positions are max-pooled (`long="pool"`) or cropped to the
        last `max_pos` positions (`long="crop"`); the figure's title says which.
        """
        from analyses.attention import figures as af

        pat, _ = self.row(batch)
        tokens, title = self.str_tokens[batch], self._title()
        if head is not None and layer is None:
            raise InputError(f"head={head} needs a layer too: figure(layer=..., head={head}).")
        if layer is not None:
            i = self.layer_index(layer)
            if head is not None:
                _check_head(head, self.n_heads)
                return af.head_heatmap(
                    pat[i, head],
                    tokens,
                    title,
                    name=f"L{self.layers[i]}H{head}",
                    max_pos=max_pos,
                    long=long,
                )
            return af.heads_grid(pat[i : i + 1], tokens, self.layers[i : i + 1], title, max_pos=max_pos, long=long)
        return af.heads_grid(pat, tokens, self.layers, title, max_pos=max_pos, long=long, slider=slider)

    def token_figure(
        self,
        query: int = -1,
        *,
        batch: int = 0,
        max_pos: int | None = None,
        long: LongMode = "pool",
    ):
        """How much each earlier token receives from one query token, per head (a row per head).

        >>> fig = patterns(interp.load("toy"), "The cat sat. The cat").token_figure(query=-1)
        >>> fig.data[0].z.shape                     # (layer * head, key)
        (6, 9)
        """
        from analyses.attention import figures as af

        pat, _ = self.row(batch)
        n = pat.shape[-1]
        if not -n <= query < n:
            raise InputError(
                f"query={query} is outside this prompt's {n} positions: pass 0..{n - 1}, or -1 for the last."
            )
        return af.token_view(
            pat[:, :, query % n],
            self.str_tokens[batch],
            self.layers,
            query % n,
            self._title(),
            max_pos=max_pos,
            long=long,
        )

    def _title(self) -> str:
        prov = self.provenance
        rev = f"@{prov.revision}" if prov.revision else ""
        return f"{prov.model}{rev}"


def patterns(
    model: interp.Model, x: str | Sequence[str] | interp.Tokens | Tensor, *, layers: Sequence[int] | None = None
) -> AttentionPatterns:
    """Run the model once and keep the attention patterns of `layers` (all by default).

    >>> pats = patterns(interp.load("toy"), ["The cat sat on the mat.", "x = 1"], layers=[1])
    >>> pats.pattern.shape                 # (layer, batch, head, q_pos, k_pos), left-padded
    torch.Size([1, 2, 3, 10, 10])
    """
    layers = _check_layers(layers, model.n_layers)
    names = [f"blocks.{L}.attn.hook_pattern" for L in layers]
    tokens = model.tokens(x)
    with torch.no_grad():  # the model follows the caller's grad mode; patterns need no graph
        _, cache = model.run_with_cache(tokens, names=names, device="cpu")
    return AttentionPatterns.from_cache(cache, _str_tokens(model, tokens))


def _check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    bad = [L for L in layers if not -n_layers <= L < n_layers]
    if bad:
        raise InputError(f"layers={list(layers)}: {bad} outside 0..{n_layers - 1}. Pass None for all layers.")
    return sorted({L % n_layers for L in layers})


def _check_head(head: int, n_heads: int) -> None:
    if not 0 <= head < n_heads:
        raise InputError(f"head={head} is outside 0..{n_heads - 1} ({n_heads} heads per layer).")


def _str_tokens(model: interp.Model, tokens: interp.Tokens) -> list[list[str]]:
    """Readable tokens of each row's real positions; `#id` when the model has no tokenizer."""
    rows = [row[mask.bool()] for row, mask in zip(tokens.ids.cpu(), tokens.attention_mask.cpu(), strict=True)]
    if model.tokenizer is None:
        return [[f"#{i}" for i in row.tolist()] for row in rows]
    return [model.to_str_tokens(row) for row in rows]
