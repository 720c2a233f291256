"""`pythia-interp attention`: attention maps and head scores for prompts, written to a folder.

    $ pythia-interp attention --model toy --prompt "The cat sat. The cat sat." --out out/

writes out/attention.html (every head with a layer slider, what the last token attends to, and
the head scores, for each prompt; works offline), out/attention.png (the first prompt's heads, a
row per layer), out/head_scores.csv (one row per head) and out/attention.json (provenance).
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

FILES = ("attention.html", "attention.png", "head_scores.csv", "attention.json")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `attention` subcommand."""
    parser = subparsers.add_parser(
        "attention",
        help="attention maps and head detector scores for prompts",
        description=__doc__.split("\n\n")[0],
    )
    add_model_arguments(parser)
    add_prompt_arguments(parser)
    add_output_arguments(parser)
    parser.add_argument("--scores-on", choices=("random", "prompt"), default="random",
                        help="score heads on repeated random tokens (default) or on the prompts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default 0)")
    parser.add_argument("--exclude-first", action="store_true", help="ignore attention to position 0")
    parser.add_argument("--exclude-current", action="store_true", help="ignore attention to self")
    parser.add_argument("--max-pos", type=int, default=None,
                        help="most positions per figure axis (default 256 for one head, 128 per small multiple)")
    parser.add_argument("--long", choices=("pool", "crop"), default="pool",
                        help="longer prompts: max-pool blocks of positions, or crop to the last ones")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check the outputs, load the model, draw the prompts' attention, score the heads, write the files."""
    from analyses.attention import detect_heads, patterns
    from analyses.export import save

    out, prompts = prepare(args, FILES)
    model = load_model(args)
    pats = patterns(model, prompts)
    options = {"exclude_first": args.exclude_first, "exclude_current": args.exclude_current}
    scores = detect_heads(model, prompts if args.scores_on == "prompt" else None, seed=args.seed, **options)
    fit = {"max_pos": args.max_pos, "long": args.long}
    figures = [f for b in range(len(prompts)) for f in (pats.figure(batch=b, **fit), pats.token_figure(batch=b, **fit))]
    written = [save([*figures, scores.figure()], out / "attention.html")]
    scores.to_frame().to_csv(out / "head_scores.csv", index=False, float_format="%.6g")
    written.append(out / "head_scores.csv")
    written.append(_write_provenance(out / "attention.json", args, prompts, pats, scores, model.device))
    if not args.no_png:
        written.append(save(pats.figure(slider=False, **fit), out / "attention.png"))
    _report(written, scores)
    return 0


def _write_provenance(path: Path, args: argparse.Namespace, prompts: list[str], pats, scores, device) -> Path:
    """Model, revision, tokens and scoring settings: enough to reproduce every file."""
    prov = pats.provenance
    on_prompt = args.scores_on == "prompt"
    record = {
        **provenance_record(prov, prompts, pats.str_tokens, device),
        "n_heads": prov.n_heads,
        "head_scores": {
            "on": "prompts" if on_prompt else "repeated random tokens",
            "seed": None if on_prompt else args.seed,
            "tokens": None if on_prompt else scores.provenance.tokens,
            "exclude_first": scores.exclude_first,
            "exclude_current": scores.exclude_current,
            "error_measure": scores.error_measure,
        },
        "figures": {"max_pos": args.max_pos, "long": args.long},
    }
    lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in record.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")  # a key per line
    return path


def _report(written: list[Path], scores) -> None:
    """Print the files written and the top heads of each detector."""
    print_written(written)
    for name in ("prev_token", "duplicate_token", "induction", "first_token"):
        top = ", ".join(f"L{L}H{h}" for L, h in scores.top(name, 3))
        print(f"top {name} heads: {top}")
