"""Plotly figures of a lens: the position x layer grid, target tokens across layers, two lenses compared.

    >>> import interp
    >>> from analyses.lens import logit_lens
    >>> result = logit_lens(interp.load("toy"), "def f(x): return x", target=" x")
    >>> grid, lines = lens_grid(result), target_lines(result)
    >>> grid.layout.width <= MAX_WIDTH
    True

The grid reads like the prompt: one row per input token, top to bottom, and one column per layer
boundary, so every cell is wide enough for its top-1 token in a legible font, and a figure never
grows wider than a page. Long prompts show their last `max_pos` positions (the title says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interp.errors import InputError
from interp.text import figure_label

if TYPE_CHECKING:
    import pandas as pd

    from analyses.lens.logit import LensResult

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
MAX_WIDTH = 1000  # pixels: fits the report's page and a notebook cell
MAX_POS = 64  # rows (positions) of one grid
CELL_FONT, CHAR_PX = 12, 7.5  # cell text size and about how wide one character of it is
ROW_PX, LABEL_PX, BAR_PX = 26, 150, 110  # row height; room for the token labels and the colour bar


def layer_label(layer: int) -> str:
    """Axis label of a layer boundary: 'embed' for 0, else the number of blocks read.

    >>> [layer_label(L) for L in range(3)]
    ['embed', '1', '2']
    """
    return "embed" if layer == 0 else str(layer)


def lens_grid(result: LensResult, metric: str = "kl", prompt: int = 0, max_pos: int = MAX_POS):
    """Input tokens down, layer boundaries across, coloured by `metric`; top-1 token in each cell, top-k on hover.

    >>> import interp
    >>> from analyses.lens import logit_lens
    >>> fig = lens_grid(logit_lens(interp.load("toy"), "a = 1"), "entropy")
    >>> len(fig.data[0].z), len(fig.data[0].z[0])      # (position, layer boundary)
    (3, 3)
    """
    import plotly.graph_objects as go

    if max_pos < 1:
        raise InputError(f"max_pos={max_pos} must be at least 1 position.")
    values = result.values(metric)  # validates the metric first
    real = result.attention_mask[prompt].bool().nonzero()[:, 0]  # real positions of the prompt
    cols = real[-max_pos:]
    n_layers = len(result.layers)
    cell_px = min(160, (MAX_WIDTH - LABEL_PX - BAR_PX) // n_layers)
    chars = int(cell_px // CHAR_PX) - 1
    top1 = result.top_ids[:, prompt, cols, 0].T  # (pos, layer)
    text = [[figure_label(result.token_str(t), width=chars) if chars >= 3 else "" for t in row] for row in top1]
    inputs = [f"{figure_label(result.token_str(t), width=16)} ({i})" for i, t in
              zip(range(len(real) - len(cols), len(real)), result.tokens[prompt, cols].tolist(), strict=True)]
    heat = go.Heatmap(
        z=values[:, prompt, cols].T.tolist(), text=text, texttemplate="%{text}", textfont={"size": CELL_FONT},
        customdata=_hover(result, prompt, cols.tolist()), hovertemplate="%{customdata}<extra></extra>",
        colorscale="Viridis", reversescale=metric.startswith(("prob", "top1")), colorbar={"title": metric},
        x=list(range(n_layers)), y=list(range(len(cols))))
    fig = go.Figure(heat)
    shown = "" if len(cols) == len(real) else f"<br><sup>the last {len(cols)} of {len(real)} positions</sup>"
    fig.update_layout(
        title={"text": f"{result.lens} lens: {result.provenance.model} (top-1 token, coloured by {metric}){shown}",
               "x": 0.02},
        xaxis={"title": "layer", "tickvals": list(range(n_layers)),
               "ticktext": [layer_label(L) for L in result.layers], "side": "top"},
        yaxis={"title": "input token", "tickvals": list(range(len(cols))), "ticktext": inputs,
               "autorange": "reversed"},
        width=LABEL_PX + BAR_PX + cell_px * n_layers, height=180 + ROW_PX * len(cols),
        margin={"t": 130})
    return fig


def _hover(result: LensResult, prompt: int, cols: list[int]) -> list[list[str]]:
    """Hover text of each (position, layer) cell: where it is, the KL and the top-k tokens."""
    cells = []
    for col in cols:
        token = figure_label(result.token_str(result.tokens[prompt, col]))
        row = []
        for i, layer in enumerate(result.layers):
            ids, probs = result.top_ids[i, prompt, col], result.top_probs[i, prompt, col]
            tops = [f"{figure_label(result.token_str(t))}: {p:.3f}"
                    for t, p in zip(ids.tolist(), probs.tolist(), strict=True)]
            where = f"layer {layer_label(layer)}, input {token}"
            row.append("<br>".join([where, f"KL {result.kl[i, prompt, col]:.3f} nats", *tops]))
        cells.append(row)
    return cells


def target_lines(result: LensResult, prompt: int = 0, position: int = -1):
    """Probability and rank of each target token across layers at one real position.

    >>> import interp
    >>> from analyses.lens import logit_lens
    >>> fig = target_lines(logit_lens(interp.load("toy"), "x = 1; y = x", target=[" x", " y"]))
    >>> [d.name for d in fig.data]
    ['·x', '·x', '·y', '·y']
    """
    from plotly.subplots import make_subplots

    if not result.target_ids:
        raise InputError("No target tokens: pass target=' word' or token ids to logit_lens().")
    col = int(result.attention_mask[prompt].bool().nonzero()[position, 0])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("probability", "rank (1 = top token)"))
    for j, tid in enumerate(result.target_ids):
        line = {"name": figure_label(result.token_str(tid)), "legendgroup": str(tid),
                "line": {"color": PALETTE[j % len(PALETTE)]}}
        fig.add_scatter(x=result.layers, y=result.target_probs[:, prompt, col, j].tolist(), **line, row=1, col=1)
        fig.add_scatter(x=result.layers, y=result.target_ranks[:, prompt, col, j].tolist(), **line,
                        showlegend=False, row=2, col=1)
    ticks = [m * 10**e for e in range(6) for m in (1, 2, 5)]  # 1, 2, 5, 10, 20, ...
    fig.update_yaxes(type="log", autorange="reversed", tickvals=ticks, row=2, col=1)
    fig.update_xaxes(tickvals=result.layers, ticktext=[layer_label(L) for L in result.layers])
    fig.update_xaxes(title="layer", row=2, col=1)
    token = figure_label(result.token_str(result.tokens[prompt, col]))
    fig.update_layout(title=f"{result.lens} lens: target tokens after {token}", height=600, width=MAX_WIDTH)
    return fig


def comparison_lines(frame: pd.DataFrame, model: str):
    """Mean KL and cross-entropy per layer, one line per lens, side by side (frame: LensComparison's).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"lens": ["logit"] * 2, "layer": [0, 1], "kl": [2.0, 0.0], "cross_entropy": [5.0, 3.0]})
    >>> len(comparison_lines(frame, "toy-2l").data)
    2
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2,
                        subplot_titles=("KL(model || lens), nats", "cross-entropy vs next token, nats"))
    for i, (name, part) in enumerate(frame.groupby("lens", sort=False)):
        colour = PALETTE[i % len(PALETTE)]
        for col, metric in enumerate(("kl", "cross_entropy"), start=1):
            fig.add_scatter(x=part["layer"], y=part[metric], name=f"{name} lens", legendgroup=name,
                            showlegend=col == 1, line={"color": colour}, row=1, col=col)
    layers = sorted(frame["layer"].unique())
    fig.update_xaxes(title="layer", tickvals=layers, ticktext=[layer_label(L) for L in layers])
    fig.update_layout(title=f"Logit lens vs tuned lens: {model}", width=MAX_WIDTH, height=450)
    return fig
