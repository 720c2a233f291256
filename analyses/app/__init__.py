"""The explorer: a local web app to pick a model and checkpoint, type a prompt and look inside.

    $ pythia-interp serve --model toy             # then open http://127.0.0.1:8050

    >>> from analyses.app.server import create_app
    >>> app = create_app(model="toy-2l")          # a Dash app; app.run() serves it

Modules: `catalog` (which models, where), `cache` (model LRU, result LRU), `explorer` (state and
cached results), `compute` (the analyses it calls), `views` and `figures` (what each tab draws),
`layout` and `callbacks` (the page), `server` and `command` (serving it).
"""
