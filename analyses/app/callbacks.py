"""The page's callbacks: thin functions that read the controls, call `views`, and return figures.

    >>> from analyses.app.server import create_app
    >>> app = create_app()                    # register(app, explorer) ran inside
    >>> "scores-a.figure" in app.callback_map
    True
    >>> revision_marks(["step0", "step1", "step2"])
    {0: '0', 1: '1', 2: '2'}

Every view callback returns `no_update` for a tab that is not shown, and for pane B while compare
mode is off, so only what is on screen is computed. Errors never escape: `views` turns them into
figures, and the status line of each pane says what is wrong and how to fix it.
"""

from __future__ import annotations

from analyses.app import compute, views
from analyses.app.explorer import Explorer, Request
from analyses.app.layout import PANES
from interp.errors import InterpError

MARKS = 8  # labelled checkpoints on a long slider


def register(app, explorer: Explorer) -> None:
    """Attach every callback of the page to `app`."""
    for pane in PANES:
        _model(app, explorer, pane)
        _status(app, explorer, pane)
        _attention(app, explorer, pane)
        _scores(app, explorer, pane)
        _lens(app, explorer, pane)
        for view in views.optional_views():
            _optional(app, explorer, pane, view)
    _selection(app, explorer)
    _prompt_and_query(app)
    _differences(app, explorer)

    from dash import Input, Output

    @app.callback(Output("main", "className"), Input("compare", "value"))
    def compare_mode(value):
        return "compare" if value else "single"


def request(explorer: Explorer, model: str, index, prompt: str) -> Request:
    """The pane's request; an unknown model or bad index leaves a revision the views will refuse."""
    try:
        revision = explorer.revision_at(model, index)
    except InterpError:
        revision = ""
    return Request(model if isinstance(model, str) else "", revision, prompt if isinstance(prompt, str) else "")


