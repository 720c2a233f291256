"""The explorer's own figures: the head grid, the hoverable token strip, differences, messages.

    >>> fig = token_strip(["The", " cat", " sat"], [0.5, 0.5, 0.0], query=1, title="toy-2l L0H1")
    >>> fig["data"][0]["type"], fig["data"][0]["customdata"][0]
    ('heatmap', [0, 1, 2])

Every number drawn comes from an analysis result; these functions only lay numbers out.
Figures are plain dicts (plotly's JSON), cheap to cache and to send, and light to draw: a browser
redraws one heatmap on one pair of axes several times faster than a grid of subplots.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interp.text import figure_label

STRIP_COLUMNS = 12  # tokens per row of the token strip
TICKS = 40  # most labelled ticks per axis
NOTE_STYLE = {"showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 15}}


def message(text: str, height: int = 220) -> dict:
    """An empty figure that says why there is nothing to draw (wrapped at about 90 characters)."""
    lines = _wrap(text, 90)
    return {
        "data": [],
        "layout": {
            "annotations": [{**NOTE_STYLE, "text": "<br>".join(html.escape(line, quote=False) for line in lines)}],
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "height": max(height, 60 + 24 * len(lines)),
            "plot_bgcolor": "white",
            "margin": {"t": 30, "b": 30},
        },
    }


def fit_width(fig, colorbar: bool = True) -> dict:
    """A figure dict for the page: it fills its container's width (the analysis sets a fixed width for
    files) and drops plotly.py's template (plotly.js's defaults draw faster; the page sets the background).
    `colorbar=False` hides colour bars, for a figure whose view shows its scale once elsewhere.

    >>> fig = fit_width({"data": [{"type": "heatmap", "z": [[1]]}], "layout": {"width": 900, "template": {}}}, False)
    >>> fig["layout"]["autosize"], "width" in fig["layout"], "template" in fig["layout"], fig["data"][0]["showscale"]
    (True, False, False, False)
    """
    fig = fig if isinstance(fig, dict) else fig.to_plotly_json()
    layout = {k: v for k, v in fig.get("layout", {}).items() if k not in ("width", "template")}
    data = fig.get("data", []) if colorbar else [{**trace, "showscale": False} for trace in fig.get("data", [])]
    return {**fig, "data": data, "layout": {"height": 450, "plot_bgcolor": "white", **layout, "autosize": True}}


@dataclass(frozen=True)
class Tiles:
    """Where the head grid puts its tiles: `n` squares of `size` cells, `cols` to a row, a blank cell apart.

    >>> tiles = Tiles(n=6, size=4, cols=3)
    >>> tiles.shape, tiles.origin(4), tiles.at(x=6, y=5), tiles.at(x=4, y=0)   # (rows, cols) of cells
    ((9, 14), (5, 5), 4, None)
    """

    n: int
    size: int
    cols: int

    @property
    def step(self) -> int:
        return self.size + 1

    @property
    def shape(self) -> tuple[int, int]:
        rows = math.ceil(self.n / self.cols)
        return rows * self.step - 1, self.cols * self.step - 1

    def origin(self, i: int) -> tuple[int, int]:
        """(row, column) of the top-left cell of tile `i`."""
        return (i // self.cols) * self.step, (i % self.cols) * self.step

    def at(self, x: int, y: int) -> int | None:
        """The tile under cell (x, y), None between tiles or past the last one."""
        (row, dy), (col, dx) = divmod(int(y), self.step), divmod(int(x), self.step)
        i = row * self.cols + col
        inside = 0 <= col < self.cols and dx < self.size and dy < self.size and 0 <= i < self.n
        return i if inside and y >= 0 and x >= 0 else None


def head_grid(values: np.ndarray, tiles: Tiles, row_labels: Sequence[str], col_labels: Sequence[str],
              title: str) -> dict:
    """Every head's (q_pos, k_pos) pattern, `values` shaped (tile, q_pos, k_pos), as tiles of one heatmap.

    Rows and columns of tiles are labelled on the axes; hover shows the weight, a click picks the
    tile (`Tiles.at`). NaN cells (keys after the query) stay blank.

    >>> fig = head_grid(np.eye(2)[None].repeat(2, 0), Tiles(2, 2, 2), ["L0"], ["H0", "H1"], "toy")
    >>> fig["data"][0]["z"]
    [[1.0, 0.0, None, 1.0, 0.0], [0.0, 1.0, None, 0.0, 1.0]]
    """
    z = np.full(tiles.shape, np.nan)
    for i in range(tiles.n):
        row, col = tiles.origin(i)
        z[row:row + tiles.size, col:col + tiles.size] = values[i]
    centre = (tiles.size - 1) / 2
    rows = range(len(row_labels))
    heat = {
        "type": "heatmap",
        "z": _jsonable(z),
        "colorscale": _scale("Blues"),
        "zmin": 0,
        "zmax": 1,
        "hoverongaps": False,
        "hovertemplate": "weight %{z:.3f}<extra></extra>",
        "showscale": False,  # the head figure above shows the scale
    }
    axis = {"showgrid": False, "zeroline": False, "ticks": "", "constrain": "domain"}
    layout = {
        "title": {"text": title, "x": 0.02},
        "xaxis": {**axis, "tickvals": [c * tiles.step + centre for c in range(len(col_labels))],
                  "ticktext": list(col_labels), "side": "top"},
        "yaxis": {**axis, "tickvals": [r * tiles.step + centre for r in rows], "ticktext": list(row_labels),
                  "autorange": "reversed", "scaleanchor": "x"},
        "height": min(1000, 150 + len(row_labels) * max(120, min(260, 1100 // tiles.cols))),
        "plot_bgcolor": "white",
        "margin": {"t": 90, "l": 60},
    }
    return {"data": [heat], "layout": layout}


def token_strip(tokens: Sequence[str], weights: Sequence[float], query: int, title: str) -> dict:
    """Tokens in rows, each coloured by the attention the query token pays it; hover picks the query.

    Keys after the query get no colour. `customdata` of every cell is its token position.
    """
    n, cols = len(tokens), min(STRIP_COLUMNS, len(tokens))
    rows = math.ceil(n / cols)
    z = np.full((rows, cols), np.nan)
    pos = np.full((rows, cols), -1)
    for i in range(n):
        pos[i // cols, i % cols] = i
        if i <= query:
            z[i // cols, i % cols] = weights[i]
    x, y = [i % cols for i in range(n)], [i // cols for i in range(n)]
    labels = [figure_label(t, 12) for t in tokens]
    heat = {
        "type": "heatmap",
        "z": _jsonable(z),
        "customdata": pos.tolist(),
        "colorscale": _scale("Blues"),
        "zmin": 0,
        "zmax": 1,
        "xgap": 2,
        "ygap": 2,
        "hovertemplate": "token %{customdata}<br>weight %{z:.3f}<extra></extra>",
        "showscale": False,  # the head figure above shows the scale
    }
    dark = [i <= query and weights[i] > 0.55 for i in range(n)]  # white text on dark cells
    text = {"type": "scatter", "mode": "text", "x": x, "y": y, "text": labels, "hoverinfo": "skip",
            "textfont": {"size": 13, "color": ["white" if d else "#222" for d in dark]}, "showlegend": False}
    mark = {"type": "scatter", "mode": "markers", "x": [query % cols], "y": [query // cols], "hoverinfo": "skip",
            "marker": {"symbol": "square-open", "size": 34, "color": "#d62728", "line": {"width": 3}},
            "showlegend": False}
    layout = {
        "title": {"text": f"{title} · attention from {figure_label(tokens[query], 14)} (position {query}); "
                          "hover a token to choose the query", "x": 0.02},
        "xaxis": {"visible": False, "range": [-0.5, cols - 0.5]},
        "yaxis": {"visible": False, "autorange": "reversed"},
        "height": 120 + 44 * rows,
        "plot_bgcolor": "white",
        "margin": {"t": 60, "b": 10},
    }
    return {"data": [heat, text, mark], "layout": layout}


def difference(a: np.ndarray, b: np.ndarray, x_labels: Sequence[str], y_labels: Sequence[str], title: str,
               axes: tuple[str, str], hover: str = "%{y} %{x}") -> dict:
    """A heatmap of b - a on a diverging scale centred at 0, with both values on hover.

    Cells sit at integer positions (repeated labels stay apart), labelled by `x_labels`/`y_labels`.
    """
    diff = b - a
    bound = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 0.0
    bound = max(bound, 1e-9)
    trace = {
        "type": "heatmap",
        "z": _jsonable(diff),
        "customdata": _jsonable(np.stack([a, b], axis=-1)),
        "colorscale": _scale("RdBu_r"),  # B above A in red
        "zmid": 0,
        "zmin": -bound,
        "zmax": bound,
        "hovertemplate": f"{hover}<br>A %{{customdata[0]:.3f}} → B %{{customdata[1]:.3f}}<br>"
                         "B − A %{z:+.3f}<extra></extra>",
        "colorbar": {"title": {"text": "B − A"}},
    }
    layout = {
        "title": {"text": title, "x": 0.02},
        "xaxis": {"title": {"text": axes[0]}, **_ticks(x_labels, TICKS)},
        "yaxis": {"title": {"text": axes[1]}, "autorange": "reversed", **_ticks(y_labels, TICKS)},
        "height": min(900, max(320, 220 + 22 * len(y_labels))),
        "plot_bgcolor": "white",
    }
    return {"data": [trace], "layout": layout}


def _ticks(labels: Sequence[str], most: int) -> dict:
    step = max(1, math.ceil(len(labels) / most))
    return {"tickvals": list(range(0, len(labels), step)), "ticktext": list(labels)[::step], "showgrid": False}


def lines(curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, axes: tuple[str, str]) -> dict:
    """One line per pane over layers: {name: (x, y)}."""
    data = [{"type": "scatter", "mode": "lines+markers", "name": name, "x": list(x), "y": _jsonable(np.asarray(y))}
            for name, (x, y) in curves.items()]
    layout = {"title": {"text": title, "x": 0.02}, "xaxis": {"title": {"text": axes[0]}},
              "yaxis": {"title": {"text": axes[1]}}, "height": 380, "plot_bgcolor": "white"}
    return {"data": data, "layout": layout}


def _scale(name: str) -> list:
    """A named plotly colorscale as explicit stops (plotly.js names differ from plotly.py's)."""
    from plotly.colors import get_colorscale

    return get_colorscale(name)


def _jsonable(values: np.ndarray) -> list:
    """Nested lists with NaN as None (JSON has no NaN)."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isnan(values), None, values).tolist()


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line]
