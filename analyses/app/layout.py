"""The page: model and checkpoint pickers for two panes, the prompt, and one tab per view.

    >>> from analyses.app.layout import PageSpec, page
    >>> options = [{"label": "toy-2l", "value": "toy-2l"}]
    >>> tree = page(PageSpec(options, "toy-2l", "toy-4l", "Hi", ("induction",), ("kl",)))
    >>> type(tree).__name__
    'Div'

Component ids are plain strings; pane-specific ones end in `-a` or `-b`. Nothing on the page
can name a path: the model dropdown's values are catalog keys or hub names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PANES = ("a", "b")
TABS = {"attention": "Attention", "detectors": "Head detectors", "lens": "Logit lens"}
MAX_PROMPT_INPUT = 20_000
OVERLAY = {"visibility": "visible", "opacity": 0.5}  # long work: a spinner over the old figures, not a blank
GRAPH_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png"}}
PLACEHOLDER = {"data": [], "layout": {"height": 80, "xaxis": {"visible": False}, "yaxis": {"visible": False}}}

# dcc.Graph calls Plotly.Plots.resize whenever its div changes size, even when the figure it just drew
# made it taller: a second full draw at the same width. A figure with its own height needs none.
STEADY = """
(function guard() {
  const plots = window.Plotly && window.Plotly.Plots;
  if (!plots) { setTimeout(guard, 20); return; }
  const resize = plots.resize;
  plots.resize = function (gd) {
    const full = gd && gd._fullLayout, width = gd && gd.clientWidth;
    if (full && gd.layout && gd.layout.height && width && Math.abs(full.width - width) < 1) {
      return Promise.resolve(gd);
    }
    return resize.apply(this, arguments);
  };
})();
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; overflow-y: scroll; }
#main { padding: 12px 20px; }
h1 { font-size: 20px; margin: 4px 0 12px; }
.controls { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
.pane-controls { flex: 1 1 420px; min-width: 340px; border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; }
.pane-title { font-weight: 600; margin-bottom: 4px; }
.revision { font-family: monospace; margin-left: 6px; }
.message { color: #a0330b; white-space: pre-wrap; margin: 4px 0; }
.message:empty { display: none; }
.info { color: #555; font-size: 13px; margin: 4px 0; }
.prompt-row { display: flex; gap: 8px; align-items: flex-start; margin: 10px 0; }
#prompt { flex: 1; height: 56px; font-family: monospace; font-size: 14px; }
#run { height: 40px; padding: 0 20px; font-size: 15px; cursor: pointer; }
.pickers { display: flex; gap: 24px; flex-wrap: wrap; align-items: center; margin: 8px 0; }
.pickers label { margin-right: 8px; }
.columns { display: flex; gap: 12px; }
.column { flex: 1 1 0; min-width: 0; }
.single .pane-b, .single .difference { display: none; }
.difference { border-top: 1px dashed #bbb; margin-top: 8px; }
"""


@dataclass(frozen=True)
class PageSpec:
    """What the page offers: models, defaults, detectors and metrics, and the optional tabs."""

    options: list[dict]  # the model dropdown: {"label", "value"}
    model_a: str
    model_b: str
    prompt: str
    detectors: tuple[str, ...]
    metrics: tuple[str, ...]
    compare_note: str = ""
    optional: dict[str, tuple[str, int]] = field(default_factory=dict)  # view -> (tab label, figures)
    sliders: dict[str, tuple] = field(default_factory=dict)  # pane -> (max, marks, value, disabled) at start
    layers: list[dict] = field(default_factory=list)  # layer picker options at start
    heads: list[dict] = field(default_factory=list)


def page(spec: PageSpec):
    """The whole page."""
    from dash import dcc, html

    tabs = [dcc.Tab(label=TABS[name], value=name, children=_tab(name, spec)) for name in TABS]
    tabs += [dcc.Tab(label=label, value=name, children=_optional_tab(name, n))
             for name, (label, n) in spec.optional.items()]
    return html.Div(id="main", className="single", children=[
        html.H1("pythia-interp explorer"),
        html.Div(className="controls", children=[
            _pane_controls("a", spec, spec.model_a, "Model A"),
            _pane_controls("b", spec, spec.model_b, "Model B", note=spec.compare_note),
        ]),
        dcc.Checklist(id="compare", options=[{"label": " compare two models or checkpoints", "value": "on"}],
                      value=[], style={"margin": "8px 0"}),
        html.Div(className="prompt-row", children=[
            dcc.Textarea(id="prompt", value=spec.prompt, maxLength=MAX_PROMPT_INPUT,
                         placeholder="Type a prompt, then press Run"),
            html.Button("Run", id="run", n_clicks=0),
        ]),
        dcc.Store(id="prompt-store", data=spec.prompt),
        dcc.Store(id="query", data=None),
        dcc.Store(id="shown", data={}),  # per group of outputs, the inputs of what it shows (callbacks.py)
        dcc.Tabs(id="tabs", value="attention", children=tabs),
    ])


def _pane_controls(pane: str, spec: PageSpec, model: str, title: str, note: str = ""):
    from dash import dcc, html

    top, marks, value, disabled = spec.sliders.get(pane, (0, None, 0, True))
    return html.Div(className=f"pane-controls pane-{pane}", children=[
        html.Div(title, className="pane-title"),
        dcc.Dropdown(id=f"model-{pane}", options=spec.options, value=model, clearable=False, searchable=True,
                     placeholder="Choose a model or type a hub name"),
        html.Div(className="info", children=["checkpoint:", html.Span(id=f"revision-{pane}", className="revision")]),
        dcc.Slider(id=f"rev-{pane}", min=0, max=top, step=1, value=value, marks=marks, disabled=disabled,
                   updatemode="mouseup", allow_direct_input=False),
        html.Div(id=f"info-{pane}", className="info"),
        html.Div(note, className="info") if note else None,
        html.Div(id=f"msg-{pane}", className="message"),
    ])


def _tab(name: str, spec: PageSpec):
    from dash import dcc, html

    if name == "attention":
        pickers = [html.Label("layer"), dcc.RadioItems(id="layer", options=spec.layers, value=0, inline=True),
                   html.Label("head"), dcc.RadioItems(id="head", options=spec.heads, value=0, inline=True)]
        graphs = ("head", "grid", "strip", "tokens")
    elif name == "detectors":
        pickers = [html.Label("detector"),
                   dcc.Dropdown(id="detector", options=list(spec.detectors), value="induction", clearable=False,
                                style={"width": "220px"}),
                   html.Label("scored on"),
                   dcc.RadioItems(id="scores-on", value="random", inline=True, options=[
                       {"label": " repeated random tokens ", "value": "random"},
                       {"label": " the prompt", "value": "prompt"}])]
        graphs = ("scores",)
    else:
        pickers = [html.Label("metric"),
                   dcc.Dropdown(id="metric", options=list(spec.metrics), value="kl", clearable=False,
                                style={"width": "200px"}),
                   html.Label("target token"),
                   dcc.Input(id="target", type="text", value="", debounce=True, maxLength=200,
                             placeholder="e.g.  the")]
        graphs = ("lens", "lens-target")
    return html.Div([html.Div(pickers, className="pickers"), _columns(graphs), _difference(name)])


def _optional_tab(name: str, n_figures: int):
    from dash import html

    return html.Div([_columns(tuple(f"{name}-{i}" for i in range(n_figures))), html.Div(className="difference")])


def _columns(graphs: tuple[str, ...]):
    from dash import dcc, html

    def column(pane: str):
        items = [dcc.Graph(id=f"{g}-{pane}", config=GRAPH_CONFIG, figure=PLACEHOLDER)
                 for g in graphs]
        return html.Div(dcc.Loading(items, type="circle", delay_show=400, overlay_style=OVERLAY),
                        className=f"column pane-{pane}")

    return html.Div([column(p) for p in PANES], className="columns")


def _difference(name: str):
    from dash import dcc, html

    graph = dcc.Graph(id=f"diff-{name}", config=GRAPH_CONFIG, figure=PLACEHOLDER)
    return html.Div(dcc.Loading(graph, type="circle", delay_show=400, overlay_style=OVERLAY), className="difference")
