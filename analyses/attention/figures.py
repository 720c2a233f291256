"""Plotly figures of attention: one head, small multiples, detector scores, one query token.

    >>> uniform = torch.tril(torch.ones(3, 3)) / torch.arange(1, 4)[:, None]   # (q_pos, k_pos)
    >>> fig = head_heatmap(uniform, ["The", " cat", " sat"], "toy", name="L1H2")   # or AttentionPatterns.figure
    >>> fig.layout.xaxis.ticktext
    ('The', '·cat', '·sat')

Axes are token positions (so repeated tokens stay apart) labelled with visible tokens ('·the',
'↵'). Long prompts are max-pooled or cropped to at most `max_pos` positions per axis, and the
figure's title says so: a 2048-token prompt stays a file a browser opens at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from interp.errors import InputError
from interp.text import figure_label

MAX_POS = 256  # positions per axis in a one-head figure
GRID_MAX_POS = 128  # per axis in a small multiple (about 200 pixels wide: more would not show)
MAX_CELLS = 2_000_000  # cells across all heads of a small-multiples figure (all travel in the file)
TICKS, TICKS_SMALL = 48, 16  # most labelled ticks per axis: one big heatmap, one small multiple
LABEL_WIDTH = 14  # characters of a token shown in a label
COLORS = "Blues"
HOVER_HEAD = "query %{customdata[0]}<br>key %{customdata[1]}<br>weight %{z:.3f}<extra>%{meta}</extra>"


@dataclass(frozen=True)
class Window:
    """The positions a figure shows: all of them, the last few (crop), or max-pooled blocks."""

    values: Tensor  # the input with its last one or two position axes reduced
    positions: list[int]  # first token position of each shown cell
    labels: list[str]  # tick label of each shown cell
    hover: list[str]  # hover text of each shown cell ("12 ·cat", or "16–23 ·the…" for a block)
    note: str  # what was done to fit, for the title; "" when nothing was


def fit(values: Tensor, tokens: Sequence[str], max_pos: int, long: str = "pool", axes: int = 2) -> Window:
    """Reduce the last `axes` position axes to at most `max_pos` cells: max-pool or crop."""
    if long not in ("pool", "crop"):
        raise InputError(
            f"long={long!r} is not one of 'pool' (max-pool blocks) or 'crop' (keep the last max_pos positions)."
        )
    if max_pos < 2:
        raise InputError(f"max_pos={max_pos} must be at least 2 positions per axis.")
    n, values = values.shape[-1], values.float()
    if n <= max_pos:
        return Window(values, list(range(n)), *_labels(tokens, range(n), 1), "")
    if long == "crop":
        start = n - max_pos
        index = (..., slice(start, None), slice(start, None)) if axes == 2 else (..., slice(start, None))
        note = f"cropped to the last {max_pos} of {n} positions; earlier keys not shown"
        return Window(values[index], list(range(start, n)), *_labels(tokens, range(start, n), 1), note)
    block = math.ceil(n / max_pos)
    m = math.ceil(n / block)
    padded = F.pad(values, (0, m * block - n) * axes)
    if axes == 2:  # (..., m, block, m, block) -> (..., m, m)
        pooled = padded.reshape(*padded.shape[:-2], m, block, m, block).amax(dim=(-3, -1))
    else:  # (..., m, block) -> (..., m)
        pooled = padded.reshape(*padded.shape[:-1], m, block).amax(dim=-1)
    starts = range(0, n, block)
    note = f"{n} positions max-pooled in blocks of {block}: each cell shows its block's largest weight"
    return Window(pooled, list(starts), *_labels(tokens, starts, block), note)


def _labels(tokens: Sequence[str], starts: Sequence[int], block: int) -> tuple[list[str], list[str]]:
    """Tick labels and hover texts of cells that start at `starts` and span `block` positions."""
    labels, hover = [], []
    for a in starts:
        b = min(a + block, len(tokens)) - 1
        first = figure_label(tokens[a], LABEL_WIDTH)
        labels.append(first if a == b else f"{first}…")
        hover.append(f"{a} {first}" if a == b else f"{a}–{b} {first}…")
    return labels, hover


def head_heatmap(
    pattern: Float[Tensor, "q_pos k_pos"],
    tokens: Sequence[str],
    title: str,
    *,
    name: str = "",
    max_pos: int | None = None,
    long: str = "pool",
):
    """One head's pattern, queries down and keys across; hover names both tokens and the weight.

    >>> fig = head_heatmap(torch.eye(3), ["a", " b", " a"], "toy-2l", name="L1H2")
    >>> fig.data[0].customdata[2][0].tolist()                # hover: query and key tokens
    ['2 ·a', '0 a']
    """
    import plotly.graph_objects as go

    win = fit(pattern, tokens, max_pos or MAX_POS, long)
    trace = go.Heatmap(
        z=_causal(win.values).numpy(),
        x=win.positions,
        y=win.positions,
        customdata=_pair_hover(win.hover),
        hovertemplate=HOVER_HEAD,
        meta=name,
        colorscale=COLORS,
        zmin=0,
        zmax=1,
        hoverongaps=False,
        colorbar={"title": {"text": "weight"}},
    )
    fig = go.Figure(trace)
    _position_axes(fig, win, TICKS)
    side = min(1000, max(420, 12 * len(win.positions) + 160))
    fig.update_layout(
        title=_title(f"{title} · {name}" if name else title, win.note),
        width=side + 120,
        height=side + 80,
        xaxis_title="key",
        yaxis_title="query",
        plot_bgcolor="white",
    )
    return fig


def heads_grid(
    pattern: Float[Tensor, "layer head q_pos k_pos"],
    tokens: Sequence[str],
    layers: Sequence[int],
    title: str,
    *,
    max_pos: int | None = None,
    long: str = "pool",
    slider: bool = True,
):
    """Every head as a small multiple: one layer at a time with a layer slider, or a row per layer.

    >>> fig = heads_grid(torch.eye(3).expand(2, 3, 3, 3), ["a", "b", "c"], [0, 1], "toy-2l")
    >>> len(fig.data), [step.label for step in fig.layout.sliders[0].steps]   # a layer's 3 heads, a slider
    (3, ['0', '1'])
    """
    from plotly.subplots import make_subplots

    n_layers, n_heads = pattern.shape[:2]
    budget = math.isqrt(MAX_CELLS // (n_layers * n_heads))
    win = fit(pattern, tokens, max_pos or min(GRID_MAX_POS, budget), long)
    z = _causal(win.values).numpy()  # (layer, head, q, k), nan above the diagonal
    one_layer = slider or n_layers == 1
    cols = min(n_heads, 4) if one_layer else n_heads
    rows = math.ceil(n_heads / cols) if one_layer else n_layers
    names = [[f"L{L}H{h}" for h in range(n_heads)] for L in layers]
    titles = [f"H{h}" for h in range(n_heads)] if one_layer else [n for row in names for n in row]
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles,
        horizontal_spacing=0.06 / cols**0.5,
        vertical_spacing=0.16 / rows**0.5,
    )
    custom = _pair_hover(win.hover) if one_layer else None
    for i in range(1 if one_layer else n_layers):
        for h in range(n_heads):
            fig.add_trace(
                _small_heatmap(z[i, h], win, names[i][h], custom),
                row=(h // cols if one_layer else i) + 1,
                col=(h % cols if one_layer else h) + 1,
            )
    _position_axes(fig, win, TICKS_SMALL)
    fig.update_layout(
        title=_title(f"{title} · layer {layers[0]}" if one_layer else title, win.note),
        coloraxis={"colorscale": COLORS, "cmin": 0, "cmax": 1},
        plot_bgcolor="white",
        width=cols * 240 + 160,
        height=rows * 240 + (230 if slider and n_layers > 1 else 150),
    )
    if slider and n_layers > 1:
        fig.update_layout(sliders=[_layer_slider(z, layers, names, title, win.note)])
    return fig


def _small_heatmap(z: np.ndarray, win: Window, name: str, custom: np.ndarray | None):
    import plotly.graph_objects as go

    hover = HOVER_HEAD if custom is not None else "query %{y}<br>key %{x}<br>weight %{z:.3f}<extra>%{meta}</extra>"
    return go.Heatmap(
        z=z,
        x=win.positions,
        y=win.positions,
        customdata=custom,
        hovertemplate=hover,
        meta=name,
        coloraxis="coloraxis",
        hoverongaps=False,
    )


def _layer_slider(z: np.ndarray, layers: Sequence[int], names: list[list[str]], title: str, note: str) -> dict:
    """A slider whose steps swap every head's heatmap (and hover name) for another layer's."""
    n_heads = z.shape[1]
    steps = []
    for i, L in enumerate(layers):
        data = {"z": [_rounded(z[i, h]) for h in range(n_heads)], "meta": names[i]}
        layout = {"title": _title(f"{title} · layer {L}", note)}
        steps.append({"method": "update", "label": str(L), "args": [data, layout, list(range(n_heads))]})
    return {"steps": steps, "currentvalue": {"prefix": "layer "}, "pad": {"t": 50}}


def score_heatmap(
    scores: dict[str, Float[Tensor, "layer head"]],
    layers: Sequence[int],
    subtitle: str,
    error_measure: str = "mul",
):
    """A layer x head heatmap of detector scores; a dropdown picks among several detectors.

    >>> fig = score_heatmap({"induction": torch.rand(2, 3), "prev_token": torch.rand(2, 3)}, [0, 1], "toy-2l")
    >>> [button.label for button in fig.layout.updatemenus[0].buttons]
    ['induction', 'prev_token']
    """
    import plotly.graph_objects as go

    names = list(scores)
    n_layers, n_heads = scores[names[0]].shape
    heads = np.array([[f"L{L}H{h}" for h in range(n_heads)] for L in layers])
    fig = go.Figure(
        go.Heatmap(
            x=list(range(n_heads)),
            y=list(layers),
            customdata=heads,
            colorscale="Viridis",
            texttemplate="%{z:.2f}" if n_layers * n_heads <= 400 else None,
            **_score_style(names[0], scores[names[0]], error_measure),
        )
    )
    fig.update_yaxes(autorange="reversed", title="layer", tickvals=list(layers), type="linear")
    fig.update_xaxes(title="head", tickvals=list(range(n_heads)), type="linear")
    fig.update_layout(
        title=_title(f"{names[0]} score per head", subtitle),
        width=min(1100, max(520, 300 + 45 * n_heads)),
        height=min(1000, 300 + 35 * n_layers),
        margin={"t": 120},
    )
    if len(names) > 1:
        buttons = [_score_button(name, scores[name], subtitle, error_measure) for name in names]
        menu = {"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.02, "yanchor": "bottom"}
        fig.update_layout(updatemenus=[menu])
    return fig


def _score_style(name: str, values: Tensor, error_measure: str) -> dict:
    """z, color range and hover of a detector: shares 0..1, abs scores -1..1, distances >= 0."""
    z = values.double().numpy()
    if name == "mean_distance":
        lo, hi = 0.0, float(max(1.0, np.nanmax(z)))
    else:
        lo, hi = (-1.0, 1.0) if error_measure == "abs" and name != "first_token" else (0.0, 1.0)
    return {
        "z": z,
        "zmin": lo,
        "zmax": hi,
        "colorbar": {"title": {"text": name}},
        "hovertemplate": f"%{{customdata}}<br>{name} %{{z:.3f}}<extra></extra>",
    }


def _score_button(name: str, values: Tensor, subtitle: str, error_measure: str) -> dict:
    style = _score_style(name, values, error_measure)
    data = {
        "z": [_rounded(style["z"], 4)],
        "zmin": [style["zmin"]],
        "zmax": [style["zmax"]],
        "hovertemplate": [style["hovertemplate"]],
        "colorbar.title.text": [name],
    }
    return {
        "label": name,
        "method": "update",
        "args": [data, {"title": _title(f"{name} score per head", subtitle)}],
    }


def token_view(
    pattern: Float[Tensor, "layer head k_pos"],
    tokens: Sequence[str],
    layers: Sequence[int],
    query: int,
    title: str,
    *,
    max_pos: int | None = None,
    long: str = "pool",
):
    """What one query token attends to: a row per head, a column per earlier token.

    >>> uniform = torch.tril(torch.ones(3, 3)) / torch.arange(1, 4)[:, None]
    >>> pattern = uniform.expand(2, 3, 3, 3)   # (layer, head, q_pos, k_pos)
    >>> fig = token_view(pattern[:, :, 2], ["a", "b", "c"], [0, 1], 2, "toy-2l")
    >>> list(fig.data[0].y)
    ['L0H0', 'L0H1', 'L0H2', 'L1H0', 'L1H1', 'L1H2']
    """
    import plotly.graph_objects as go

    n_layers, n_heads = pattern.shape[:2]
    keys = pattern[..., : query + 1].reshape(n_layers * n_heads, query + 1)  # (layer*head, k_pos)
    win = fit(keys, tokens[: query + 1], max_pos or 4 * MAX_POS, long, axes=1)
    heads = [f"L{L}H{h}" for L in layers for h in range(n_heads)]
    custom = np.tile(np.array(win.hover, dtype=object), (len(heads), 1))
    fig = go.Figure(
        go.Heatmap(
            z=win.values.numpy(),
            x=win.positions,
            y=heads,
            customdata=custom,
            hovertemplate="%{y} ← key %{customdata}<br>weight %{z:.3f}<extra></extra>",
            colorscale=COLORS,
            zmin=0,
            zmax=1,
            colorbar={"title": {"text": "weight"}},
        )
    )
    step = max(1, math.ceil(len(win.positions) / TICKS))
    fig.update_xaxes(title="key", tickvals=win.positions[::step], ticktext=win.labels[::step], tickangle=-60)
    fig.update_yaxes(autorange="reversed", type="category")
    head = f"{title} · attention from query {query} ({figure_label(tokens[query], LABEL_WIDTH)}) to each earlier token"
    fig.update_layout(
        title=_title(head, win.note),
        plot_bgcolor="white",
        width=min(1400, max(520, 14 * len(win.positions) + 240)),
        height=min(2400, max(320, 22 * len(heads) + 200)),
    )
    return fig


def _causal(values: Tensor) -> Tensor:
    """NaN above the diagonal (keys after the query), which the figures leave blank."""
    m = values.shape[-1]
    upper = torch.ones(m, m, dtype=torch.bool).triu(1)
    return values.float().masked_fill(upper, float("nan"))


def _pair_hover(hover: list[str]) -> np.ndarray:
    """(query, key) hover texts per cell: (q, k, 2) strings, empty above the diagonal."""
    m = len(hover)
    labels = np.array(hover, dtype=object)
    custom = np.full((m, m, 2), "", dtype=object)
    q, k = np.tril_indices(m)
    custom[q, k, 0], custom[q, k, 1] = labels[q], labels[k]
    return custom


def _rounded(z: np.ndarray, digits: int = 3) -> list:
    """Nested lists with NaN as None, rounded: compact JSON for slider and dropdown steps."""
    return np.where(np.isnan(z), None, np.round(z, digits)).tolist()


def _position_axes(fig, win: Window, ticks: int) -> None:
    """Label position axes with tokens (a subset when crowded); queries read top to bottom."""
    step = max(1, math.ceil(len(win.positions) / ticks))
    tickvals, ticktext = win.positions[::step], win.labels[::step]
    size = 10 if ticks == TICKS else 8
    fig.update_xaxes(
        tickvals=tickvals,
        ticktext=ticktext,
        tickangle=-60,
        tickfont={"size": size},
        showgrid=False,
        constrain="domain",
    )
    fig.update_yaxes(
        tickvals=tickvals,
        ticktext=ticktext,
        autorange="reversed",
        tickfont={"size": size},
        showgrid=False,
        constrain="domain",
    )


def _title(text: str, note: str) -> dict:
    return {"text": text + (f"<br><sup>{note}</sup>" if note else ""), "x": 0.02}
