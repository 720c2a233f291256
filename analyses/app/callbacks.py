"""The page's callback: one request per click, and only the figures whose inputs changed are redrawn.

    >>> from analyses.app.server import create_app
    >>> app = create_app()                    # register(app, explorer) ran inside
    >>> sum("head-a.figure" in key for key in app.callback_map)      # one callback draws every figure
    1
    >>> revision_marks(["step0", "step1", "step2"])
    {0: '0', 1: '1', 2: '2'}

Every control is an input of one callback, `update`, so a click costs one round trip and never
waits for another callback (no chains). The `shown` store records, per group of outputs, the
inputs of what the page shows; a group is recomputed only when its inputs differ and only while it
is on screen (its tab; pane B only in compare mode). When a newer click supersedes a request,
Dash drops its response and the record with it, so nothing stays stale.

Errors never escape: `views` turns them into figures, and each pane's status line says what is
wrong and how to fix it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from analyses.app import compute, views
from analyses.app.explorer import Explorer, Request
from analyses.app.layout import PANES
from interp.errors import InterpError

MARKS = 8  # labelled checkpoints on a long slider
log = logging.getLogger("analyses.app")
NEIGHBOURS = (-1, 1)  # slider positions computed in the background after each answer

Key = Callable[[Explorer, Request, "Page"], tuple]
Draw = Callable[[Explorer, Request, "Page"], Any]


@dataclass(frozen=True)
class Group:
    """Figures drawn together on one tab of a pane: what they depend on besides the pane's request, how to draw."""

    tab: str
    graphs: tuple[str, ...]  # graph ids without the pane's suffix
    key: Key
    draw: Draw


GROUPS = (
    Group("attention", ("head",), lambda e, r, p: (p.layer, p.head),
          lambda e, r, p: views.pattern(e, r, p.layer, p.head)),
    Group("attention", ("grid",), lambda e, r, p: views.grid_key(e, r, p.layer),
          lambda e, r, p: views.grid(e, r, p.layer)),
    Group("attention", ("strip",), lambda e, r, p: (p.layer, p.head, p.query),
          lambda e, r, p: views.strip(e, r, p.layer, p.head, p.query)),
    Group("attention", ("tokens",), lambda e, r, p: (p.query,), lambda e, r, p: views.token_rows(e, r, p.query)),
    Group("detectors", ("scores",), lambda e, r, p: (p.detector, p.on),
          lambda e, r, p: views.scores(e, r, p.detector, p.on)),
    Group("lens", ("lens", "lens-target"), lambda e, r, p: (p.metric, p.target),
          lambda e, r, p: views.lens(e, r, p.metric, p.target or None)),
)
DIFFERENCES = {  # tab -> (what the difference depends on besides both requests, how to draw it)
    "attention": (lambda p: (p.layer, p.head),
                  lambda e, a, b, p: views.attention_difference(e, a, b, p.layer, p.head)),
    "detectors": (lambda p: (p.detector, p.on),
                  lambda e, a, b, p: views.scores_difference(e, a, b, p.detector, p.on)),
    "lens": (lambda p: (p.metric,), lambda e, a, b, p: views.lens_difference(e, a, b, p.metric)),
}
CONTROLS = {  # keyword -> (component, property) of every input
    "run": ("run", "n_clicks"), "tab": ("tabs", "value"), "compare": ("compare", "value"),
    "layer": ("layer", "value"), "head": ("head", "value"), "detector": ("detector", "value"),
    "on": ("scores-on", "value"), "metric": ("metric", "value"), "target": ("target", "value"),
    **{f"{name}_{p}": (f"{name}-{p}", prop) for p in PANES for name, prop in
       (("model", "value"), ("rev", "value"), ("grid", "clickData"), ("scores", "clickData"), ("strip", "hoverData"))},
}
STATES = {"prompt": ("prompt", "value"), "ran": ("prompt-store", "data"), "query": ("query", "data"),
          "shown": ("shown", "data"), "layers": ("layer", "options"), "heads": ("head", "options")}


