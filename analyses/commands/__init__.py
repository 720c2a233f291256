"""One module per `pythia-interp` subcommand; each defines `add_parser(subparsers)`."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--model` and `--revision`, the same in every subcommand."""
    parser.add_argument("--model", default="toy", help="name or path interp.load takes (default: toy)")
    parser.add_argument("--revision", default=None, help="checkpoint, e.g. step1000 (default: final)")


def provenance_record(prov, prompt: str, str_tokens: list[str]) -> dict:
    """What every command's JSON starts with: model, revision, dtype, prompt and its tokens."""
    return {
        "model": prov.model,
        "revision": prov.revision,
        "dtype": prov.dtype,
        "prompt": prompt,
        "tokens": prov.tokens[0],
        "str_tokens": str_tokens,
        "n_layers": prov.n_layers,
    }
