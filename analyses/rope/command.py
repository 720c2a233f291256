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

from analyses.commands import (
    add_model_arguments,
    add_output_arguments,
    add_prompt_arguments,
    load_model,
    prepare,
    print_written,
    provenance_record,
)

FILES = ("rope_heads.csv", "rope_bands.csv", "rope.html", "rope.png", "rope.json")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `rope` subcommand."""
    parser = subparsers.add_parser("rope", help="RoPE-aware head probing: positional vs content heads, bands",
                                   description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    text = add_prompt_arguments(parser, required=False,
                                help="text to probe on (default: Python's own documentation)")
    text.add_argument("--text-file", type=Path, default=None, help="a UTF-8 text file to probe on, as one text")
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens of each text to use (default: all of a prompt, else min(256, n_ctx / 2))")
    parser.add_argument("--ablate", type=int, default=4, metavar="N",
                        help="ablate bands of the N most positional heads (default 4; 0 skips)")
    add_output_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, probe it, run the position tests (and ablations), write the files."""
    from analyses.export import save
    from analyses.rope import band_ablation, position_tests, probe, qk_circuit
    from analyses.rope.heads import strongest

    out, prompts = prepare(args, FILES)
    texts, source = _texts(args, prompts)
    model = load_model(args)
    tokens = _tokens(model, texts, args.tokens)
    result = probe(model, tokens)
    figures = result.figures()
    extra: dict = {}
    rotary = result.decomposition.geometry.positional == "rotary"
    if tokens.ids.shape[1] >= 4:
        unpadded = _longest(tokens) if tokens.padded else tokens  # the tests shift positions: no padding
        tests = position_tests(model, unpadded, decomposition=None if tokens.padded else result.decomposition)
        figures.append(tests.figure())
        extra["position_tests"] = {"split": tests.split, "shift": tests.shift, "gap": tests.gap,
                                   "prompts": "the longest" if tokens.padded else "all"}
    top = strongest(result.decomposition.positional_index, result.decomposition.layers, 1)[0]
    if rotary:
        figures.append(qk_circuit(model).figure(*top))
        if args.ablate > 0:
            heads = strongest(result.decomposition.positional_index, result.decomposition.layers, args.ablate)
            figures.append(band_ablation(model, tokens, heads=heads).figure())
            extra["ablated_heads"] = [list(h) for h in heads]
    written = [save(figures, out / "rope.html")]
    result.to_frame().to_csv(out / "rope_heads.csv", index=False, float_format="%.6g")
    result.bands().to_csv(out / "rope_bands.csv", index=False, float_format="%.6g")
    written += [out / "rope_heads.csv", out / "rope_bands.csv"]
    written.append(_write_provenance(out / "rope.json", model, result, source, extra))
    if not args.no_png:
        written.append(save(result.figure(), out / "rope.png"))
    _report(written, result)
    return 0


def _texts(args: argparse.Namespace, prompts: list[str]) -> tuple[list[str], str]:
    """(the texts to probe on, where they came from); no texts means the sample text."""
    if args.prompts_file is not None:
        return prompts, str(args.prompts_file)
    if args.text_file is None:
        return prompts, "prompt" if prompts else "sample_text"
    try:
        return [args.text_file.read_text(encoding="utf-8")], str(args.text_file)
    except (OSError, UnicodeDecodeError) as err:
        from interp.errors import InputError

        raise InputError(f"--text-file {args.text_file} cannot be read ({err}): pass a UTF-8 text file, or "
                         "--prompt TEXT.") from None


def _tokens(model, texts: list[str], n_tokens: int | None):
    """The tokens to probe on: a row per text (left-padded), each cut to `n_tokens`; else the sample text."""
    from analyses.rope.common import n_ctx, sample_tokens

    if not texts:
        return sample_tokens(model, n_tokens or min(256, n_ctx(model) // 2))
    return _left_padded([model.to_tokens(t).ids[0, : n_tokens or n_ctx(model)] for t in texts])


def _left_padded(rows: list):
    """Tokens of ragged id rows, padded on the left (the pad id is the row's first token, masked out)."""
    import torch

    from interp.tokens import Tokens

    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r.new_full((width - len(r),), int(r[0])), r]) for r in rows])  # (batch, pos)
    mask = torch.stack([torch.arange(width) >= width - len(r) for r in rows]).long()  # (batch, pos)
    return Tokens(ids, mask)


def _longest(tokens):
    """The longest prompt of a padded batch, alone (a batch of one, unpadded)."""
    from interp.tokens import Tokens

    i = max(range(len(tokens)), key=lambda b: tokens.lengths[b])
    return Tokens(tokens.ids[i : i + 1], tokens.attention_mask[i : i + 1])


def _write_provenance(path: Path, model, result, source: str, extra: dict) -> Path:
    """Model, revision, tokens, thresholds and settings: enough to reproduce every file."""
    from dataclasses import asdict

    dec = result.decomposition
    prov = dec.provenance
    pairs = zip(prov.tokens, prov.attention_mask, strict=True)
    rows = [[t for t, m in zip(ids, mask, strict=True) if m] for ids, mask in pairs]  # a prompt's tokens, unpadded
    texts = [model.to_string(r) for r in rows] if model.tokenizer is not None else []
    str_tokens = [model.to_str_tokens(r) for r in rows] if model.tokenizer is not None else []
    record = {
        **provenance_record(prov, texts, str_tokens, model.device),
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
    print_written(written)
    frame = result.to_frame()
    for label in ("positional", "mixed", "content"):
        names = ", ".join(frame.loc[frame["label"] == label, "name"])
        print(f"{label} heads: {names or '-'}")