def optional_groups() -> tuple[Group, ...]:
    """A group per installed optional view (RoPE probing, patching), all its figures drawn at once."""
    return tuple(Group(view, tuple(f"{view}-{i}" for i in range(compute.EXTRAS[view].n_figures)),
                       lambda e, r, p: (), lambda e, r, p, v=view: views.optional(e, v, r))
                 for view in views.optional_views())


def output_names(groups: tuple[Group, ...]) -> list[str]:
    """Every "id.prop" the callback writes."""
    names = ["prompt-store.data", "query.data", "shown.data", "main.className", "layer.options", "layer.value",
             "head.options", "head.value", *(f"diff-{tab}.figure" for tab in DIFFERENCES)]
    for p in PANES:
        names += [f"rev-{p}.{prop}" for prop in ("max", "marks", "value", "disabled")]
        names += [f"{name}-{p}.children" for name in ("revision", "info", "msg")]
        names += [f"{graph}-{p}.figure" for group in groups for graph in group.graphs]
    return names


def register(app, explorer: Explorer) -> None:
    """Attach the page's callbacks to `app`: `update`, and the model dropdown's typed names."""
    from dash import Input, Output, State, ctx, no_update

    groups = GROUPS + optional_groups()
    names = output_names(groups)
    outputs = {name: Output(*name.split(".")) for name in names}

    @app.callback(output=outputs, inputs={k: Input(*v) for k, v in CONTROLS.items()},
                  state={k: State(*v) for k, v in STATES.items()})
    def update(**values):
        try:
            out = refresh(explorer, Page.read(values, set(ctx.triggered_prop_ids)), groups)
        except Exception as err:  # noqa: BLE001 - the page says so; the server keeps running
            log.exception("the page's update failed")
            out = {"msg-a.children": f"Something went wrong ({type(err).__name__}: {err}); the server log has "
                                     "the details."}
        return {name: out.get(name, no_update) for name in names}

    _typed_names(app, explorer)


@dataclass
class Page:
    """The page's controls as one request sees them; `refresh` moves sliders and heads as it goes."""

    tab: str
    compare: bool
    prompt: str
    query: Any
    layer: Any
    head: Any
    detector: Any
    on: Any
    metric: Any
    target: Any
    models: dict[str, Any]
    indices: dict[str, Any]
    options: tuple[Any, Any]  # the layer and head pickers' options shown now
    shown: dict[str, Any]  # group -> the inputs of what it shows
    events: dict[str, Any] = field(default_factory=dict)  # "run", "grid-a", "strip-b", ... -> their value

    @classmethod
    def read(cls, v: dict, triggered: set[str]) -> Page:
        """The page from the callback's inputs and states, and the "id.prop" names that triggered it."""
        events = {CONTROLS[k][0]: v[k] for k in CONTROLS
                  if ".".join(CONTROLS[k]) in triggered and k.split("_")[0] in ("run", "grid", "scores", "strip")}
        ran = v["ran"] if isinstance(v["ran"], str) else ""
        prompt = (v["prompt"] if isinstance(v["prompt"], str) else "") if "run" in events else ran
        return cls(tab=v["tab"], compare=bool(v["compare"]), prompt=prompt, query=v["query"], layer=v["layer"],
                   head=v["head"], detector=v["detector"], on=v["on"], metric=v["metric"], target=v["target"],
                   models={p: v[f"model_{p}"] for p in PANES}, indices={p: v[f"rev_{p}"] for p in PANES},
                   options=(v["layers"], v["heads"]), shown=dict(v["shown"] or {}), events=events)

    @property
    def panes(self) -> tuple[str, ...]:
        """The panes on screen."""
        return PANES if self.compare else PANES[:1]


