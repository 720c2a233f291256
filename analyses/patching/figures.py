"""Plotly figures of patching results: effect heatmaps, sender x receiver matrices, circuit graphs, curves.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> from analyses.patching import activation_patch, path_patch
    >>> fig = activation_patch(model, task, sites=["z"]).figure()         # node_figure
    >>> fig = path_patch(model, task, "heads", "logits").figure()         # path_figure

Colours are diverging and centred on 0 (red: the patch lowers the metric, blue: raises it), on one
scale across a figure's panels so they compare.
"""

from __future__ import annotations

import math

import numpy as np

from interp.text import figure_label

COLORS = "RdBu"
KIND_COLORS = {"q": "#1f77b4", "k": "#d62728", "v": "#2ca02c", "mlp": "#9467bd", "logits": "#7f7f7f"}


def _title(result, what: str) -> str:
    p = result.provenance
    rev = f"@{p.revision}" if p.revision else ""
    return (f"{what}: {p.model}{rev}, task {p.task}, {p.metric} ({p.direction}, {p.ablation})"
            f"<br><sub>M(clean) = {p.clean:.3g}, M(corrupt) = {p.corrupt:.3g}</sub>")


def _scale(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def node_figure(result, normalized: bool = True):
    """One heatmap per site: layer x head, (layer, head) x position, layer x position."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    frame = result.to_frame()
    column = "effect_normalized" if normalized and math.isfinite(result.provenance.normalize(1.0)) else "effect"
    sites = list(dict.fromkeys(frame.site))
    fig = make_subplots(rows=len(sites), cols=1, subplot_titles=sites, vertical_spacing=0.25 / max(1, len(sites)))
    bound = _scale(frame[column].to_numpy(dtype=float))
    tokens = [figure_label(t, 10) for t in result.provenance.str_tokens]
    for i, site in enumerate(sites, start=1):
        part = frame[frame.site == site]
        z, y, x = _grid(part, column, tokens)
        fig.add_trace(go.Heatmap(z=z, x=x, y=y, coloraxis="coloraxis", hovertemplate=(
            "%{y}, %{x}<br>" + column + " %{z:.4g}<extra>" + site + "</extra>")), row=i, col=1)
        fig.update_yaxes(autorange="reversed", row=i, col=1)
    fig.update_layout(title=_title(result, f"{result.method} patching" if result.method == "activation"
                                   else result.method.upper()),
                      coloraxis={"colorscale": COLORS, "cmin": -bound, "cmax": bound, "cmid": 0,
                                 "colorbar": {"title": column}},
                      height=260 + 300 * len(sites), width=max(700, 40 + 18 * len(tokens)))
    return fig


def _grid(part, column: str, tokens: list[str]):
    """(z, y labels, x labels) of one site's rows."""
    heads = part["head"].notna().any()
    by_pos = part["position"].notna().any()
    rows = [f"L{ly}H{h}" for ly, h in zip(part.layer, part["head"], strict=True)] if heads else \
        [f"L{ly}" for ly in part.layer]
    row_names = list(dict.fromkeys(rows))
    if by_pos:
        cols = sorted(set(part.position.astype(int)))
        x = [f"{p} {tokens[p]}" if p < len(tokens) else str(p) for p in cols]
        z = np.full((len(row_names), len(cols)), np.nan)
        for r, p, v in zip(rows, part.position.astype(int), part[column], strict=True):
            z[row_names.index(r), cols.index(p)] = v
        return z, row_names, x
    if heads:  # layer x head
        layers = sorted(set(part.layer))
        n_heads = int(part["head"].max()) + 1
        z = np.full((len(layers), n_heads), np.nan)
        for ly, h, v in zip(part.layer, part["head"].astype(int), part[column], strict=True):
            z[layers.index(ly), h] = v
        return z, [f"L{ly}" for ly in layers], [f"H{h}" for h in range(n_heads)]
    return part[column].to_numpy()[:, None], row_names, ["all positions"]


def path_figure(result, normalized: bool = True):
    """Sender x receiver heatmap; with one receiver, a layer x head grid of the head senders."""
    import plotly.graph_objects as go

    span = result.provenance.normalize(1.0)
    values = result.effects.numpy() * (span if normalized and math.isfinite(span) else 1.0)
    label = "effect_normalized" if normalized and math.isfinite(span) else "effect"
    bound = _scale(values)
    fig = go.Figure(go.Heatmap(z=values, x=result.receivers, y=result.senders, colorscale=COLORS, zmid=0,
                               zmin=-bound, zmax=bound, colorbar={"title": label},
                               hovertemplate="%{y} -> %{x}<br>" + label + " %{z:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="sender")
    fig.update_xaxes(title="receiver")
    mode = "MLPs mediate" if result.mediated else "MLPs frozen"
    fig.update_layout(title=_title(result, f"Path patching ({mode})"),
                      height=max(400, 160 + 14 * len(result.senders)),
                      width=max(500, 200 + 22 * len(result.receivers)))
    return fig


def edge_matrix_figure(result, normalized: bool = True):
    """Every edge's score as a sender x receiver matrix (blank where no edge exists)."""
    import plotly.graph_objects as go

    span = result.provenance.normalize(1.0)
    values = result.matrix().numpy() * (span if normalized and math.isfinite(span) else 1.0)
    label = "score_normalized" if normalized and math.isfinite(span) else "score"
    bound = _scale(values)
    g = result.graph
    fig = go.Figure(go.Heatmap(z=values, x=[r.name for r in g.receivers], y=[s.name for s in g.senders],
                               colorscale=COLORS, zmid=0, zmin=-bound, zmax=bound, colorbar={"title": label},
                               hovertemplate="%{y} -> %{x}<br>" + label + " %{z:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="sender")
    fig.update_xaxes(title="receiver")
    fig.update_layout(title=_title(result, f"{result.method.upper()} edge scores ({g.n_edges} edges)"),
                      height=max(450, 160 + 10 * len(g.senders)), width=max(600, 200 + 8 * len(g.receivers)))
    return fig


def _positions(graph) -> dict[str, tuple[float, float]]:
    """Node coordinates: layers bottom to top (embed below, logits above), heads then the MLP across."""
    width = graph.n_heads + 1
    pos = {"embed": (width / 2 - 0.5, -1.0), "logits": (width / 2 - 0.5, float(graph.n_layers))}
    for node in graph.senders:
        if node.kind == "head":
            pos[node.name] = (float(node.head), float(node.layer))
        elif node.kind == "mlp":
            pos[node.name] = (float(graph.n_heads) + 0.3, node.layer + (0.0 if graph.parallel_residual else 0.45))
    return pos


def circuit_figure(circuit, max_width: float = 8.0):
    """Interactive circuit graph: nodes in layer order, edge width by |score|, colour by the receiving input."""
    import plotly.graph_objects as go

    graph, pos = circuit.graph, _positions(circuit.graph)
    edges = circuit.edges()
    scores = circuit.scores[circuit.keep].numpy() if len(edges) else np.zeros(0)
    top = _scale(scores) if np.isfinite(scores).any() else 1.0
    fig = go.Figure()
    for (s, r), v in zip(edges, scores, strict=True):
        target = r.split(".")[0]
        kind = r.split(".")[1] if "." in r else ("logits" if r == "logits" else "mlp")
        width = 1.0 + (max_width - 1.0) * (abs(v) / top if np.isfinite(v) else 0.3)
        (x0, y0), (x1, y1) = pos[s], pos[target]
        bend = {"q": -0.15, "k": 0.0, "v": 0.15}.get(kind, 0.0)
        fig.add_trace(go.Scatter(x=[x0, (x0 + x1) / 2 + bend, x1], y=[y0, (y0 + y1) / 2, y1], mode="lines",
                                 line={"width": width, "color": KIND_COLORS[kind], "shape": "spline"},
                                 opacity=0.75, hoverinfo="text", text=f"{s} -> {r}<br>score {v:.4g}",
                                 name=kind, legendgroup=kind, showlegend=False))
    for kind, color in KIND_COLORS.items():  # one legend entry per input kind
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"color": color, "width": 4},
                                 name=f"into {kind}", legendgroup=kind))
    used = {s for s, _ in edges} | {r.split(".")[0] for _, r in edges}
    names = [n.name for n in graph.nodes()]
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text", text=names,
        textposition="top center", hoverinfo="text", showlegend=False,
        marker={"size": [16 if n in used else 8 for n in names],
                "color": ["#222" if n in used else "#ccc" for n in names]}))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(title="layer", tickvals=list(range(-1, graph.n_layers + 1)),
                     ticktext=["embed", *map(str, range(graph.n_layers)), "logits"])
    fig.update_layout(title=_title(circuit, f"Circuit of {circuit.n_edges} edges: faithfulness "
                                   f"{circuit.faithfulness:.3f}, completeness {circuit.completeness:.3f}"),
                      height=300 + 90 * graph.n_layers, width=max(600, 160 + 90 * graph.n_heads),
                      plot_bgcolor="white")
    return fig


def curve_figure(curve):
    """Faithfulness of the top-n circuit against n."""
    import plotly.graph_objects as go

    frame = curve.to_frame()
    fig = go.Figure(go.Scatter(x=frame.n_edges + 1, y=frame.faithfulness, mode="lines+markers",
                               customdata=frame.n_edges, name=curve.method,
                               hovertemplate="%{customdata} edges<br>faithfulness %{y:.3f}<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    fig.update_xaxes(type="log", title="edges kept + 1 (top by |score|)")
    fig.update_yaxes(title="faithfulness (clean = 1, corrupt = 0)")
    fig.update_layout(title=_title(curve, f"Faithfulness of {curve.method.upper()} circuits"), height=450, width=700)
    return fig

