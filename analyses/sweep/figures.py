"""Figures over training: trajectories on a log step axis, head scores per detector, lens per layer.

    >>> from analyses.sweep import sweep
    >>> frame = sweep("toy", "attention", "log", progress=False).to_frame()
    >>> fig = trajectory(frame, "induction", by=["layer", "head"])
    >>> fig.layout.xaxis.type, fig.layout.xaxis.ticktext[0]
    ('log', '0')

Step 0 has no place on a log axis: it is drawn at half the first nonzero value (0.5 when step 1
is there), labelled "0", and the axis title says so. Hovering shows the true step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from interp.errors import InputError

DETECTORS = ("induction", "prev_token", "duplicate_token", "first_token", "mean_distance")
LENS_METRICS = ("kl", "cross_entropy", "entropy", "top1_prob")
ROPE_VALUES = ("rotary_share", "positional_index", "prev_attention", "sink_attention", "pass_share")
X_AXES = {"step": "training step", "tokens_seen": "tokens seen"}


def trajectory(frame: pd.DataFrame, column: str, by: str | Sequence[str] | None = None, reduce: str = "max",
               x: str = "step", title: str | None = None):
    """`column` against step (or tokens seen) on a log axis: a line per group of `by` (and per model)."""
    import plotly.graph_objects as go

    _check_column(frame, column)
    if x not in X_AXES:
        raise InputError(f"x={x!r} is not one of {', '.join(X_AXES)}.")
    fig = go.Figure()
    for name, group in _groups(frame, column, by, reduce, x):
        fig.add_scatter(x=_log_x(group[x], frame[x]), y=group[column], mode="lines+markers", name=name,
                        customdata=group[[x, "revision"]].to_numpy(),
                        hovertemplate=f"{name}<br>%{{customdata[1]}} ({x} %{{customdata[0]:,}})<br>"
                                      f"{column} %{{y:.3f}}<extra></extra>")
    _log_axis(fig, frame[x], x)
    fig.update_layout(title=title or f"{column} across training", yaxis_title=column, template="plotly_white",
                      legend_title_text=_legend_title(by))
    return fig


def attention_figures(result) -> list:
    """Head scores over training: a line per head with a detector dropdown, and a head x step heatmap."""
    return head_figures(result.frame, [d for d in DETECTORS if d in result.frame], "head scores")


def rope_figures(result) -> list:
    """RoPE use over training: rotary share (and the other head-table numbers) per head."""
    return head_figures(result.frame, [v for v in ROPE_VALUES if v in result.frame], "RoPE use")


def head_figures(frame: pd.DataFrame, values: Sequence[str], what: str) -> list:
    """A line per head with a dropdown over `values`, then a head x checkpoint heatmap per model."""
    lines = [trajectory(frame, v, by=["layer", "head"], title=f"{what} across training") for v in values]
    return [with_dropdown(lines, values),
            *(head_heatmap(frame[frame["model"] == m], values, what) for m in frame["model"].unique())]


def patch_figures(result) -> list:
    """Each head's activation-patching effect over training."""
    values = [v for v in ("effect_normalized", "effect") if v in result.frame]
    return head_figures(result.frame, values, "patching effect")


def lens_figures(result) -> list:
    """Logit lens over training: a line per layer boundary, a dropdown over metrics."""
    metrics = [m for m in LENS_METRICS if m in result.frame]
    figs = [trajectory(result.frame, m, by="layer", title="logit lens across training") for m in metrics]
    fig = with_dropdown(figs, metrics)
    fig.update_layout(legend_title_text="boundary (0 = embedding, L = after block L)")
    return [fig]


def head_heatmap(frame: pd.DataFrame, detectors: Sequence[str], what: str = "head scores"):
    """Heads (rows, L0H0 at the top) x checkpoints (columns, in step order) coloured by one value at a time."""
    import plotly.graph_objects as go

    fig = go.Figure()
    steps = sorted(frame["step"].unique())
    for i, detector in enumerate(detectors):
        grid = frame.pivot_table(index=["layer", "head"], columns="step", values=detector, aggfunc="first")
        grid = grid.reindex(columns=steps)
        rows = [f"L{layer}H{head}" for layer, head in grid.index]
        fig.add_heatmap(z=grid.to_numpy(), x=[str(s) for s in steps], y=rows, visible=i == 0, colorscale="Viridis",
                        colorbar_title=detector, name=detector,
                        hovertemplate=f"%{{y}} step %{{x}}<br>{detector} %{{z:.3f}}<extra></extra>")
    model = frame["model"].iloc[0] if len(frame) else ""
    fig.update_yaxes(autorange="reversed", title="head")
    fig.update_xaxes(type="category", title="training step (one column per checkpoint)")
    fig.update_layout(title=f"{model}: {what} per checkpoint", template="plotly_white",
                      height=max(320, 18 * frame[["layer", "head"]].drop_duplicates().shape[0] + 160))
    _buttons(fig, [[j == i for j in range(len(detectors))] for i in range(len(detectors))], detectors)
    return fig