def refresh(explorer: Explorer, page: Page, groups: tuple[Group, ...]) -> dict[str, Any]:
    """The outputs that change: sliders of new models, pickers, status lines, then the figures on screen."""
    out: dict[str, Any] = {}
    before = dict(page.shown)
    _prompt(page, out)
    for pane in PANES:
        _slider(explorer, page, pane, out)
    _selection(explorer, page, out)
    requests = {pane: request(explorer, page.models[pane], page.indices[pane], page.prompt) for pane in PANES}
    for pane in PANES:
        _status(explorer, page, pane, requests[pane], out)
    for pane in page.panes:
        for group in groups:
            if group.tab == page.tab:
                _draw(explorer, page, pane, requests[pane], group, out)
    _difference(explorer, page, requests, out)
    moved = [k for k in page.shown if k.startswith(("status-", "tab")) and page.shown[k] != before.get(k)]
    if moved:  # another checkpoint, model, prompt or tab: its neighbours are likely next
        _prefetch(explorer, page, [g for g in groups if g.tab == page.tab])
    if page.shown != before:
        out["shown.data"] = page.shown
    return out


def _record(page: Page, name: str, key) -> bool:
    """Record that `name` now shows `key`; True when that differs from what it showed."""
    key = _jsonable(key)
    if page.shown.get(name) == key:
        return False
    page.shown[name] = key
    return True


def _prompt(page: Page, out: dict) -> None:
    """Run stores the typed prompt; a new prompt, or a hovered token, sets the query token."""
    if "run" in page.events:
        out["prompt-store.data"] = page.prompt
    digest = hashlib.blake2b(page.prompt.encode(), digest_size=8).hexdigest()
    if page.shown.get("prompt", digest) != digest:
        page.query = None  # positions of another prompt
    page.shown["prompt"] = digest
    for pane in PANES:
        hovered = page.events.get(f"strip-{pane}") or {}
        position = (hovered.get("points") or [{}])[0].get("customdata")
        if isinstance(position, int) and position >= 0:
            page.query = position
    if _record(page, "query", page.query):
        out["query.data"] = page.query
    if _record(page, "class", page.compare):
        out["main.className"] = "compare" if page.compare else "single"
    _record(page, "tab", page.tab)


def _slider(explorer: Explorer, page: Page, pane: str, out: dict) -> None:
    """A model not chosen before gets its checkpoints on the slider, at its default one."""
    if not _record(page, f"slider-{pane}", page.models[pane]):
        return
    top, marks, value, disabled = slider(explorer, page.models[pane])
    out.update({f"rev-{pane}.max": top, f"rev-{pane}.marks": marks, f"rev-{pane}.value": value,
                f"rev-{pane}.disabled": disabled})
    page.indices[pane] = value


def _selection(explorer: Explorer, page: Page, out: dict) -> None:
    """Layer and head pickers: options for the panes' shapes; a click on a grid or on scores picks a head."""
    shapes = {}
    for pane in page.panes:
        model = page.models[pane]
        try:
            shapes[pane] = explorer.shape(model, explorer.revision_at(model, page.indices[pane]))
        except InterpError:
            pass
    if "a" not in shapes:
        return
    before = {"layer.value": page.layer, "head.value": page.head, "layer.options": page.options[0],
              "head.options": page.options[1]}
    for pane in shapes:
        _clicked(explorer, page, pane)
    n_layers, n_heads = max(s[0] for s in shapes.values()), max(s[1] for s in shapes.values())
    page.layer = page.layer if isinstance(page.layer, int) and 0 <= page.layer < n_layers else 0
    page.head = page.head if isinstance(page.head, int) and 0 <= page.head < n_heads else 0
    layers, heads_ = heads(n_layers, n_heads)
    new = {"layer.value": page.layer, "head.value": page.head, "layer.options": layers, "head.options": heads_}
    out.update({name: value for name, value in new.items() if value != before[name]})


def _clicked(explorer: Explorer, page: Page, pane: str) -> None:
    """(layer, head) from a click on a pane's head grid (by tile) or score heatmap (by cell)."""
    grid, scores = page.events.get(f"grid-{pane}"), page.events.get(f"scores-{pane}")
    point = ((grid or scores or {}).get("points") or [None])[0]
    if not point:
        return
    if grid:
        req = request(explorer, page.models[pane], page.indices[pane], page.prompt)
        picked = views.grid_click(explorer, req, page.layer, point)
    else:
        picked = (point.get("y"), point.get("x"))
    if picked and all(isinstance(v, (int, float)) for v in picked):
        page.layer, page.head = int(picked[0]), int(picked[1])


