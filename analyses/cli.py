"""The `pythia-interp` command line: scripted analyses that write files into an output folder.

    $ pythia-interp attention --model toy --prompt "The cat sat. The cat" --out out/
    $ pythia-interp logit-lens --model toy --prompt "..." --out out/
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("report", "attention", "logit_lens", "tuned_lens")


def parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per module in `analyses.commands`."""
    top = argparse.ArgumentParser(prog="pythia-interp", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"analyses.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"analyses.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-checkpoint "Loading weights" bars would drown the output
    try:
        return args.func(args) or 0
    except Exception as err:  # a clear one-line message for bad input, not a traceback
        from interp.errors import InterpError

        if not isinstance(err, (InterpError, FileNotFoundError)):
            raise
        print(f"pythia-interp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
