"""`pythia-interp serve`: the explorer, a local web app over the toy suite, your directories and the HF cache.

    $ pythia-interp serve                        # http://127.0.0.1:8050, toy-2l selected
    $ pythia-interp serve --model EleutherAI/pythia-160m --revision step1000 --dtype bf16 --port 8060 ./my-finetune

Directories given here (a save_pretrained folder, or one holding step<N>/ folders) join the model
list; the page itself can never name a path. Models not on disk are listed with how to get them.
--model, --revision and --prompt (or --prompts-file) are what the page shows at start; --device
and --dtype apply to every model it loads.
"""

from __future__ import annotations

import argparse
import sys

from analyses.commands import add_model_arguments, add_prompt_arguments, check_model, read_prompts


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `serve` subcommand."""
    parser = subparsers.add_parser("serve", help="the explorer: a local web app", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("paths", nargs="*", metavar="PATH", help="model directories to offer besides the toy suite")
    add_model_arguments(parser)
    add_prompt_arguments(parser, required=False, help="the prompt at start (a file's prompts fill the box, a line "
                         "each)")
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--memory-budget", type=float, default=4.0, metavar="GIB",
                        help="GiB of model parameters kept loaded; least recently used go first (default 4)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the explorer and serve it until interrupted."""
    from analyses.app.server import LOOPBACK, serve

    app, _ = build(args)
    if args.host not in LOOPBACK:
        print(f"warning: serving on {args.host}: anyone who can reach this machine can use the explorer.",
              file=sys.stderr)
    print(f"pythia-interp explorer on http://{args.host}:{args.port}/ (Ctrl+C stops it)", flush=True)
    serve(app, host=args.host, port=args.port)
    return 0


def build(args: argparse.Namespace):
    """(the Dash app, its explorer) in the state the arguments ask for; bad ones raise before anything loads."""
    from analyses.app.catalog import Catalog
    from analyses.app.explorer import Explorer
    from analyses.app.server import DEFAULT_PROMPT, create_app

    catalog = Catalog(args.paths, dtype=args.dtype, device=args.device)
    explorer = Explorer(catalog, budget_bytes=int(args.memory_budget * (1 << 30)))
    revision = _start_revision(explorer, args.model, args.revision)
    prompt = "\n".join(read_prompts(args)) or DEFAULT_PROMPT
    return create_app(explorer, model=args.model, prompt=prompt, revision=revision), explorer


def _start_revision(explorer, model: str, revision: str | None) -> str | None:
    """The checkpoint to show at start (None: the last on disk); an error naming the choices for an unknown one."""
    from interp import suite
    from interp.errors import UnknownModelError, UnknownRevisionError

    entry = explorer.entry(model)
    listed = {e.key for e in explorer.catalog.entries()}
    if entry.key not in listed and suite.find(model) is None:
        raise UnknownModelError(
            f"--model {model!r} is not a model the explorer offers: pass a toy name (toy, toy-4l), a Pythia or GPT-2 "
            f"name such as pythia-160m (closest: {suite.close_names(model) or 'none'}), or a directory as PATH.")
    if revision in (None, "main"):
        return None
    revisions = explorer.catalog.revisions(entry)
    if revision not in revisions:
        if entry.kind == "toy" or suite.find(entry.target) is not None:
            check_model(entry.target, revision)  # the message every command gives, with the nearest steps
        raise UnknownRevisionError(
            f"--revision {revision!r} is not a checkpoint of {entry.key}: choose one of {revisions[0]} ... "
            f"{revisions[-1]} ({len(revisions)} in all), or leave --revision out for the last one on disk.")
    return revision


def main(argv: list[str] | None = None) -> int:
    """`python -m analyses.app`: the same as `pythia-interp serve`."""
    from analyses.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])
