"""Build the explorer's Dash app and serve it on the loopback interface.

    >>> from analyses.app.server import create_app
    >>> app = create_app(model="toy")
    >>> app.config.serve_locally          # Dash's JS and CSS come from the Python package
    True

`serve()` binds 127.0.0.1 unless told otherwise; everything the page loads is served by this
process, so the explorer works with no network.
"""

from __future__ import annotations

import logging

from analyses.app import compute, views
from analyses.app.catalog import Catalog
from analyses.app.explorer import Explorer
from analyses.app.layout import CSS, STEADY, PageSpec, page
from interp import toy
from interp.errors import InterpError

DEFAULT_PROMPT = "The cat sat on the mat. The cat sat on the mat."
COMPARE_WITH = "toy-gpt2"  # the GPT-2 twin of toy-2l, the default model B when present
FALLBACK = "toy-4l"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

INDEX = """<!DOCTYPE html>
<html>
  <head>
    {%metas%}
    <title>pythia-interp explorer</title>
    {%favicon%}
    {%css%}
    <style>""" + CSS + """</style>
    <script>""" + STEADY + """</script>
  </head>
  <body>
    {%app_entry%}
    <footer>{%config%}{%scripts%}{%renderer%}</footer>
  </body>
</html>"""


def compare_default(model_a: str) -> tuple[str, str]:
    """Model B for compare mode, and a note when the preferred one is missing.

    >>> compare_default("toy-2l")[0] in ("toy-gpt2", "toy-4l")
    True
    """
    if has_checkpoints(COMPARE_WITH):
        return COMPARE_WITH, ""
    other = FALLBACK if model_a != FALLBACK else toy.DEFAULT
    return other, f"{COMPARE_WITH} (toy-2l with GPT-2's architecture) has no checkpoints in this install: comparing " \
                  f"with {other}."


def has_checkpoints(name: str) -> bool:
    """Whether a toy model is registered and has its checkpoints on disk."""
    if toy.resolve(name) is None:
        return False
    try:
        return bool(toy.revisions(name))
    except (InterpError, FileNotFoundError):
        return False


def create_app(explorer: Explorer | None = None, model: str = "toy", prompt: str = DEFAULT_PROMPT,
               revision: str | None = None):
    """The Dash app over an explorer (a default one over the toy suite and the HF cache if None).

    `model`, `revision` (default: the last on disk) and `prompt` are what the page shows at start.
    """
    import dash

    from analyses.app.callbacks import heads, register, slider

    explorer = explorer or Explorer(Catalog())
    model_a = explorer.entry(model).key
    model_b, note = compare_default(model_a)
    sliders = {"a": slider(explorer, model_a, revision), "b": slider(explorer, model_b)}
    try:
        shape = explorer.shape(model_a, explorer.revision_at(model_a, sliders["a"][2]))
    except InterpError:  # not on disk: the page says how to get it
        shape = (0, 0)
    layers, head_options = heads(*shape)
    spec = PageSpec(
        options=[{"label": e.label, "value": e.key} for e in explorer.catalog.entries()],
        model_a=model_a,
        model_b=model_b,
        prompt=prompt,
        detectors=tuple(compute.attention().DETECTORS),
        metrics=tuple(compute.lens().METRICS),
        compare_note=note,
        optional={v: (compute.EXTRAS[v].label, compute.EXTRAS[v].n_figures) for v in views.optional_views()},
        sliders=sliders,
        layers=layers,
        heads=head_options,
    )
    app = dash.Dash(__name__, title="pythia-interp explorer", serve_locally=True, update_title=None)
    app.index_string = INDEX
    app.layout = page(spec)
    register(app, explorer)
    return app


def serve(app, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Run the app until interrupted (Flask's threaded server; local use only)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if host in LOOPBACK:
        restrict_hosts(app, port)
    app.run(host=host, port=port, debug=False)


def restrict_hosts(app, port: int) -> None:
    """Answer only requests addressed to this machine by name (a web page elsewhere that rebinds
    its DNS name to 127.0.0.1 gets 403, not the explorer).

    >>> app = create_app()
    >>> restrict_hosts(app, 8050)
    >>> app.server.test_client().get("/", headers={"Host": "evil.example:8050"}).status_code
    403
    """
    allowed = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}

    def check():
        from flask import abort, request

        if request.host not in allowed:
            abort(403)

    app.server.before_request(check)
