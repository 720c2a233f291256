"""`pythia-interp logit-lens`: what every layer would predict for a prompt, written to a folder.

    $ pythia-interp logit-lens --model toy --prompt "The cat sat on the" --target " mat" --out out/

writes out/logit_lens.csv (a row per lens, layer and position: layer 0 is the embedding, L+1
the output of block L), out/logit_lens.html (the layer x position grid, target tokens across
layers, and logit vs tuned lens with --tuned), out/logit_lens.png (the grid) and
out/logit_lens.json (provenance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analyses.commands import add_model_arguments, provenance_record

METRICS = ("kl", "cross_entropy", "entropy", "top1_prob")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `logit-lens` subcommand."""
    parser = subparsers.add_parser(
        "logit-lens",
        help="decode every layer of a prompt (logit or tuned lens)",
        description=__doc__.split("\n\n")[0],
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="text to decode")
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        help="a token to follow across layers, e.g. ' Paris' (repeatable)",
    )
    parser.add_argument(
        "--tuned",
        type=Path,
        default=None,
        help="a tuned lens folder (from `tuned-lens train`) to decode with as well",
    )
    parser.add_argument("--metric", choices=METRICS, default="kl", help="grid colour (default: kl)")
    parser.add_argument("--no-ln", action="store_true", help="skip the final LayerNorm")
    parser.add_argument("--top-k", type=int, default=5, help="tokens shown on hover (default 5)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write into (created)")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG (needs no browser)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model (and lens), decode the prompt, write the files."""
    import pandas as pd

    import interp
    from analyses.export import save
    from analyses.logit_lens import lens_from_cache, resid_names
    from analyses.tuned_lens import LensComparison, TunedLens

    model = interp.load(args.model, revision=args.revision)
    tuned = TunedLens.load(args.tuned) if args.tuned is not None else None
    _, cache = model.run_with_cache(
        args.prompt, names=resid_names(model), stop_at_layer=model.n_layers
    )
    options = {"target": args.target or None, "apply_ln": not args.no_ln, "top_k": args.top_k}
    results = {"logit": lens_from_cache(model, cache, **options)}
    if tuned is not None:
        results["tuned"] = lens_from_cache(model, cache, lens=tuned, **options)
    main = results.get("tuned", results["logit"])
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.concat(
        [r.to_frame().assign(lens=name) for name, r in results.items()], ignore_index=True
    )
    frame[["lens", *frame.columns[:-1]]].to_csv(
        out / "logit_lens.csv", index=False, float_format="%.6g"
    )
    figures = [r.figure(args.metric) for r in results.values()]
    figures += [r.target_figure() for r in results.values() if r.target_ids]
    if tuned is not None:
        figures.append(LensComparison(results).figure())
    written = [out / "logit_lens.csv", save(figures, out / "logit_lens.html")]
    written.append(_write_provenance(out / "logit_lens.json", args, main, tuned))
    if not args.no_png:
        written.append(save(main.figure(args.metric), out / "logit_lens.png"))
    _report(written, main)
    return 0


def _write_provenance(path: Path, args: argparse.Namespace, result, tuned) -> Path:
    """Model, revision, tokens, lens and targets: enough to reproduce every file."""
    from dataclasses import asdict

    prov = result.provenance
    record = {
        **provenance_record(prov, args.prompt, [result.token_str(t) for t in prov.tokens[0]]),
        "layers": "0 = embedding, L+1 = after block L",
        "lenses": ["logit", "tuned"] if tuned is not None else ["logit"],
        "tuned_lens": {"path": str(args.tuned), **asdict(tuned.info)}
        if tuned is not None
        else None,
        "apply_ln": result.apply_ln,
        "metric": args.metric,
        "top_k": args.top_k,
        "targets": {result.token_str(t): t for t in result.target_ids},
    }
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _report(written: list[Path], result) -> None:
    """Print the files written and the last position's top-1 token at each layer."""
    from interp.text import visible

    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    col = int(result.attention_mask[0].nonzero()[-1, 0])
    tops = [visible(result.token_str(t)) for t in result.top_ids[:, 0, col, 0].tolist()]
    print(f"{result.lens} lens, top-1 after the last token by layer: {' '.join(tops)}")
