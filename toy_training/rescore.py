"""Recompute the head scores in a toy model's training.json from its saved checkpoints (no training).

    python -m toy_training.rescore                     # every toy model in interp/toy/models/
    python -m toy_training.rescore --model toy-2l --curve 20 50

Scores use the project's one definition (`toy_training.metrics.head_scores`); `--curve` also
prints the best induction score of the model card's induction heads at every checkpoint on
32 random blocks of each length written twice, the table in the model card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from interp import toy
from toy_training import metrics
from toy_training.spec import VOCAB_SIZE
from toy_training.train import HEAD_SCORES, REPEAT_EVAL


def load_checkpoint(path: Path):
    """A shipped checkpoint as it is measured: fp16 weights in fp32, eager attention, eval mode."""
    from interp.loading import load_hf

    return load_hf(path, dtype=torch.float32, attn_implementation="eager")


def rescore(root: Path) -> dict:
    """Rewrite the induction and previous-token scores of every checkpoint in root/training.json."""
    record = json.loads((root / "training.json").read_text())
    tokens = metrics.repeated_random(vocab=VOCAB_SIZE, **record["repeat_eval"])
    for checkpoint in record["checkpoints"]:
        model = load_checkpoint(root / f"step{checkpoint['step']}")
        checkpoint.update(metrics.head_scores(model, tokens))
    record["head_scores"] = HEAD_SCORES
    (root / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def induction_curve(root: Path, heads: tuple[tuple[int, int], ...], half: int) -> dict[int, float]:
    """Best induction score among `heads` (all heads if none) at each checkpoint, on 32 blocks of `half` tokens
    written twice."""
    tokens = metrics.repeated_random(REPEAT_EVAL["n_seqs"], half, VOCAB_SIZE, REPEAT_EVAL["seed"])
    record = json.loads((root / "training.json").read_text())
    curve = {}
    for step in record["schedule"]:
        scores = metrics.head_scores(load_checkpoint(root / f"step{step}"), tokens)
        named = heads or [(layer, head) for layer, row in enumerate(scores["induction"]) for head in range(len(row))]
        curve[step] = max(scores["induction"][layer][head] for layer, head in named)
    return curve


def main(argv=None) -> None:
    """Rescore the chosen models; print their final scores and, with --curve, the induction curves."""
    from transformers.utils import logging

    parser = argparse.ArgumentParser(prog="python -m toy_training.rescore", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all", choices=[*toy.NAMES, "all"])
    parser.add_argument("--curve", type=int, nargs="*", default=[], metavar="HALF", help="block lengths")
    args = parser.parse_args(argv)
    logging.disable_progress_bar()
    for name in toy.NAMES if args.model == "all" else [args.model]:
        final = rescore(toy.model_dir(name))["checkpoints"][-1]
        print(f"{name} step{final['step']}: induction {final['induction']} previous {final['previous_token']}")
        for half in args.curve:
            curve = induction_curve(toy.model_dir(name), toy.HEADS[name]["induction"], half)
            print(f"  {half} + {half}: " + " ".join(f"{s}:{v:.2f}" for s, v in curve.items()))


if __name__ == "__main__":
    main()
