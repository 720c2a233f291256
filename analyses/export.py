"""Write a figure, or any result with `.figure()`, to a file that works offline.

    >>> import plotly.graph_objects as go, tempfile
    >>> fig = go.Figure(go.Heatmap(z=[[0, 1], [1, 0]]))
    >>> out = tempfile.mkdtemp()
    >>> save(fig, f"{out}/figure.html").name      # self-contained: plotly.js inline, nothing fetched
    'figure.html'
    >>> save(fig, f"{out}/figure.png").name       # doctest: +SKIP
    'figure.png'

`.html` embeds plotly.js and references no network resource; `.json` is plotly's figure JSON;
`.png`, `.svg` and `.pdf` are rendered by kaleido (pip package) driving a local Chrome or
Chromium, found through `BROWSER_PATH`, then `PATH`, then the usual install locations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from interp.errors import InterpError

IMAGE_SUFFIXES = (".png", ".svg", ".pdf")
SUFFIXES = (".html", ".json", *IMAGE_SUFFIXES)
INSTALL_BROWSER = (
    "install one (`apt-get install chromium` on Debian/Ubuntu, or `kaleido_get_chrome` after "
    "`pip install kaleido`) or point BROWSER_PATH at a Chrome/Chromium executable"
)


@dataclass
class Section:
    """A part of a page: a heading, a paragraph, and optionally a figure and/or a table.

    >>> Section("Heads", "Scores per head.").title
    'Heads'
    """

    title: str
    text: str
    figure: object | None = None
    table: object | None = None  # a pandas DataFrame


class ExportError(InterpError, ValueError):
    """A path whose suffix names no format we write."""


class RendererNotFoundError(InterpError, RuntimeError):
    """Static image export needs kaleido and a Chrome/Chromium, and one of them is missing."""


def save(obj, path: str | Path, *, scale: float = 2.0) -> Path:
    """Write `obj` (a plotly Figure or a result with `.figure()`) to `path`, format by suffix.

    >>> import interp, tempfile
    >>> from analyses.attention import patterns
    >>> pats = patterns(interp.load("toy"), "The cat sat")
    >>> save([pats, pats.figure(0, 1)], f"{tempfile.mkdtemp()}/attention.html").suffix
    '.html'

    A list of figures/results makes one `.html` page (plotly.js embedded once). `scale`
    multiplies the pixel size of `.png` output (2 gives crisp paper figures).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ExportError(
            f"Cannot save to {str(path)!r}: unknown suffix {suffix or '(none)'!r}. "
            f"Use one of {', '.join(SUFFIXES)}, e.g. {path.with_suffix('.html').name!r}."
        )
    figs = [_as_figure(o) for o in obj] if isinstance(obj, (list, tuple)) else [_as_figure(obj)]
    if len(figs) != 1 and suffix != ".html":
        raise ExportError(
            f"{len(figs)} figures cannot go into one {suffix} file: save them one by one, "
            "or together as a single .html page."
        )
    if path.is_dir():
        raise ExportError(f"Cannot save to {str(path)!r}: it is a folder. Pass a file path, e.g. "
                          f"{str(path / ('figure' + suffix))!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        path.write_text(html_page(figs, title=path.stem), encoding="utf-8")
    elif suffix == ".json":
        figs[0].write_json(path)
    else:
        path.write_bytes(render(figs[0], suffix[1:], scale=scale))
    return path


def html_page(figs: list, title: str = "pythia-interp") -> str:
    """A self-contained HTML page of the figures: plotly.js inline once, no MathJax, no CDN."""
    from html import escape

    config = {"displaylogo": False}
    divs = [
        fig.to_html(full_html=False, include_plotlyjs=i == 0, include_mathjax=False, config=config)
        for i, fig in enumerate(figs)
    ]
    body = "\n".join(divs)
    return (
        '<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8" />'
        f"<title>{escape(title)}</title></head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def render(fig, fmt: str, *, scale: float = 2.0) -> bytes:
    """Bytes of `fig` as png, svg or pdf, rendered offline by kaleido in a local browser.

    >>> import plotly.graph_objects as go
    >>> render(go.Figure(go.Bar(y=[1, 2])), "png")[:4]   # doctest: +SKIP
    b'\x89PNG'
    """
    kaleido = _kaleido()
    layout = fig.layout
    opts = {
        "format": fmt,
        "width": layout.width or 900,
        "height": layout.height or 600,
        "scale": scale if fmt == "png" else 1,
    }
    # mathjax=False keeps kaleido from loading MathJax off a CDN; plotly.js comes from plotly.py
    kopts = {"mathjax": False, "path": require_renderer()}
    return kaleido.calc_fig_sync(fig, opts=opts, kopts=kopts)


def find_browser() -> str | None:
    """Path of the Chrome/Chromium kaleido will drive, or None: `BROWSER_PATH`, PATH, usual places.

    >>> find_browser()                                   # doctest: +SKIP
    '/usr/bin/chromium'
    """
    override = os.environ.get("BROWSER_PATH")
    if override:
        return override if os.access(override, os.X_OK) else None
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        import shutil

        return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    return Chromium.find_browser(skip_local=False)


def require_renderer() -> str:
    """The browser kaleido will drive, or a RendererNotFoundError naming what to install.

    >>> require_renderer()  # doctest: +SKIP
    '/usr/bin/chromium'
    """
    _kaleido()
    path = find_browser()
    if path is not None:
        return path
    where = os.environ.get("BROWSER_PATH")
    found = f"BROWSER_PATH={where!r} is not an executable" if where else "no Chrome/Chromium was found"
    raise RendererNotFoundError(
        f"PNG/SVG/PDF export renders in a headless browser, and {found}: {INSTALL_BROWSER}. "
        "HTML and JSON export need no browser."
    )


def _kaleido():
    """The kaleido module, imported where it is used (it is an optional dependency)."""
    try:
        import kaleido
    except ImportError as err:
        raise RendererNotFoundError(
            "PNG/SVG/PDF export needs kaleido: `pip install kaleido` (or `pip install "
            "pythia-interp[render]`), plus a Chrome/Chromium. HTML and JSON export need neither."
        ) from err
    return kaleido


def _as_figure(obj):
    """A plotly Figure from a Figure or from any result that has `.figure()`."""
    import plotly.graph_objects as go

    fig = obj.figure() if callable(getattr(obj, "figure", None)) else obj
    if isinstance(fig, go.Figure):
        return fig
    raise ExportError(
        f"Cannot save a {type(obj).__name__}: pass a plotly Figure or a result with a .figure() "
        "method (e.g. the AttentionPatterns from analyses.attention.patterns)."
    )
