"""The `pythia-interp` command line: scripted analyses that write files into an output folder.

    $ pythia-interp attention --model toy --prompt "The cat sat. The cat" --out out/
    $ pythia-interp logit-lens --model toy --prompts-file prompts.txt --out out/
    $ pythia-interp report --out report/
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

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


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (subcommands' parsers are of this class too)."""

    def error(self, message: str):
        """`PROG: error: MESSAGE (see PROG --help)` on stderr, exit status 2, no usage block."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The top-level parser with the subcommands of every module in COMMANDS that exists.

    >>> {"attention", "logit-lens", "report", "tuned-lens"} <= set(parser()._subparsers._group_actions[0].choices)
    True
    """
    top = Parser(prog="pythia-interp", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):
                raise  # the module exists and one of its own imports is missing
            continue
        module.add_parser(sub)
    _name_leaves(top)
    return top


def _name_leaves(parser: argparse.ArgumentParser) -> None:
    """Each runnable subcommand sets `args.prog` to its name ("pythia-interp tuned-lens train"), for error lines."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        parser.set_defaults(prog=parser.prog)
    for child in subs[0].choices.values() if subs else ():
        _name_leaves(child)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: 0 on success, else an exit status and one line on stderr.

    2: bad input (usage or an InterpError), 1: the system refused (OSError), 130: interrupted.
    """
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed
        return int(exit_.code or 0)
    from transformers.utils import logging as hf_logging

    from interp.errors import InterpError

    hf_logging.disable_progress_bar()  # per-checkpoint "Loading weights" bars would drown the output
    out = getattr(args, "out", None)
    new_folders = [] if out is None else [p for p in (Path(out), *Path(out).parents) if not p.exists()]
    try:
        return args.func(args) or 0
    except InterpError as err:  # a clear one-line message for bad input, not a traceback
        return _fail(args.prog, str(err), 2)
    except OSError as err:  # a full disk, a file that vanished: the system's words, in one line
        return _fail(args.prog, str(err), 1)
    except KeyboardInterrupt:
        return _fail(args.prog, "interrupted", 130)
    finally:
        _remove_if_empty(new_folders)


def _remove_if_empty(folders: list[Path]) -> None:
    """Folders this run made (--out and parents, innermost first) and left empty, as when it failed first."""
    for folder in folders:
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            return


def _fail(prog: str, message: str, status: int) -> int:
    """Print `pythia-interp COMMAND: error: MESSAGE` on one line and return the exit status."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
