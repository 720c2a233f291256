"""Figures of circuits over training: circuit size, faithfulness and Jaccard, and the graph with a step slider.

    >>> import pandas as pd
    >>> edges = pd.DataFrame({"model": "toy-2l", "revision": ["step1", "step2"], "step": [1, 2],
    ...                       "sender": "L0H1", "receiver": "L1H0.k", "score": [0.5, 0.7], "in_circuit": True})
    >>> fig = circuit_slider(edges)
    >>> len(fig.layout.sliders[0].steps), fig.layout.sliders[0].active
    (2, 1)
"""

from __future__ import annotations

import re

import pandas as pd

from analyses.sweep.figures import trajectory, with_dropdown

CIRCUIT_VALUES = ("circuit_size", "final_faithfulness", "jaccard_previous", "circuit_faithfulness", "metric_gap")
KIND_COLOURS = {"q": "#1f77b4", "k": "#ff7f0e", "v": "#2ca02c", "mlp": "#7f7f7f", "logits": "#d62728"}


def circuit_figures(result) -> list:
    """Circuit size and Jaccard over training, and the circuit graph with a step slider (from a `circuit` sweep)."""
    from analyses.sweep.circuits import summary

    frames = [summary(group) for _, group in result.frame.groupby("model", sort=False)]
    return [circuit_summary(pd.concat(frames, ignore_index=True)), circuit_slider(result.frame)]


def circuit_summary(summary: pd.DataFrame):
    """Circuit size, the final circuit's faithfulness and Jaccard with the previous checkpoint, over training."""
    values = [v for v in CIRCUIT_VALUES if v in summary and summary[v].notna().any()]
    figs = [trajectory(summary, v, reduce="first", title="the circuit across training") for v in values]
    return with_dropdown(figs, values)


def circuit_slider(edges: pd.DataFrame):
    """The circuit graph of one model at each checkpoint (nodes by layer, edge width by |score|), a step slider."""
    import plotly.graph_objects as go

    model = edges["model"].iloc[0]
    edges = edges[edges["model"] == model]
    positions = _node_positions(pd.concat([edges["sender"], edges["receiver"].str.split(".").str[0]]).unique())
    fig = go.Figure()
    fig.add_scatter(x=[p[0] for p in positions.values()], y=[p[1] for p in positions.values()], mode="markers+text",
                    text=list(positions), textposition="top center", marker=dict(size=12, color="#444"),
                    hoverinfo="text", showlegend=False)
    for kind, colour in KIND_COLOURS.items():  # a legend of edge colours, always shown
        fig.add_scatter(x=[None], y=[None], mode="lines", line=dict(color=colour, width=3), name=f"into {kind}")
    fixed = len(fig.data)
    steps, spans = sorted(edges["step"].unique()), []
    for step in steps:
        kept = edges[(edges["step"] == step) & edges["in_circuit"].astype(bool)]
        before = len(fig.data)
        _edge_traces(fig, kept, positions, visible=step == steps[-1])
        spans.append(range(before, len(fig.data)))
    visible = [[i < fixed or i in span for i in range(len(fig.data))] for span in spans]
    fig.update_layout(sliders=[dict(active=len(steps) - 1, currentvalue=dict(prefix="step "), steps=[
        dict(label=str(s), method="update", args=[{"visible": v}]) for s, v in zip(steps, visible, strict=True)])],
        title=f"{model}: the circuit at each checkpoint", template="plotly_white", height=620,
        xaxis=dict(visible=False), yaxis=dict(zeroline=False, **_layer_ticks(positions)))
    return fig


def _edge_traces(fig, kept: pd.DataFrame, positions: dict, visible: bool) -> None:
    """One line trace per receiver kind and width bucket, plus hover markers at edge midpoints."""
    top = kept["score"].abs().max() if len(kept) else 1.0
    for (kind, bucket), group in kept.assign(kind=kept["receiver"].map(_kind),
                                             bucket=(3 * kept["score"].abs() / (top or 1.0)).clip(0, 2.99)
                                             .astype(int)).groupby(["kind", "bucket"]):
        xs, ys = [], []
        for s, r in group[["sender", "receiver"]].itertuples(index=False):
            (x0, y0), (x1, y1) = positions[s], positions[r.split(".")[0]]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        fig.add_scatter(x=xs, y=ys, mode="lines", line=dict(width=1.5 + 2.5 * bucket, color=KIND_COLOURS[kind]),
                        name=kind, legendgroup=kind, showlegend=False, hoverinfo="skip", visible=visible)
    ends = [(positions[s], positions[r.split(".")[0]], f"{s} → {r}<br>score {v:.3g}")
            for s, r, v in kept[["sender", "receiver", "score"]].itertuples(index=False)]
    fig.add_scatter(x=[(a[0] + b[0]) / 2 for a, b, _ in ends], y=[(a[1] + b[1]) / 2 for a, b, _ in ends],
                    text=[t for _, _, t in ends], mode="markers",
                    marker=dict(size=6, color="rgba(0,0,0,0.15)"), hoverinfo="text", showlegend=False,
                    visible=visible)


def _kind(receiver: str) -> str:
    if receiver == "logits":
        return "logits"
    return receiver.rsplit(".", 1)[1] if "." in receiver else "mlp"


def _node_positions(names) -> dict[str, tuple[float, float]]:
    """embed at the bottom, heads of layer L in row L + 1 (MLP L to their right), logits on top."""
    heads = [tuple(map(int, m.groups())) for n in names if (m := re.fullmatch(r"L(\d+)H(\d+)", n))]
    n_layers = max([L for L, _ in heads] + [int(n[3:]) for n in names if n.startswith("mlp")] + [0]) + 1
    n_heads = max([h for _, h in heads] + [0]) + 1
    positions = {"embed": ((n_heads - 1) / 2, 0.0)}
    for name in names:
        if m := re.fullmatch(r"L(\d+)H(\d+)", name):
            positions[name] = (float(m.group(2)), float(m.group(1)) + 1)
        elif name.startswith("mlp"):
            positions[name] = (float(n_heads) + 0.5, float(name[3:]) + 1)
    positions["logits"] = ((n_heads - 1) / 2, float(n_layers) + 1)
    return positions


def _layer_ticks(positions: dict) -> dict:
    """Rows named: the embedding, layer 0, 1, ..., the logits."""
    rows = sorted({p[1] for p in positions.values()})
    names = ["embed", *(f"layer {int(r) - 1}" for r in rows[1:-1]), "logits"]
    return {"tickvals": rows, "ticktext": names}
