"""`pythia-interp patch`: patching and circuit discovery on a task, written to a folder.

    $ pythia-interp patch --model toy --task induction --method path --out out/
    $ pythia-interp patch --model pythia-70m --clean "When Mary and John went to the store, John gave a drink to" \\
          --corrupt "When Alice and Bob went to the store, Carl gave a drink to" --answer " Mary" --wrong " John" \\
          --method eap-ig --out out/
    $ pythia-interp patch --model pythia-70m --prompts-file clean.txt --corrupt-file corrupt.txt \\
          --answer " Mary" " Tom" --wrong " John" " Anna" --method path --out out/

writes out/patching.csv (`sender, receiver, effect, effect_normalized` for path, eap, eap-ig and
circuit; `site, layer, head, position, effect, effect_normalized` for activation and attribution),
out/patching.html, .png and .json (the figure's data and the provenance), and out/circuit.json
(the graph JSON of `analyses.patching.results`) for eap, eap-ig and circuit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analyses.commands import (
    add_model_arguments,
    add_output_arguments,
    add_prompt_arguments,
    count_argument,
    load_model,
    prepare,
    print_written,
    prompt_text,
    read_lines,
)
from interp.options import dtype_name

TASKS = ("induction", "ioi", "greater-than")
FILES = ("patching.csv", "patching.html", "patching.png", "patching.json", "circuit.json")
OWN_TASK = """Your own task instead of --task: the clean prompts from --prompt TEXT, --prompts-file FILE (one per
line) or --clean TEXT...; as many corrupt prompts, in the same order and aligned token for token, from --corrupt
TEXT... or --corrupt-file FILE; and --answer and --wrong, one token each for every prompt, or one per prompt."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `patch` subcommand."""
    parser = subparsers.add_parser("patch", help="activation, path and edge patching, attribution, circuits",
                                   description=__doc__.split("\n\n")[0], epilog=OWN_TASK)
    add_model_arguments(parser)
    parser.add_argument("--task", default=None, help=f"a built-in task: {', '.join(TASKS)} (default: induction)")
    clean = add_prompt_arguments(parser, required=False, help="the clean prompt of your own task (see below)")
    clean.add_argument("--clean", nargs="+", type=prompt_text, help="your own clean prompt(s), instead of --task")
    corrupt = parser.add_mutually_exclusive_group()
    corrupt.add_argument("--corrupt", nargs="+", type=prompt_text,
                         help="the corrupt prompt(s), aligned token for token with the clean ones")
    corrupt.add_argument("--corrupt-file", type=Path, metavar="FILE",
                         help="a UTF-8 file with one corrupt prompt per line, for --prompts-file's clean ones")
    parser.add_argument("--answer", nargs="+", help="the answer token, e.g. ' Mary' (one token), or one per prompt")
    parser.add_argument("--wrong", nargs="+", help="the wrong token the logit difference compares with, or one per "
                        "prompt")
    parser.add_argument("--method", default="path", help="activation, path, attribution, eap, eap-ig or circuit")
    parser.add_argument("--n-prompts", type=count_argument(1), default=8, help="prompts of a built-in task (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a built-in task (default 0)")
    parser.add_argument("--metric", default=None, help="logit_diff, prob_diff or kl (default: the task's)")
    parser.add_argument("--sites", nargs="+", default=["z"], help="activation/attribution sites (default z)")
    parser.add_argument("--all-positions", action="store_true", help="patch every position at once")
    parser.add_argument("--direction", default="noising", help="noising (default) or denoising")
    parser.add_argument("--ablation", default="corrupt", help="corrupt (default), mean or zero")
    parser.add_argument("--senders", default="heads", help="path: heads (default), all, or names joined by ','")
    parser.add_argument("--receivers", default="logits", help="path: logits (default), or names joined by ','")
    parser.add_argument("--freeze-mlps", action="store_true", help="path: MLPs do not mediate")
    parser.add_argument("--qk-fix", action="store_true", help="attribution: AtP* exact attention for q and k")
    parser.add_argument("--steps", type=count_argument(1), default=5,
                        help="eap-ig/circuit: integration steps (default 5)")
    parser.add_argument("--top", type=count_argument(0), default=None,
                        help="circuit size in edges (default: smallest >= 0.8)")
    parser.add_argument("--selection", default="top", choices=["top", "greedy"],
                        help="circuit edges: the largest |scores| (top, default), or grown greedily from the logits")
    add_output_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check the inputs and the folder, run the method, write the files."""
    from analyses import patching
    from analyses.export import save

    patching.check_method(args.method)
    out, prompts = prepare(args, FILES)
    own = _own_task(args, prompts)
    model = load_model(args)
    task = _task(model, args, own)
    result, extra, circuit = _compute(patching, model, task, args)
    result.to_frame().to_csv(out / "patching.csv", index=False, float_format="%.6g")
    written = [out / "patching.csv"]
    figures = [result.figure(), *(e.figure() for e in extra)]
    written.append(save(figures, out / "patching.html"))
    record = {**result.provenance.record(), "dtype": dtype_name(model.dtype), "device": str(model.device),
              "method": args.method, "prompts": own, "str_tokens": result.provenance.str_tokens,
              "task": task.describe(), "options": _options(args)}
    if circuit is not None:
        _write(circuit.to_json(), out / "circuit.json")
        written.append(out / "circuit.json")
        record["circuit"] = circuit.to_json()["circuit"]
    _write(record, out / "patching.json")
    written.append(out / "patching.json")
    if not args.no_png:
        written.append(save(figures[0], out / "patching.png"))
    print_written(written)
    return 0


def _compute(patching, model, task, args):
    """(the result tabled in the CSV, other results drawn too, the circuit or None) for the chosen method."""
    common = {"metric": args.metric}
    if args.method == "activation":
        return patching.activation_patch(model, task, args.sites, per_position=not args.all_positions,
                                         direction=args.direction, ablation=args.ablation, **common), [], None
    if args.method == "attribution":
        return patching.atp(model, task, args.sites, per_position=not args.all_positions, qk_fix=args.qk_fix,
                            direction=args.direction, ablation=args.ablation, **common), [], None
    if args.method == "path":
        senders = args.senders if args.senders in ("heads", "all", "mlps") else args.senders.split(",")
        receivers = args.receivers.split(",")
        return patching.path_patch(model, task, senders, receivers, mediate=not args.freeze_mlps,
                                   direction=args.direction, ablation=args.ablation, **common), [], None
    if args.method == "eap":
        scores = patching.eap(model, task, direction=args.direction, ablation=args.ablation, **common)
    else:
        scores = patching.eap_ig(model, task, steps=args.steps, direction=args.direction, **common)
    curve = patching.faithfulness_curve(model, task, scores, selection=args.selection, **common)
    size = args.top if args.top is not None else (curve.smallest(0.8) or scores.graph.n_edges)
    circuit = patching.evaluate_circuit(model, task, scores.select(size, args.selection), scores, **common)
    if args.method == "circuit":
        return circuit, [curve, scores], circuit
    return scores, [circuit, curve], circuit


def _own_task(args: argparse.Namespace, prompts: list[str]) -> dict | None:
    """Your own task's prompts and tokens ({clean, corrupt, answer, wrong}), or None for a built-in task.

    Every check that needs no tokenizer happens here, before the model loads.
    """
    from analyses.patching.tasks import TaskError

    clean = prompts or args.clean
    if not (clean or args.corrupt or args.corrupt_file):
        if (args.task or "induction") not in TASKS:
            raise TaskError(f"Unknown task {args.task!r}: choose one of {', '.join(TASKS)}, or pass your own "
                            "prompts (--prompt/--prompts-file/--clean with --corrupt).")
        return None
    if args.task is not None:
        raise TaskError(f"--task {args.task} and your own prompts exclude each other: drop one of them.")
    corrupt = args.corrupt
    if args.corrupt_file is not None:
        corrupt = read_lines(args.corrupt_file, "--corrupt-file", "or use --corrupt TEXT ...")
    if not (clean and corrupt and args.answer and args.wrong):
        raise TaskError("Your own task needs clean prompts (--prompt, --prompts-file or --clean), --corrupt (or "
                        "--corrupt-file), --answer and --wrong together (or use --task induction|ioi|greater-than).")
    if len(corrupt) != len(clean):
        raise TaskError(f"{len(clean)} clean prompts and {len(corrupt)} corrupt ones: give one corrupt prompt "
                        "per clean prompt, in the same order.")
    return {"clean": clean, "corrupt": corrupt, "answer": _one_or_each(args.answer), "wrong": _one_or_each(args.wrong)}


def _one_or_each(tokens: list[str]) -> str | list[str]:
    """A token given once serves every prompt; several are one per prompt."""
    return tokens[0] if len(tokens) == 1 else tokens


def _task(model, args, own: dict | None):
    """Your own task, or the built-in one --task names."""
    from analyses.patching import tasks

    if own is not None:
        return tasks.make(model, own["clean"], own["corrupt"], own["answer"], own["wrong"])
    builders = {"induction": tasks.induction, "ioi": tasks.ioi, "greater-than": tasks.greater_than}
    return builders[args.task or "induction"](model, n_prompts=args.n_prompts, seed=args.seed)


def _options(args: argparse.Namespace) -> dict:
    keys = ("n_prompts", "seed", "metric", "sites", "all_positions", "direction", "ablation", "senders",
            "receivers", "freeze_mlps", "qk_fix", "steps", "top", "selection")
    return {k: getattr(args, k) for k in keys}


def _write(record: dict, path: Path) -> None:
    path.write_text(json.dumps(record, ensure_ascii=False, indent=1, allow_nan=False) + "\n", encoding="utf-8")
