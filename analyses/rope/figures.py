"""Plotly figures of RoPE probing: head x band heatmaps, head maps, kernels, ablations, circuits, training.

    >>> import interp
    >>> model = interp.load("toy")
    >>> from analyses.rope import decompose
    >>> fig = band_heatmap(decompose(model, "x = 1\\ny = 2\\n"), "energy_share")   # or ScoreDecomposition.figure()

Every function takes a result from `analyses.rope` and returns a `plotly.graph_objects.Figure`.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.rope.common import head_label, part_names
from interp.errors import InputError

TEMPLATE = "plotly_white"
SHORT = {"positional": "P", "content": "C", "mixed": "M"}
DIVERGING = {"variance_share", "rotary_share", "pass_share"}
UNIT = {"rotary_share", "pass_share", "positional_index", "prev_attention", "sink_attention"}  # colours span 0..1


def _title(provenance, what: str) -> str:
    rev = f"@{provenance.revision}" if provenance.revision else ""
    return f"{what} · {provenance.model}{rev}"


def band_heatmap(dec, value: str = "energy_share") -> go.Figure:
    """Rows: heads; columns: pass-through and each band (with its wavelength); colour: `value`."""
    energy = dec.energy
    values = {"energy_share": energy / energy.sum(-1, keepdim=True).clamp(min=1e-30),
              "variance_share": dec.part_share}
    if value not in values:
        raise InputError(f"value={value!r}: choose one of {list(values)}.")
    z = values[value].flatten(0, 1).float()  # (layer * head, part)
    n_heads = dec.q_mean.shape[1]
    rows = [head_label(L, h) for L in dec.layers for h in range(n_heads)]
    waves = dec.geometry.wavelengths().tolist()
    cols = ["pass", *(f"band{i} · λ {w:,.1f}" for i, w in enumerate(waves))]
    heat = go.Heatmap(z=z.numpy(), x=cols, y=rows, colorscale="RdBu" if value in DIVERGING else "Blues",
                      zmid=0 if value in DIVERGING else None, colorbar={"title": value},
                      hovertemplate="%{y} %{x}<br>" + value + " %{z:.3f}<extra></extra>")
    fig = go.Figure(heat)
    fig.update_yaxes(autorange="reversed", title="head")
    fig.update_xaxes(title="part (band 0 turns fastest; λ = tokens per turn)")
    fig.update_layout(title=_title(dec.provenance, f"{value} per head and band"), template=TEMPLATE,
                      height=max(400, 18 * len(rows) + 160))
    return fig


def head_map(table, value: str = "rotary_share") -> go.Figure:
    """Layer x head map of `value`; each cell shows its label (P/M/C, prev, sink), hover shows the numbers."""
    frame = table.to_frame()
    if value not in frame:
        raise InputError(f"value={value!r} is not a column of the head table: {list(frame.columns)}.")
    layers = sorted(frame["layer"].unique())
    n_heads = int(frame["head"].max()) + 1
    z = frame.pivot(index="layer", columns="head", values=value).loc[layers].to_numpy()
    text = frame.assign(t=[_cell_text(r) for r in frame.itertuples()]).pivot(index="layer", columns="head",
                                                                           values="t").loc[layers].to_numpy()
    hover = frame.assign(t=[_hover(r) for r in frame.itertuples()]).pivot(index="layer", columns="head",
                                                                        values="t").loc[layers].to_numpy()
    heat = go.Heatmap(z=z, x=list(range(n_heads)), y=layers, text=text, texttemplate="%{text}",
                      customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                      colorscale="RdBu" if value in DIVERGING else "Blues", colorbar={"title": value},
                      **({"zmin": 0, "zmax": 1} if value in UNIT else {}))
    fig = go.Figure(heat)
    fig.update_yaxes(autorange="reversed", title="layer", dtick=1)
    fig.update_xaxes(title="head", dtick=1)
    fig.update_layout(title=_title(table.decomposition.provenance, f"{value} (P positional, M mixed, C content)"),
                      template=TEMPLATE, height=max(360, 40 * len(layers) + 160))
    return fig


def _cell_text(row) -> str:
    flags = [SHORT[row.label]] + (["prev"] if row.previous_token else []) + (["sink"] if row.sink else [])
    return " ".join(flags)


def _hover(row) -> str:
    band = "" if row.dominant_band is None or str(row.dominant_band) == "<NA>" else (
        f"<br>dominant band {row.dominant_band} (λ {row.dominant_wavelength:,.1f}, "
        f"share {row.dominant_band_share:.2f})")
    return (f"{row.name}: {row.label}<br>positional index {row.positional_index:.3f}<br>rotary share "
            f"{row.rotary_share:.3f}, pass share {row.pass_share:.3f}<br>kernel argmax Δ={row.kernel_argmax_offset}"
            f" (data {row.data_argmax_offset})<br>prev {row.prev_attention:.2f}, sink {row.sink_attention:.2f}{band}")


def kernel_curves(kern, heads: list[tuple[int, int]], max_offset: int = 64) -> go.Figure:
    """Content-free (solid), bias-only (dashed) and data (dotted) kernels against Δ = key - query.

    Each curve is shifted to mean 0 over the offsets shown: the data kernel is within-query centred,
    the others are not, and a constant does not change attention.
    """
    fig = go.Figure()
    lo = -max_offset
    sel = kern.offsets >= lo
    data_sel = kern.data_offsets >= lo
    for n, (L, h) in enumerate(heads):
        curve = kern.curve(L, h)
        colour = _colour(n)
        for key, dash, mode in (("kernel", "solid", "lines"), ("bias_kernel", "dash", "lines"),
                                ("data_kernel", "dot", "lines+markers")):
            x = (kern.data_offsets[data_sel] if key == "data_kernel" else kern.offsets[sel]).tolist()
            y = curve[key][data_sel if key == "data_kernel" else sel]
            y = (y - y.nanmean()).tolist()  # softmax ignores a constant: curves share a baseline
            fig.add_scatter(x=x, y=y, mode=mode, name=f"{curve['name']} {key}", line={"dash": dash, "color": colour},
                            marker={"size": 4}, legendgroup=curve["name"])
    fig.update_layout(title=_title(kern.provenance, "positional kernels (score vs Δ)"), template=TEMPLATE,
                      xaxis_title="Δ = key position - query position",
                      yaxis_title="score − its mean over the Δ shown")
    return fig


def ablation_bars(abl) -> go.Figure:
    """Two panels: each head's pattern KL and the loss change, a bar per ablation."""
    frame = abl.to_frame()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("KL(clean ‖ ablated) of the head's attention", "loss change (nats)"))
    for n, (name, group) in enumerate(frame.groupby("ablation", sort=False)):
        for row, col in ((1, "pattern_kl"), (2, "loss_change")):
            fig.add_bar(x=group["name"], y=group[col], name=name, marker_color=_colour(n), legendgroup=name,
                        showlegend=row == 1, row=row, col=1)
    fig.update_layout(barmode="group", title=_title(abl.provenance, f"band ablation (clean loss {abl.clean_loss:.3f})"),
                      template=TEMPLATE, height=600)
    return fig


