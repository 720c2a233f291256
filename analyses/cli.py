"""The `pythia-interp` command line: scripted analyses that write files into an output folder.

    $ pythia-interp attention --model toy --prompt "The cat sat. The cat" --out out/
    $ pythia-interp logit-lens --model toy --prompts-file prompts.txt --out out/
    $ pythia-interp report --out report/
"""

from __future__ import annotations

import argparse
import importlib
import sys

# One module per analysis; each defines add_parser(subparsers). Modules not present are skipped.
COMMANDS = (
    "analyses.commands.report",
    "analyses.attention.command",
    "analyses.lens.command",
    "analyses.rope.command",
    "analyses.patching.command",
    "analyses.sweep.command",
    "analyses.app.command",
)


def parser() -> argparse.ArgumentParser:
    """The top-level parser with the subcommands of every module in COMMANDS that exists.

    >>> sorted(parser()._subparsers._group_actions[0].choices)[:3]
    ['attention', 'logit-lens', 'report']
    """
    top = argparse.ArgumentParser(prog="pythia-interp", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):
                raise  # the module exists and one of its own imports is missing
            continue
        module.add_parser(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: 0 on success, 2 with a one-line message on bad input."""
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from interp.errors import InterpError

    hf_logging.disable_progress_bar()  # per-checkpoint "Loading weights" bars would drown the output
    try:
        return args.func(args) or 0
    except InterpError as err:  # a clear one-line message for bad input, not a traceback
        message = " ".join(str(err).split())
        print(f"pythia-interp {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
