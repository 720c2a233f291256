"""`pythia-interp serve`: the explorer, a local web app over the toy suite, your directories and the HF cache.

    $ pythia-interp serve                        # http://127.0.0.1:8050, toy-2l selected
    $ pythia-interp serve --model EleutherAI/pythia-160m --port 8060 ./my-finetune ./runs/ckpts

Directories given here (a save_pretrained folder, or one holding step<N>/ folders) join the model
list; the page itself can never name a path. Models not on disk are listed with how to get them.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `serve` subcommand."""
    parser = subparsers.add_parser("serve", help="the explorer: a local web app", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", metavar="PATH", help="model directories to offer besides the toy suite")
    parser.add_argument("--model", default="toy", help="model selected at start (default: toy)")
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--memory-budget", type=float, default=4.0, metavar="GIB",
                        help="GiB of model parameters kept loaded; least recently used go first (default 4)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the explorer and serve it until interrupted."""
    from analyses.app.catalog import Catalog
    from analyses.app.explorer import Explorer
    from analyses.app.server import LOOPBACK, create_app, serve

    explorer = Explorer(Catalog(args.paths), budget_bytes=int(args.memory_budget * (1 << 30)))
    app = create_app(explorer, model=args.model)
    if args.host not in LOOPBACK:
        print(f"warning: serving on {args.host}: anyone who can reach this machine can use the explorer.",
              file=sys.stderr)
    print(f"pythia-interp explorer on http://{args.host}:{args.port}/ (Ctrl+C stops it)", flush=True)
    serve(app, host=args.host, port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m analyses.app`: the same as `pythia-interp serve`."""
    top = argparse.ArgumentParser(prog="python -m analyses.app")
    add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    from interp.errors import InterpError

    try:
        return args.func(args)
    except InterpError as err:
        print(f"pythia-interp serve: error: {err}", file=sys.stderr)
        return 2
