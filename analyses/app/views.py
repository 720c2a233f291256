"""What each tab draws, as figure dicts built from the explorer's cached analysis results.

    >>> from analyses.app.catalog import Catalog
    >>> from analyses.app.explorer import Explorer, Request
    >>> explorer = Explorer(Catalog(hub_cache="/nonexistent"))
    >>> request = Request("toy-2l", "step3600", "The cat. The cat")
    >>> pattern(explorer, request, layer=1, head=0)["data"][0]["type"]
    'heatmap'
    >>> grid(explorer, request, layer=1)["layout"]["yaxis"]["ticktext"]     # every head of both layers
    ['L0', 'L1']
    >>> pattern(explorer, Request("toy-2l", "step3600", ""), 0, 0)["layout"]["annotations"][0]["text"]
    'The prompt is empty: type some text and press Run.'

Every function returns figures, never raises: bad input becomes a figure that says what to do.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

from analyses.app import compute, figures
from analyses.app.explorer import Explorer, Request
from interp.errors import InputError, InterpError
from interp.text import figure_label

GRID_ALL_LAYERS = 48  # up to this many heads the grid shows every layer; above, the chosen layer
GRID_COLUMNS = 16  # tiles to a row when the grid shows one layer
log = logging.getLogger("analyses.app")


def safely(n_figures: int):
    """Turn an InterpError (or any failure) into `n_figures` message figures instead of raising."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except InterpError as err:
                text = str(err)
            except Exception as err:  # the server keeps running; the page says what failed
                log.exception("view %s failed", fn.__name__)
                text = f"Something went wrong ({type(err).__name__}: {err}); the server log has the details."
            figs = tuple(figures.message(text) for _ in range(n_figures))
            return figs if n_figures > 1 else figs[0]

        return run

    return wrap


def grid_layers(n_layers: int, n_heads: int) -> bool:
    """Whether the head grid shows every layer (else only the chosen one)."""
    return n_layers * n_heads <= GRID_ALL_LAYERS


def grid_key(explorer: Explorer, request: Request, layer) -> tuple:
    """What the head grid of `request` depends on besides the request: nothing, or the chosen layer."""
    try:
        every = grid_layers(*explorer.shape(request.model, request.revision))
    except InterpError:
        every = True
    return ("all",) if every else (layer,)


@safely(1)
def pattern(explorer: Explorer, request: Request, layer: int, head: int) -> dict:
    """The chosen head's pattern (the analysis's figure)."""
    pats = explorer.patterns(request)
    _check_head(pats.n_layers, pats.n_heads, layer, head, request)
    return explorer.memo(request, "fig:head", (layer, head), lambda: figures.fit_width(pats.figure(layer, head)))


@safely(1)
def grid(explorer: Explorer, request: Request, layer: int) -> dict:
    """Every head as a tile of one heatmap: of every layer when they are few, else of the chosen layer."""
    return _grid(explorer, request, layer)[0]


def grid_click(explorer: Explorer, request: Request, layer, point: dict) -> tuple[int, int] | None:
    """(layer, head) of the tile a click on the grid landed on; None between tiles."""
    try:
        _, tiles, heads = _grid(explorer, request, layer)
        i = tiles.at(point["x"], point["y"])
    except (InterpError, KeyError, TypeError, ValueError):
        return None
    return None if i is None else heads[i]


def _grid(explorer: Explorer, request: Request, layer) -> tuple[dict, figures.Tiles, list[tuple[int, int]]]:
    """The grid's figure, its tiles, and the (layer, head) of each tile (cached per request and layer)."""
    pats = explorer.patterns(request)
    every = grid_layers(pats.n_layers, pats.n_heads)
    if not every:
        _check_head(pats.n_layers, pats.n_heads, layer, 0, request)
    return explorer.memo(request, "fig:grid", grid_key(explorer, request, layer),
                         lambda: _draw_grid(pats, None if every else layer, _name(request)))


