"""The head table: each head labelled positional, content or mixed, previous-token, sink, with its dominant band.

    >>> import interp
    >>> model = interp.load("toy")
    >>> from analyses.rope import sample_tokens
    >>> table = head_table(model, sample_tokens(model, 128))
    >>> row = table.to_frame().set_index("name").loc["L0H1"]
    >>> row.label, bool(row.previous_token), int(row.kernel_argmax_offset)
    ('positional', True, -1)
    >>> fig = table.figure()                   # layer x head map of rotary share, labels on hover

Each label comes from numbers in the same row:

- `label`: `positional` when positional_index >= 0.5 (offset alone explains at least half of the
  within-query score variance the softmax sees), `content` when it is below 0.2, else `mixed`.
  The rotary share says *where* a head's score variance lives (rotary bands or pass-through
  dims); the positional index says whether it is *position*: a head can use a slow band
  (wavelength beyond the context) as a content channel and have a high rotary share with a
  low positional index.
- `previous_token`: mean attention to the token before >= 0.5 (`prev_attention`).
- `sink`: mean attention to the prompt's first token >= 0.5 (`sink_attention`), queries after it.
- `dominant_band`: the band with the largest variance share (`dominant_band_share`, its
  `dominant_wavelength` in tokens); empty for learned positions.

The positional index is biased upward by about (offsets / causal pairs), 1% for 200 tokens:
use prompts of 100 tokens or more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analyses.rope.decomposition import ScoreDecomposition, decompose
from analyses.rope.kernel import PositionalKernel, positional_kernel
from interp.model import Model

LABELS = ("positional", "mixed", "content")


@dataclass(frozen=True)
class Thresholds:
    """Where the labels switch (see the module docstring)."""

    positional: float = 0.5
    content: float = 0.2
    previous_token: float = 0.5
    sink: float = 0.5


@dataclass(frozen=True)
class HeadTable:
    """The decomposition and kernel behind one labelled row per head."""

    decomposition: ScoreDecomposition
    kernel: PositionalKernel
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def labels(self) -> list[list[str]]:
        """`positional` / `mixed` / `content` per (layer, head)."""
        t = self.thresholds
        return [[_label(v, t) for v in row] for row in self.decomposition.positional_index.tolist()]

    def to_frame(self):
        """One row per head: label and flags, then every number behind them."""
        import pandas as pd

        dec, kern, t = self.decomposition, self.kernel, self.thresholds
        rotary = dec.geometry.positional == "rotary"
        bands = dec.part_share[..., 1:]
        dominant = bands.argmax(-1) if rotary and bands.shape[-1] else None
        waves = dec.geometry.wavelengths() if rotary else None
        rows = []
        for i, L in enumerate(dec.layers):
            for h in range(dec.q_mean.shape[1]):
                rows.append({
                    "layer": L, "head": h, "name": f"L{L}H{h}", "label": self.labels[i][h],
                    "previous_token": bool(dec.prev_attention[i, h] >= t.previous_token),
                    "sink": bool(dec.sink_attention[i, h] >= t.sink),
                    "positional_index": dec.positional_index[i, h].item(),
                    "rotary_share": dec.rotary_share[i, h].item() if rotary else float("nan"),
                    "pass_share": dec.pass_share[i, h].item() if rotary else float("nan"),
                    "kernel_argmax_offset": int(kern.argmax[i, h]),
                    "data_argmax_offset": int(kern.data_argmax[i, h]),
                    "prev_attention": dec.prev_attention[i, h].item(),
                    "sink_attention": dec.sink_attention[i, h].item(),
                    **_dominant(dominant, bands, waves, i, h),
                })
        frame = pd.DataFrame(rows)
        frame["dominant_band"] = frame["dominant_band"].astype("Int64")
        return frame

    def figure(self, value: str = "rotary_share"):
        """A layer x head map of `rotary_share` (or `positional_index`), each cell's label on hover."""
        from analyses.rope import figures

        return figures.head_map(self, value)


def head_table(
    model: Model, x=None, *, decomposition: ScoreDecomposition | None = None,
    kernel: PositionalKernel | None = None, thresholds: Thresholds | None = None,
) -> HeadTable:
    """Label every head on `x` (or on a decomposition and kernel already computed).

    >>> import interp
    >>> model = interp.load("toy")
    >>> head_table(model, "x = 1\\ny = 2\\n").to_frame().columns[:4].tolist()
    ['layer', 'head', 'name', 'label']
    """
    dec = decomposition if decomposition is not None else decompose(model, x)
    kern = kernel if kernel is not None else positional_kernel(model, decomposition=dec)
    return HeadTable(dec, kern, thresholds or Thresholds())


def _label(index: float, t: Thresholds) -> str:
    if index >= t.positional:
        return "positional"
    return "content" if index < t.content else "mixed"


def _dominant(dominant, bands, waves, i: int, h: int) -> dict:
    if dominant is None:
        return {"dominant_band": None, "dominant_band_share": float("nan"), "dominant_wavelength": float("nan")}
    b = int(dominant[i, h])
    return {"dominant_band": b, "dominant_band_share": bands[i, h, b].item(),
            "dominant_wavelength": float(waves[b])}


def positional_heads(table: HeadTable) -> list[tuple[int, int]]:
    """(layer, head) of every head labelled positional."""
    frame = table.to_frame()
    return [tuple(r) for r in frame.loc[frame["label"] == "positional", ["layer", "head"]].itertuples(index=False)]


def strongest(values: torch.Tensor, layers: tuple[int, ...], k: int) -> list[tuple[int, int]]:
    """The k (layer, head) pairs with the largest values."""
    n_heads = values.shape[1]
    order = values.flatten().argsort(descending=True)[:k].tolist()
    return [(layers[i // n_heads], i % n_heads) for i in order]
