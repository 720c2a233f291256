"""`pythia-interp logit-lens` and `pythia-interp tuned-lens train`: decode every layer; fit a tuned lens.

    $ pythia-interp logit-lens --model toy --prompt "The cat sat on the" --target " mat" --out out/
    $ pythia-interp tuned-lens train --model toy --out lenses/toy --steps 200

logit-lens writes out/logit_lens.csv (a row per lens, prompt, layer and position: layer 0 is the
embedding, L+1 the output of block L), out/logit_lens.html (the position x layer grid of each
prompt, target tokens across layers, and logit vs tuned lens with --tuned), out/logit_lens.png
(the first prompt's grid) and out/logit_lens.json (provenance).

tuned-lens train writes OUT/tuned_lens.safetensors (the translators) and OUT/tuned_lens.json
(model, revision, dtype, device, shapes, steps, final loss per layer). It trains on --prompt, on the
lines of --prompts-file (each a document) or on --text; without them, on Python's own documentation
(`pydoc_data`), which every machine has.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analyses.commands import (
    add_model_arguments,
    add_output_arguments,
    add_prompt_arguments,
    load_model,
    prepare,
    print_written,
    provenance_record,
)
from interp.options import dtype_name

METRICS = ("kl", "cross_entropy", "entropy", "top1_prob")
LENS_FILES = ("logit_lens.csv", "logit_lens.html", "logit_lens.png", "logit_lens.json")
TUNED_FILES = ("tuned_lens.safetensors", "tuned_lens.json")


def add_parser(subparsers) -> None:
    """Register `logit-lens` and `tuned-lens train`."""
    _add_logit_lens(subparsers)
    _add_tuned_lens(subparsers)


def _add_logit_lens(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("logit-lens", help="decode every layer of prompts (logit or tuned lens)",
                                   description="What every layer would predict for prompts, written to a folder.")
    add_model_arguments(parser)
    add_prompt_arguments(parser)
    parser.add_argument("--target", action="append", default=[],
                        help="a token to follow across layers, e.g. ' Paris' (repeatable)")
    parser.add_argument("--tuned", type=Path, default=None,
                        help="a tuned lens folder (from `tuned-lens train`) to decode with as well")
    parser.add_argument("--metric", choices=METRICS, default="kl", help="grid colour (default: kl)")
    parser.add_argument("--no-ln", action="store_true", help="skip the final LayerNorm")
    parser.add_argument("--top-k", type=int, default=5, help="tokens shown on hover (default 5)")
    add_output_arguments(parser)
    parser.set_defaults(func=run_logit_lens)
    return parser


def _add_tuned_lens(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("tuned-lens", help="train a tuned lens (per-layer translators)",
                                   description="Fit a tuned lens to a model on a text and save it.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train a tuned lens and save it to a folder",
                               description="Fit a tuned lens to a model on a text and save it.")
    add_model_arguments(train)
    text = add_prompt_arguments(train, required=False, help="a text to train on (a prompts file: each line one "
                                "document, each followed by end-of-text)")
    text.add_argument("--text", type=Path, default=None, help="UTF-8 text file to train on (default: Python's docs)")
    add_output_arguments(train, png=False)
    train.add_argument("--steps", type=int, default=250, help="optimiser steps (default 250)")
    train.add_argument("--batch-size", type=int, default=8, help="windows per step (default 8)")
    train.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--seed", type=int, default=0, help="seed of the windows (default 0)")
    train.set_defaults(func=run_tuned_lens)
    return parser


def run_logit_lens(args: argparse.Namespace) -> int:
    """Check the outputs, load the model (and lens), decode the prompts, write the files."""
    import pandas as pd
    import torch

    from analyses.export import save
    from analyses.lens import LensComparison, TunedLens, lens_from_cache, resid_names

    out, prompts = prepare(args, LENS_FILES)
    tuned = TunedLens.load(args.tuned) if args.tuned is not None else None
    model = load_model(args)
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts, names=resid_names(model), stop_at_layer=model.n_layers)
    options = {"target": args.target or None, "apply_ln": not args.no_ln, "top_k": args.top_k}
    results = {"logit": lens_from_cache(model, cache, **options)}
    if tuned is not None:
        results["tuned"] = lens_from_cache(model, cache, lens=tuned, **options)
    main = results.get("tuned", results["logit"])
    frame = pd.concat([r.to_frame().assign(lens=name) for name, r in results.items()], ignore_index=True)
    frame[["lens", *frame.columns[:-1]]].to_csv(out / "logit_lens.csv", index=False, float_format="%.6g")
    figures = [r.figure(args.metric, prompt=b) for r in results.values() for b in range(len(prompts))]
    figures += [r.target_figure(prompt=b) for r in results.values() if r.target_ids for b in range(len(prompts))]
    if tuned is not None:
        figures.append(LensComparison(results).figure())
    written = [out / "logit_lens.csv", save(figures, out / "logit_lens.html")]
    written.append(_write_provenance(out / "logit_lens.json", args, prompts, main, tuned, model.device))
    if not args.no_png:
        written.append(save(main.figure(args.metric), out / "logit_lens.png"))
    _report(written, main)
    return 0


def run_tuned_lens(args: argparse.Namespace) -> int:
    """Check the inputs, load the model, train the lens on the text, save it and print its losses."""
    from analyses.lens import train_tuned_lens

    out, prompts = prepare(args, TUNED_FILES)
    text, source = _training_text(args, prompts)
    model = load_model(args)
    lens = train_tuned_lens(model, text, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                            lr=args.lr, seed=args.seed, source=source)
    path = lens.save(out)
    _add_to_record(path / "tuned_lens.json", {"dtype": dtype_name(model.dtype), "device": str(model.device)})
    print(f"wrote {path} ({lens.info.steps} steps, {lens.info.tokens_seen} tokens of {source})")
    for layer, loss in enumerate(lens.info.layer_losses):
        print(f"  layer {layer}: KL(model || tuned lens) {loss:.4f} nats")
    return 0


def _training_text(args: argparse.Namespace, prompts: list[str]) -> tuple[str | list[str], str]:
    """(the text or documents to train on, what they are): the prompts, --text, or Python's docs."""
    from analyses.lens import default_text

    if args.prompts_file is not None:
        return prompts, f"{args.prompts_file} ({len(prompts)} prompts)"
    if prompts:
        return prompts, "--prompt"
    if args.text is not None:
        return _read_text(args.text), str(args.text)
    return default_text()