def circuit_lines(circ, layer: int, head: int) -> go.Figure:
    """One head: ||W_Q R W_K^T|| per part against the offset, the total, and the plain W_Q W_K^T."""
    i = circ.layers.index(layer)
    x = [str(o) for o in circ.offsets.tolist()]
    fig = go.Figure()
    for p, part in enumerate(part_names(circ.geometry.n_bands)):
        fig.add_scatter(x=x, y=circ.terms[i, head, p, 0].tolist(), mode="lines+markers", name=f"{part} q·k",
                        line={"color": _colour(p)})
    fig.add_scatter(x=x, y=circ.total[i, head].tolist(), mode="lines+markers", name="W_Q R(Δ) W_K^T (all)",
                    line={"color": "black", "width": 3})
    fig.add_scatter(x=x, y=[circ.plain[i, head].item()] * len(x), mode="lines", name="plain W_Q W_K^T (TL)",
                    line={"color": "black", "dash": "dash"})
    fig.add_scatter(x=x, y=(circ.difference[i, head] * circ.plain[i, head]).tolist(), mode="lines",
                    name="‖W_Q (R(Δ) − I) W_K^T‖", line={"color": "crimson", "dash": "dot"})
    fig.update_xaxes(type="category", title="Δ = key position - query position")
    fig.update_layout(title=f"RoPE-aware QK circuit of {head_label(layer, head)} (Frobenius norms) · {circ.model}",
                      template=TEMPLATE, yaxis_title="norm")
    return fig


def position_tests(tests) -> go.Figure:
    """Left: gap KL measured and kernel-predicted against the positional index; right: reversal changes."""
    frame = tests.to_frame()
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"probe moved by {tests.gap} positions",
                                                        "context reversed"))
    text = frame["name"]
    fig.add_scatter(x=frame["positional_index"], y=frame["gap_kl"], text=text, mode="markers+text",
                    textposition="top center", name="gap KL (measured)", row=1, col=1)
    fig.add_scatter(x=frame["positional_index"], y=frame["gap_kl_kernel"], text=text, mode="markers",
                    marker={"symbol": "x"}, name="gap KL (kernel prediction)", row=1, col=1)
    fig.add_scatter(x=frame["reverse_position_tv"], y=frame["reverse_token_tv"], text=text, mode="markers+text",
                    textposition="top center", name="reversal", row=1, col=2)
    fig.update_xaxes(title="positional index", row=1, col=1)
    fig.update_yaxes(title="KL", row=1, col=1)
    fig.update_xaxes(title="change by position (TV)", row=1, col=2)
    fig.update_yaxes(title="change by token (TV)", row=1, col=2)
    fig.update_layout(title=_title(tests.provenance, f"position tests (shift by {tests.shift}: max KL "
                                   f"{frame['shift_kl'].max():.2g})"), template=TEMPLATE)
    return fig


def training_lines(run, value: str = "rotary_share") -> go.Figure:
    """`value` per head against training step, one line per head, checkpoints in training order."""
    frame = run.frame
    if value not in frame:
        raise InputError(f"value={value!r} is not a column: {list(frame.columns)}.")
    fig = go.Figure()
    for n, (name, group) in enumerate(frame.groupby("name", sort=False)):
        fig.add_scatter(x=group["step"].astype(str), y=group[value], mode="lines+markers", name=name,
                        line={"color": _colour(n)}, customdata=group["label"],
                        hovertemplate=f"{name}<br>step %{{x}}<br>{value} %{{y:.3f}}<br>%{{customdata}}<extra></extra>")
    order = [str(s) for s in frame.drop_duplicates("step").sort_values("step")["step"]]
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, title="training step")
    fig.update_layout(title=f"{value} per head across checkpoints of {run.model}", yaxis_title=value,
                      template=TEMPLATE)
    return fig


def _colour(n: int) -> str:
    import plotly.colors

    palette = plotly.colors.qualitative.D3
    return palette[n % len(palette)]