def _draw_grid(pats, layer: int | None, name: str) -> tuple[dict, figures.Tiles, list[tuple[int, int]]]:
    """The grid of every layer (`layer` None) or of one, pooled like the analysis's own small multiples."""
    af = compute.attention_figures()
    pat = pats.row(0)[0]  # (layer, head, q_pos, k_pos) over the real tokens
    if layer is not None:
        pat = pat[pats.layer_index(layer)][None]  # (1, head, q_pos, k_pos)
    n_tiles = pat.shape[0] * pat.shape[1]
    win = af.fit(pat, pats.str_tokens[0], min(af.GRID_MAX_POS, math.isqrt(af.MAX_CELLS // n_tiles)))
    values = _causal(win.values.reshape(n_tiles, *win.values.shape[-2:]))  # (tile, q_pos, k_pos)
    cols = pats.n_heads if layer is None else min(pats.n_heads, GRID_COLUMNS)
    tiles = figures.Tiles(n_tiles, values.shape[-1], cols)
    layers = list(pats.layers) if layer is None else [layer]
    heads = [(L, h) for L in layers for h in range(pats.n_heads)]
    if cols == pats.n_heads:  # a row per layer, a column per head
        rows, columns = [f"L{L}" for L in layers], [f"H{h}" for h in range(cols)]
    else:  # one layer's heads in rows of `cols`: the row names its first head, the column adds to it
        rows, columns = [f"L{layer} H{h}" for h in range(0, pats.n_heads, cols)], [f"+{h}" for h in range(cols)]
    where = "every layer" if layer is None else f"layer {layer}"
    title = f"{name} · {where}: click a head to open it" + (f"<br><sup>{win.note}</sup>" if win.note else "")
    return figures.head_grid(values, tiles, rows, columns, title), tiles, heads


@safely(1)
def strip(explorer: Explorer, request: Request, layer: int, head: int, query: int | None) -> dict:
    """The prompt's tokens, coloured by where `query` attends in the chosen head."""
    pats = explorer.patterns(request)
    _check_head(pats.n_layers, pats.n_heads, layer, head, request)
    pattern, _ = pats.row(0)  # (layer, head, q_pos, k_pos) over the real tokens
    query = _query(query, pattern.shape[-1])
    weights = pattern[pats.layer_index(layer), head, query].float().tolist()
    return figures.token_strip(pats.str_tokens[0], weights, query, f"{_name(request)} · L{layer}H{head}")


@safely(1)
def token_rows(explorer: Explorer, request: Request, query: int | None) -> dict:
    """What `query` attends to in every head, a row per head (the analysis's token figure)."""
    pats = explorer.patterns(request)
    query = _query(query, pats.row(0)[0].shape[-1])

    def draw() -> dict:  # the head figure above shows the colour scale
        return figures.fit_width(pats.token_figure(query=query), colorbar=False)

    return explorer.memo(request, "fig:tokens", (query,), draw)


def _query(query, n: int) -> int:
    """The hovered position if it is one of the prompt's, else the last token."""
    return query if isinstance(query, int) and 0 <= query < n else n - 1


@safely(1)
def scores(explorer: Explorer, request: Request, detector: str, on: str) -> dict:
    """The head-score heatmap of one detector."""
    result = explorer.scores(request, on)
    if detector not in result.scores:
        raise InputError(f"Detector {detector!r} is not one of {list(result.scores)}.")
    return explorer.memo(request, "fig:scores", (detector, on), lambda: figures.fit_width(result.figure(detector)))


@safely(2)
def lens(explorer: Explorer, request: Request, metric: str, target: str | None) -> tuple[dict, dict]:
    """The logit-lens grid coloured by `metric`, and the target token's probability and rank."""
    result = explorer.lens(request, target)
    grid = explorer.memo(request, "fig:lens", (metric, target), lambda: figures.fit_width(result.figure(metric)))
    if not result.target_ids:
        return grid, figures.message("Type a target token (e.g. ' mat') to follow its probability and rank.", 120)
    return grid, explorer.memo(request, "fig:target", (target,), lambda: figures.fit_width(result.target_figure()))


def optional(explorer: Explorer, view: str, request: Request) -> tuple[dict, ...]:
    """The figures of an optional view (RoPE probing, patching) when its analysis is installed."""
    n = compute.EXTRAS[view].n_figures

    @safely(n)
    def draw():
        result = explorer.optional(view, request)
        key = request if compute.EXTRAS[view].uses_prompt else Request(request.model, request.revision, "")
        figs = explorer.memo(key, f"fig:{view}", (), lambda: [figures.fit_width(f)
                                                             for f in compute.EXTRAS[view].figures(result)])
        shown = (list(figs) + [figures.message("", 40)] * n)[:n]
        return tuple(shown) if n > 1 else shown[0]

    figs = draw()
    return figs if isinstance(figs, tuple) else (figs,)


# ---- compare mode: differences between the panes ------------------------------------------


@safely(1)
def attention_difference(explorer: Explorer, a: Request, b: Request, layer: int, head: int) -> dict:
    """B - A of the chosen head's pattern, when both panes split the prompt into the same tokens."""
    pa, pb = explorer.patterns(a), explorer.patterns(b)
    if pa.str_tokens[0] != pb.str_tokens[0]:
        raise InputError(f"The panes split the prompt into different tokens ({len(pa.str_tokens[0])} vs "
                         f"{len(pb.str_tokens[0])}), so their patterns do not align position by position; "
                         "compare them side by side above.")
    for pats, request in ((pa, a), (pb, b)):
        _check_head(pats.n_layers, pats.n_heads, layer, head, request)
    za, zb = (_causal(p.row(0)[0][p.layer_index(layer), head]) for p in (pa, pb))
    labels = [figure_label(t, 12) for t in pa.str_tokens[0]]
    return figures.difference(za, zb, labels, labels, f"L{layer}H{head}: B − A ({_name(b)} − {_name(a)})",
                              ("key", "query"), hover="query %{y}<br>key %{x}")


@safely(1)
def scores_difference(explorer: Explorer, a: Request, b: Request, detector: str, on: str) -> dict:
    """B - A of one detector's score per head, when both models have the same layers and heads."""
    sa, sb = explorer.scores(a, on).scores[detector], explorer.scores(b, on).scores[detector]
    if sa.shape != sb.shape:
        raise InputError(f"{_name(a)} has {sa.shape[0]}×{sa.shape[1]} heads and {_name(b)} "
                         f"{sb.shape[0]}×{sb.shape[1]} (layers × heads): no head-by-head difference; "
                         "both are shown side by side above.")
    x = [f"H{h}" for h in range(sa.shape[1])]
    y = [f"L{L}" for L in range(sa.shape[0])]
    return figures.difference(sa.double().numpy(), sb.double().numpy(), x, y,
                              f"{detector}: B − A ({_name(b)} − {_name(a)})", ("head", "layer"))


@safely(1)
def lens_difference(explorer: Explorer, a: Request, b: Request, metric: str) -> dict:
    """Each pane's metric averaged over the prompt's positions, per layer boundary, as two lines."""
    curves = {}
    for pane, request in (("A", a), ("B", b)):
        result = explorer.lens(request)
        values = result.values(metric)[:, 0].float()  # (layer, pos)
        real = result.attention_mask[0].bool()
        curves[f"{pane}: {_name(request)}"] = (result.layers, values[:, real].nanmean(-1).tolist())
    return figures.lines(curves, f"{metric} per layer, mean over the prompt's tokens", ("layer boundary", metric))


def optional_views() -> list[str]:
    """The optional views whose analysis is installed."""
    return [view for view in compute.EXTRAS if compute.optional(view) is not None]


# ---- helpers ----------------------------------------------------------------------------------


def _check_head(n_layers: int, n_heads: int, layer, head, request: Request) -> None:
    if not (isinstance(layer, int) and isinstance(head, int) and 0 <= layer < n_layers and 0 <= head < n_heads):
        raise InputError(f"L{layer}H{head} is not a head of {_name(request)}, which has {n_layers} layers × "
                         f"{n_heads} heads; pick one that both panes have.")


def _name(request: Request) -> str:
    return f"{request.model}@{request.revision}"


def _causal(pattern) -> np.ndarray:
    """(..., q, k) patterns as float64 with NaN above the diagonal (keys after the query)."""
    z = pattern.double().numpy().copy()
    z[..., np.triu(np.ones(z.shape[-2:], dtype=bool), 1)] = np.nan
    return z