def _add_to_record(path: Path, extra: dict) -> None:
    """Add the run's load options to the lens's JSON record (the weights file keeps the lens's own info)."""
    record = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**record, **extra}, indent=2) + "\n", encoding="utf-8")


def _read_text(path: Path) -> str:
    """The training text of --text, or an error naming the file and the fix."""
    from interp.errors import InputError

    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--text {path} cannot be read ({err}): pass a UTF-8 text file, or leave --text "
                         "out to train on Python's documentation.") from None


def _write_provenance(path: Path, args: argparse.Namespace, prompts: list[str], result, tuned, device) -> Path:
    """Model, revision, tokens, lens and targets: enough to reproduce every file."""
    from dataclasses import asdict

    prov = result.provenance
    str_tokens = [[result.token_str(t) for t, m in zip(row, mask, strict=True) if m]
                  for row, mask in zip(prov.tokens, prov.attention_mask, strict=True)]
    record = {
        **provenance_record(prov, prompts, str_tokens, device),
        "layers": "0 = embedding, L+1 = after block L",
        "lenses": ["logit", "tuned"] if tuned is not None else ["logit"],
        "tuned_lens": {"path": str(args.tuned), **asdict(tuned.info)} if tuned is not None else None,
        "apply_ln": result.apply_ln,
        "metric": args.metric,
        "top_k": args.top_k,
        "targets": {result.token_str(t): t for t in result.target_ids},
    }
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _report(written: list[Path], result) -> None:
    """Print the files written and the first prompt's last-position top-1 token at each layer."""
    from interp.text import visible

    print_written(written)
    col = int(result.attention_mask[0].nonzero()[-1, 0])
    tops = [visible(result.token_str(t)) for t in result.top_ids[:, 0, col, 0].tolist()]
    print(f"{result.lens} lens, top-1 after the last token by layer: {' '.join(tops)}")