def revision_marks(revisions: list[str]) -> dict:
    """Slider marks: every checkpoint when few, else about MARKS of them and the last."""
    step = 1 if len(revisions) <= 16 else max(1, len(revisions) // MARKS)
    shown = list(range(0, len(revisions), step))
    if len(revisions) - 1 - shown[-1] < step / 2:
        shown.pop()  # too close to the last one to label both
    shown.append(len(revisions) - 1)
    return {i: revisions[i].removeprefix("step") for i in shown}


def slider(explorer: Explorer, key: str, revision: str | None = None) -> tuple[int, dict | None, int, bool]:
    """The checkpoint slider of a model: (max, marks, value, disabled), at `revision` or the default one."""
    try:
        entry = explorer.entry(key)
        revisions = explorer.catalog.revisions(entry)
        default = revisions.index(revision or explorer.catalog.default_revision(entry))
    except InterpError:
        return 0, None, 0, True
    return len(revisions) - 1, revision_marks(revisions), default, len(revisions) == 1


def heads(n_layers: int, n_heads: int) -> tuple[list[dict], list[dict]]:
    """Options of the layer and head pickers."""
    return ([{"label": f"L{L} ", "value": L} for L in range(n_layers)],
            [{"label": f"H{h} ", "value": h} for h in range(n_heads)])


def _hidden(tab: str, want: str, pane: str, compare) -> bool:
    return tab != want or (pane == "b" and not compare)


def _model(app, explorer: Explorer, pane: str) -> None:
    from dash import Input, Output, State, no_update

    @app.callback(Output(f"rev-{pane}", "max"), Output(f"rev-{pane}", "marks"), Output(f"rev-{pane}", "value"),
                  Output(f"rev-{pane}", "disabled"), Input(f"model-{pane}", "value"), prevent_initial_call=True)
    def checkpoints(key):
        return slider(explorer, key)

    @app.callback(Output(f"model-{pane}", "options"), Input(f"model-{pane}", "search_value"),
                  State(f"model-{pane}", "value"), prevent_initial_call=True)
    def typed_name(search, value):
        options = [{"label": e.label, "value": e.key} for e in explorer.catalog.entries()]
        known = {o["value"] for o in options}
        extra = [v.strip() for v in (search, value) if isinstance(v, str) and v.strip() and v.strip() not in known]
        if not extra and not search:
            return no_update
        return options + [{"label": f"{v} (typed)", "value": v} for v in dict.fromkeys(extra)]


def _status(app, explorer: Explorer, pane: str) -> None:
    from dash import Input, Output

    @app.callback(Output(f"revision-{pane}", "children"), Output(f"info-{pane}", "children"),
                  Output(f"msg-{pane}", "children"), Input(f"model-{pane}", "value"), Input(f"rev-{pane}", "value"),
                  Input("prompt-store", "data"), Input("compare", "value"))
    def status(model, index, prompt, compare):
        req = request(explorer, model, index, prompt)
        if pane == "b" and not compare:
            return req.revision, "", ""
        try:
            loaded = explorer.check(req)
        except InterpError as err:
            return req.revision, "", str(err)
        except Exception as err:  # noqa: BLE001 - the page reports it; the server keeps running
            return req.revision, "", f"Could not load {model}: {type(err).__name__}: {err}"
        return req.revision, describe(loaded), ""


def describe(model) -> str:
    """One line about a loaded model: architecture, layers, heads, positions, residual form, parameters."""
    params = sum(p.numel() for p in model.hf.parameters())
    residual = "parallel" if model.parallel_residual else "sequential"
    positions = "rotary" if model.arch.positional == "rotary" else "learned"
    return (f"{model.arch.kind}: {model.n_layers} layers × {model.n_heads} heads, d_model {model.d_model}, "
            f"{positions} positions, {residual} residual, {params / 1e6:.1f}M parameters "
            f"({str(model.dtype).removeprefix('torch.')})")


def _selection(app, explorer: Explorer) -> None:
    from dash import Input, Output, State, ctx, no_update

    clicks = [Input(f"{g}-{p}", "clickData") for g in ("grid", "scores") for p in PANES]

    @app.callback(Output("layer", "options"), Output("layer", "value"), Output("head", "options"),
                  Output("head", "value"), Input("model-a", "value"), Input("rev-a", "value"),
                  Input("model-b", "value"), Input("rev-b", "value"), Input("compare", "value"), *clicks,
                  State("layer", "value"), State("head", "value"), State("layer", "options"),
                  State("head", "options"), prevent_initial_call=True)
    def select(model_a, rev_a, model_b, rev_b, compare, grid_a, grid_b, scores_a, scores_b, layer, head,
               layer_options, head_options):
        shapes = {}
        for pane, model, index in (("a", model_a, rev_a), ("b", model_b, rev_b)):
            try:
                shapes[pane] = explorer.shape(model, explorer.revision_at(model, index))
            except InterpError:
                pass
        if "a" not in shapes:
            return no_update, no_update, no_update, no_update
        clicked = {"grid-a": grid_a, "grid-b": grid_b, "scores-a": scores_a, "scores-b": scores_b}
        trigger = ctx.triggered_id
        new_layer, new_head = layer, head
        if trigger in clicked and clicked[trigger] and trigger[-1] in shapes:
            new_layer, new_head = _clicked(trigger, clicked[trigger]["points"][0], shapes[trigger[-1]], layer)
        panes = [s for p, s in shapes.items() if p == "a" or compare]
        n_layers, n_heads = max(s[0] for s in panes), max(s[1] for s in panes)
        new_layer = new_layer if isinstance(new_layer, int) and 0 <= new_layer < n_layers else 0
        new_head = new_head if isinstance(new_head, int) and 0 <= new_head < n_heads else 0
        layers, heads_ = heads(n_layers, n_heads)
        return tuple(no_update if new == old else new for new, old in  # unchanged: nothing re-renders
                     ((layers, layer_options), (new_layer, layer), (heads_, head_options), (new_head, head)))


def _clicked(trigger: str, point: dict, shape: tuple[int, int], layer) -> tuple[int, int]:
    """(layer, head) of a click on a head grid (by subplot) or on a score heatmap (by cell)."""
    if trigger.startswith("grid"):
        return views.grid_click(*shape, layer if isinstance(layer, int) else 0, int(point["curveNumber"]))
    return int(point["y"]), int(point["x"])


def _prompt_and_query(app) -> None:
    from dash import Input, Output, State, ctx, no_update

    @app.callback(Output("prompt-store", "data"), Input("run", "n_clicks"), State("prompt", "value"),
                  prevent_initial_call=True)
    def run(_, prompt):
        return prompt if isinstance(prompt, str) else ""

    @app.callback(Output("query", "data"), Input("strip-a", "hoverData"), Input("strip-b", "hoverData"),
                  Input("prompt-store", "data"), prevent_initial_call=True)
    def query(hover_a, hover_b, _):
        if ctx.triggered_id == "prompt-store":
            return None
        hover = hover_a if ctx.triggered_id == "strip-a" else hover_b
        position = (hover or {}).get("points", [{}])[0].get("customdata")
        return position if isinstance(position, int) and position >= 0 else no_update


def _attention(app, explorer: Explorer, pane: str) -> None:
    from dash import Input, Output, ctx, no_update

    shown = [Input("tabs", "value"), Input("compare", "value"), Input("prompt-store", "data"),
             Input(f"model-{pane}", "value"), Input(f"rev-{pane}", "value")]
    picked = [Input("layer", "value"), Input("head", "value")]

    @app.callback(Output(f"head-{pane}", "figure"), Output(f"grid-{pane}", "figure"), *shown, *picked)
    def attention(tab, compare, prompt, model, index, layer, head):
        if _hidden(tab, "attention", pane, compare):
            return no_update, no_update
        one, grid = views.attention(explorer, request(explorer, model, index, prompt), layer, head)
        if set(ctx.triggered_prop_ids) == {"head.value"} and grid["data"]:
            return one, no_update  # the grid does not depend on the head: nothing to redraw
        return one, grid

    @app.callback(Output(f"strip-{pane}", "figure"), *shown, *picked, Input("query", "data"))
    def strip(tab, compare, prompt, model, index, layer, head, query):
        if _hidden(tab, "attention", pane, compare):
            return no_update
        return views.strip(explorer, request(explorer, model, index, prompt), layer, head, query)

    @app.callback(Output(f"tokens-{pane}", "figure"), *shown, Input("query", "data"))
    def token_rows(tab, compare, prompt, model, index, query):
        if _hidden(tab, "attention", pane, compare):
            return no_update
        return views.token_rows(explorer, request(explorer, model, index, prompt), query)


def _scores(app, explorer: Explorer, pane: str) -> None:
    from dash import Input, Output, no_update

    @app.callback(Output(f"scores-{pane}", "figure"), Input("tabs", "value"), Input("compare", "value"),
                  Input("prompt-store", "data"), Input(f"model-{pane}", "value"), Input(f"rev-{pane}", "value"),
                  Input("detector", "value"), Input("scores-on", "value"))
    def scores(tab, compare, prompt, model, index, detector, on):
        if _hidden(tab, "detectors", pane, compare):
            return no_update
        return views.scores(explorer, request(explorer, model, index, prompt), detector, on)


def _lens(app, explorer: Explorer, pane: str) -> None:
    from dash import Input, Output, no_update

    @app.callback(Output(f"lens-{pane}", "figure"), Output(f"lens-target-{pane}", "figure"),
                  Input("tabs", "value"), Input("compare", "value"), Input("prompt-store", "data"),
                  Input(f"model-{pane}", "value"), Input(f"rev-{pane}", "value"), Input("metric", "value"),
                  Input("target", "value"))
    def lens(tab, compare, prompt, model, index, metric, target):
        if _hidden(tab, "lens", pane, compare):
            return no_update, no_update
        return views.lens(explorer, request(explorer, model, index, prompt), metric, target or None)


def _optional(app, explorer: Explorer, pane: str, view: str) -> None:
    from dash import Input, Output, no_update

    n = compute.EXTRAS[view].n_figures

    @app.callback(*[Output(f"{view}-{i}-{pane}", "figure") for i in range(n)], Input("tabs", "value"),
                  Input("compare", "value"), Input("prompt-store", "data"), Input(f"model-{pane}", "value"),
                  Input(f"rev-{pane}", "value"))
    def optional(tab, compare, prompt, model, index):
        if _hidden(tab, view, pane, compare):
            return (no_update,) * n if n > 1 else no_update
        figs = views.optional(explorer, view, request(explorer, model, index, prompt))
        return figs if n > 1 else figs[0]


def _differences(app, explorer: Explorer) -> None:
    from dash import Input, Output, no_update

    panes = [Input("tabs", "value"), Input("compare", "value"), Input("prompt-store", "data"),
             Input("model-a", "value"), Input("rev-a", "value"), Input("model-b", "value"), Input("rev-b", "value")]

    def pair(prompt, model_a, rev_a, model_b, rev_b) -> tuple[Request, Request]:
        return request(explorer, model_a, rev_a, prompt), request(explorer, model_b, rev_b, prompt)

    @app.callback(Output("diff-attention", "figure"), *panes, Input("layer", "value"), Input("head", "value"))
    def attention(tab, compare, prompt, ma, ra, mb, rb, layer, head):
        if _hidden(tab, "attention", "b", compare):
            return no_update
        return views.attention_difference(explorer, *pair(prompt, ma, ra, mb, rb), layer, head)

    @app.callback(Output("diff-detectors", "figure"), *panes, Input("detector", "value"), Input("scores-on", "value"))
    def scores(tab, compare, prompt, ma, ra, mb, rb, detector, on):
        if _hidden(tab, "detectors", "b", compare):
            return no_update
        return views.scores_difference(explorer, *pair(prompt, ma, ra, mb, rb), detector, on)

    @app.callback(Output("diff-lens", "figure"), *panes, Input("metric", "value"))
    def lens(tab, compare, prompt, ma, ra, mb, rb, metric):
        if _hidden(tab, "lens", "b", compare):
            return no_update
        return views.lens_difference(explorer, *pair(prompt, ma, ra, mb, rb), metric)