def _groups(frame: pd.DataFrame, column: str, by, reduce: str, x: str):
    """(legend name, rows sorted by x) per line."""
    multi = frame["model"].nunique() > 1
    if by is None:
        keys = ["model"] if multi else []
        for key, group in (frame.groupby(keys, sort=False) if keys else [((), frame)]):
            series = group.groupby([x, "revision"], sort=True, as_index=False)[column].agg(reduce)
            yield _name(keys, key, prefix=f"{reduce} {column}"), series.sort_values(x)
        return
    keys = (["model"] if multi else []) + ([by] if isinstance(by, str) else list(by))
    missing = [k for k in keys if k not in frame]
    if missing:
        raise InputError(f"by={by!r}: no column {missing}; columns: {list(frame.columns)}.")
    for key, group in frame.groupby(keys, sort=True):
        yield _name(keys, key), group.sort_values(x)


def _name(keys: list[str], key, prefix: str = "") -> str:
    values = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
    parts = [prefix] if prefix else []
    if "model" in values:
        parts.append(str(values.pop("model")))
    if set(values) == {"layer", "head"}:
        parts.append(f"L{values['layer']}H{values['head']}")
    else:
        parts += [f"{k} {v}" for k, v in values.items()]
    return " ".join(parts)


def _legend_title(by) -> str:
    if by is None:
        return ""
    return "head" if list([by] if isinstance(by, str) else by) == ["layer", "head"] else str(by)


def _zero_at(values: pd.Series) -> float:
    """Where 0 is drawn on the log axis: half the smallest nonzero value (step 1 -> 0.5)."""
    positive = values[values > 0]
    return 0.5 if positive.empty else float(positive.min()) / 2


def _log_x(values: pd.Series, every: pd.Series) -> list[float]:
    zero = _zero_at(every)
    return [float(v) if v > 0 else zero for v in values]


def _log_axis(fig, every: pd.Series, x: str) -> None:
    """A log x axis with step 0 labelled where it is drawn, ticks at powers of ten."""
    zero = _zero_at(every)
    top = max(float(every.max()), 1.0)
    decades = [10 ** k for k in range(math.floor(math.log10(zero)) + 1, math.ceil(math.log10(top)) + 1)]
    ticks = [zero, *(d for d in decades if d <= top * 1.01)]
    labels = ["0", *(_short(d) for d in ticks[1:])]
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=labels,
                     title=f"{X_AXES[x]} (log scale; 0 drawn at {_short(zero)})")


def _short(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def with_dropdown(figs: list, labels: Sequence[str]):
    """One figure holding every figure's traces, a dropdown showing one figure's at a time."""
    if len(figs) == 1:
        return figs[0]
    combined, spans = figs[0], [len(figs[0].data)]
    for fig in figs[1:]:
        for trace in fig.data:
            combined.add_trace(trace.update(visible=False))
        spans.append(len(fig.data))
    masks, start = [], 0
    for span in spans:
        masks.append([start <= i < start + span for i in range(sum(spans))])
        start += span
    _buttons(combined, masks, labels, yaxis=True)
    return combined


def _buttons(fig, masks: list[list[bool]], labels: Sequence[str], yaxis: bool = False) -> None:
    if len(labels) < 2:
        return
    buttons = [dict(label=label, method="update",
                    args=[{"visible": mask}, {"yaxis.title.text": label} if yaxis else {}])
               for label, mask in zip(labels, masks, strict=True)]
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=1.0, xanchor="right", y=1.15, yanchor="top")])
    if yaxis:
        fig.update_layout(yaxis_title=labels[0])


def _check_column(frame: pd.DataFrame, column: str) -> None:
    if column not in frame:
        hidden = {"model", "revision", "step", "tokens_seen", "weights_sha256", "duplicate_of"}
        raise InputError(f"No column {column!r}; columns: {[c for c in frame if c not in hidden]}.")

