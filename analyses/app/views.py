"""What each tab draws, as figure dicts built from the explorer's cached analysis results.

    >>> from analyses.app.catalog import Catalog
    >>> from analyses.app.explorer import Explorer, Request
    >>> explorer = Explorer(Catalog(hub_cache="/nonexistent"))
    >>> head, grid = attention(explorer, Request("toy-2l", "step3600", "The cat. The cat"), layer=1, head=0)
    >>> head["data"][0]["type"], len(grid["data"])          # one head, and every head of both layers
    ('heatmap', 6)
    >>> attention(explorer, Request("toy-2l", "step3600", ""), 0, 0)[0]["layout"]["annotations"][0]["text"]
    'The prompt is empty: type some text and press Run.'

Every function returns figures, never raises: bad input becomes a figure that says what to do.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from analyses.app import compute, figures
from analyses.app.explorer import Explorer, Request
from interp.errors import InputError, InterpError
from interp.text import figure_label

GRID_ALL_LAYERS = 48  # up to this many heads the grid shows every layer; above, the chosen layer
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


def grid_click(n_layers: int, n_heads: int, layer: int, curve: int) -> tuple[int, int]:
    """(layer, head) of the heatmap a click on the grid landed on (its curve number)."""
    if grid_layers(n_layers, n_heads):
        return curve // n_heads, curve % n_heads
    return layer, curve % n_heads


@safely(2)
def attention(explorer: Explorer, request: Request, layer: int, head: int) -> tuple[dict, dict]:
    """The chosen head's pattern, and the grid of every head (of every layer when they are few)."""
    pats = explorer.patterns(request)
    _check_head(pats.n_layers, pats.n_heads, layer, head, request)
    one = explorer.memo(request, "fig:head", (layer, head), lambda: figures.fit_width(pats.figure(layer, head)))
    every = grid_layers(pats.n_layers, pats.n_heads)
    grid_key = ("all",) if every else (layer,)
    grid = explorer.memo(request, "fig:grid", grid_key,
                         lambda: figures.fit_width(pats.figure(slider=False) if every else pats.figure(layer=layer)))
    return one, grid


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
    return explorer.memo(request, "fig:tokens", (query,), lambda: figures.fit_width(pats.token_figure(query=query)))


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
    """A (q, k) pattern as float64 with NaN above the diagonal."""
    z = pattern.double().numpy().copy()
    z[np.triu_indices(z.shape[0], 1)] = np.nan
    return z