def _status(explorer: Explorer, page: Page, pane: str, req: Request, out: dict) -> None:
    """The pane's revision, a line about its model, and what is wrong with the request (if anything)."""
    shown = pane in page.panes
    if not _record(page, f"status-{pane}", (req.model, req.revision, page.shown["prompt"], shown)):
        return
    out[f"revision-{pane}.children"] = req.revision
    info = message = ""
    if shown:
        try:
            info = describe(explorer.check(req))
        except InterpError as err:
            message = str(err)
        except Exception as err:  # noqa: BLE001 - the page reports it; the server keeps running
            message = f"Could not load {req.model}: {type(err).__name__}: {err}"
    out[f"info-{pane}.children"], out[f"msg-{pane}.children"] = info, message


def _draw(explorer: Explorer, page: Page, pane: str, req: Request, group: Group, out: dict) -> None:
    key = (req.model, req.revision, page.shown["prompt"], *group.key(explorer, req, page))
    if not _record(page, f"{group.graphs[0]}-{pane}", key):
        return
    figs = group.draw(explorer, req, page)
    figs = figs if isinstance(figs, tuple) else (figs,)
    out.update({f"{graph}-{pane}.figure": fig for graph, fig in zip(group.graphs, figs, strict=True)})


def _difference(explorer: Explorer, page: Page, requests: dict[str, Request], out: dict) -> None:
    """B - A of the tab's view, in compare mode."""
    if not page.compare or page.tab not in DIFFERENCES:
        return
    key, draw = DIFFERENCES[page.tab]
    a, b = requests["a"], requests["b"]
    if _record(page, f"diff-{page.tab}", (a.model, a.revision, b.model, b.revision, page.shown["prompt"], *key(page))):
        out[f"diff-{page.tab}.figure"] = draw(explorer, a, b, page)


def _prefetch(explorer: Explorer, page: Page, groups: list[Group]) -> None:
    """Compute the tab's figures at the slider's neighbouring checkpoints in the background."""
    neighbours = []
    for pane in page.panes:
        index = page.indices[pane]
        for step in NEIGHBOURS if isinstance(index, int) else ():
            neighbours.append(request(explorer, page.models[pane], index + step, page.prompt))
    snapshot = replace(page, shown={}, events={})

    def warm(req: Request) -> None:
        for group in groups:
            group.draw(explorer, req, snapshot)

    explorer.prefetch([r for r in neighbours if r.revision], warm)


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


def describe(model) -> str:
    """One line about a loaded model: architecture, layers, heads, positions, residual form, parameters."""
    params = sum(p.numel() for p in model.hf.parameters())
    residual = "parallel" if model.parallel_residual else "sequential"
    positions = "rotary" if model.arch.positional == "rotary" else "learned"
    return (f"{model.arch.kind}: {model.n_layers} layers × {model.n_heads} heads, d_model {model.d_model}, "
            f"{positions} positions, {residual} residual, {params / 1e6:.1f}M parameters "
            f"({str(model.dtype).removeprefix('torch.')})")


def _jsonable(key) -> Any:
    """A key as the store gives it back (tuples become lists)."""
    return [_jsonable(k) for k in key] if isinstance(key, (tuple, list)) else key


def _typed_names(app, explorer: Explorer) -> None:
    """A hub name typed in a model dropdown becomes an option (checked when chosen)."""
    from dash import Input, Output, State, no_update

    for pane in PANES:
        @app.callback(Output(f"model-{pane}", "options"), Input(f"model-{pane}", "search_value"),
                      State(f"model-{pane}", "value"), prevent_initial_call=True)
        def typed_name(search, value):
            options = [{"label": e.label, "value": e.key} for e in explorer.catalog.entries()]
            known = {o["value"] for o in options}
            extra = [v.strip() for v in (search, value) if isinstance(v, str) and v.strip() and v.strip() not in known]
            if not extra and not search:
                return no_update
            return options + [{"label": f"{v} (typed)", "value": v} for v in dict.fromkeys(extra)]
