"""`pythia-interp tuned-lens train`: fit a tuned lens to a model on a text and save it.

    $ pythia-interp tuned-lens train --model toy --out lenses/toy --steps 200

writes lenses/toy/tuned_lens.safetensors (the translators) and lenses/toy/tuned_lens.json
(model, revision, shapes, steps, final loss per layer). Without --text it trains on Python's
own documentation (`pydoc_data`), which every machine has. Use it with
`pythia-interp logit-lens --tuned lenses/toy`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analyses.commands import add_model_arguments


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `tuned-lens` and its `train` subcommand."""
    parser = subparsers.add_parser(
        "tuned-lens",
        help="train a tuned lens (per-layer translators)",
        description=__doc__.split("\n\n")[0],
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train a tuned lens and save it to a folder",
        description=__doc__.split("\n\n")[0],
    )
    add_model_arguments(train)
    train.add_argument("--out", required=True, type=Path, help="folder to write the lens into")
    train.add_argument(
        "--text",
        type=Path,
        default=None,
        help="UTF-8 text file to train on (default: Python's docs)",
    )
    train.add_argument("--steps", type=int, default=250, help="optimiser steps (default 250)")
    train.add_argument("--batch-size", type=int, default=8, help="windows per step (default 8)")
    train.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--seed", type=int, default=0, help="seed of the windows (default 0)")
    train.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, train the lens on the text, save it and print its losses."""
    import interp
    from analyses.tuned_lens import default_text, train_tuned_lens

    if args.text is None:
        text, source = default_text()
    else:
        text, source = args.text.read_text(encoding="utf-8"), str(args.text)
    model = interp.load(args.model, revision=args.revision)
    lens = train_tuned_lens(
        model,
        text,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        seed=args.seed,
        source=source,
    )
    path = lens.save(args.out)
    print(f"wrote {path} ({lens.info.steps} steps, {lens.info.tokens_seen} tokens of {source})")
    for layer, loss in enumerate(lens.info.layer_losses):
        print(f"  layer {layer}: KL(model || tuned lens) {loss:.4f} nats")
    return 0
