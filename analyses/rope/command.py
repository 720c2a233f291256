"""`pythia-interp rope`: what every head does with position, written to a folder.

    $ pythia-interp rope --model toy --out out/
    $ pythia-interp rope --model toy --text-file notes.txt --ablate 6 --out out/

writes out/rope_heads.csv (one row per head: label, positional index, rotary and pass-through
shares, kernel argmax, dominant band, previous-token and sink attention), out/rope_bands.csv
(one row per head and part: frequency, wavelength, energy, variance share by bias term),
out/rope.html (head maps, band heatmaps, kernels, position tests, QK circuit, ablations; offline),
out/rope.png (the rotary share map) and out/rope.json (provenance and settings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analyses.commands import add_model_arguments, provenance_record


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `rope` subcommand."""
    parser = subparsers.add_parser("rope", help="RoPE-aware head probing: positional vs content heads, bands",
                                   description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--prompt", default=None, help="text to probe on (default: Python's own documentation)")
    text.add_argument("--text-file", type=Path, default=None, help="a UTF-8 text file to probe on")
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens of the text to use (default: all of a prompt, else min(256, n_ctx / 2))")
    parser.add_argument("--ablate", type=int, default=4, metavar="N",
                        help="ablate bands of the N most positional heads (default 4; 0 skips)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write into (created)")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG, the one file that needs a browser")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, probe it, run the position tests (and ablations), write the files."""
    import interp
    from analyses.export import save
    from analyses.rope import band_ablation, position_tests, probe, qk_circuit
    from analyses.rope.heads import strongest

    _check_out(args.out)
    model = interp.load(args.model, revision=args.revision)
    tokens, source = _tokens(model, args)
    result = probe(model, tokens)
    figures = result.figures()
    extra: dict = {}
    rotary = result.decomposition.geometry.positional == "rotary"
    if tokens.ids.shape[1] >= 4:
        tests = position_tests(model, tokens, decomposition=result.decomposition)
        figures.append(tests.figure())
        extra["position_tests"] = {"split": tests.split, "shift": tests.shift, "gap": tests.gap}
    top = strongest(result.decomposition.positional_index, result.decomposition.layers, 1)[0]
    if rotary:
        figures.append(qk_circuit(model).figure(*top))
        if args.ablate > 0:
            heads = strongest(result.decomposition.positional_index, result.decomposition.layers, args.ablate)
            figures.append(band_ablation(model, tokens, heads=heads).figure())
            extra["ablated_heads"] = [list(h) for h in heads]
    out: Path = args.out
    written = [save(figures, out / "rope.html")]
    result.to_frame().to_csv(out / "rope_heads.csv", index=False, float_format="%.6g")
    result.bands().to_csv(out / "rope_bands.csv", index=False, float_format="%.6g")
    written += [out / "rope_heads.csv", out / "rope_bands.csv"]
    written.append(_write_provenance(out / "rope.json", model, result, source, extra))
    if not args.no_png:
        written.append(save(result.figure(), out / "rope.png"))
    _report(written, result)
    return 0


def _check_out(out: Path) -> None:
    """Refuse an output folder that cannot be written, before any work."""
    import os

    from interp.errors import InputError

    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"--out {str(out)!r}: {str(existing)!r} is a file, not a folder; choose another --out.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {str(out)!r}: no permission to write in {str(existing)!r}; choose another --out.")


def _tokens(model, args: argparse.Namespace):
    """The tokens to probe on and where they came from."""
    from analyses.rope.common import n_ctx, sample_tokens
    from interp.model import Tokens

    if args.prompt is None and args.text_file is None:
        n = args.tokens or min(256, n_ctx(model) // 2)
        return sample_tokens(model, n), "sample_text"
    text = args.prompt if args.prompt is not None else args.text_file.read_text(encoding="utf-8")
    ids = model.to_tokens(text).ids[:, : args.tokens or n_ctx(model)]
    return Tokens(ids, ids.new_ones(ids.shape)), "prompt" if args.prompt is not None else str(args.text_file)


def _write_provenance(path: Path, model, result, source: str, extra: dict) -> Path:
    """Model, revision, tokens, thresholds and settings: enough to reproduce every file."""
    from dataclasses import asdict

    dec = result.decomposition
    prov = dec.provenance
    text = model.to_string(prov.tokens[0]) if model.tokenizer is not None else ""
    str_tokens = model.to_str_tokens(prov.tokens[0]) if model.tokenizer is not None else []
    record = {
        **provenance_record(prov, text, str_tokens),
        "n_heads": prov.n_heads,
        "text_source": source,
        "geometry": asdict(dec.geometry),
        "thresholds": asdict(result.heads.thresholds),
        "offset_convention": "Delta = key_pos - query_pos (previous token: -1)",
        **extra,
    }
    lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in record.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return path


def _report(written: list[Path], result) -> None:
    """Print the files written and the heads by label."""
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    frame = result.to_frame()
    for label in ("positional", "mixed", "content"):
        names = ", ".join(frame.loc[frame["label"] == label, "name"])
        print(f"{label} heads: {names or '-'}")
