"""`pythia-interp report`: the main job, an HTML report on one model (the toy suite by default)."""

from __future__ import annotations

import argparse

import interp
from analyses.commands import add_model_arguments
from interp import suite, toy


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `report` subcommand."""
    p = subparsers.add_parser("report", help="HTML report: head detectors, attention, logit lens, checkpoints")
    add_model_arguments(p)
    p.add_argument("--prompt", default=None, help="prompt for the attention and logit-lens sections")
    p.add_argument("--sweep", type=int, default=None, metavar="N",
                   help="checkpoints in the across-training section (default: all for toy models, 0 otherwise)")
    p.add_argument("--out", default="report", help="output folder (default: report/)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the report and write it."""
    from analyses.report import DEFAULT_PROMPT, build_report

    model = interp.load(args.model, revision=args.revision)
    revisions = _sweep_revisions(args.model, args.sweep)
    report = build_report(model, args.prompt or DEFAULT_PROMPT, revisions, sweep_name=args.model)
    page = report.save(args.out)
    print(f"wrote {page} ({len(report.sections)} sections) and {', '.join(report.tables)} tables")
    return 0


def _sweep_revisions(name: str, n: int | None) -> list[str]:
    """N checkpoints spread over the schedule (all of a toy model's by default)."""
    is_toy = toy.resolve(name) is not None
    if n is None:
        n = 10**6 if is_toy else 0
    if n <= 0:
        return []
    every = suite.revisions(name)
    if n >= len(every):
        return every
    picks = {round(i * (len(every) - 1) / (n - 1)) for i in range(n)} if n > 1 else {len(every) - 1}
    return [every[i] for i in sorted(picks)]
