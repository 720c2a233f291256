"""`pythia-interp patch`: patching and circuit discovery on a task, written to a folder.

    $ pythia-interp patch --model toy --task induction --method path --out out/
    $ pythia-interp patch --model pythia-70m --clean "When Mary and John went to the store, John gave a drink to" \\
          --corrupt "When Alice and Bob went to the store, Carl gave a drink to" --answer " Mary" --wrong " John" \\
          --method eap-ig --out out/

writes out/patching.csv (`sender, receiver, effect, effect_normalized` for path, eap, eap-ig and
circuit; `site, layer, head, position, effect, effect_normalized` for activation and attribution),
out/patching.html, .png and .json (the figure's data and the provenance), and out/circuit.json
(the graph JSON of `analyses.patching.results`) for eap, eap-ig and circuit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ("induction", "ioi", "greater-than")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `patch` subcommand."""
    parser = subparsers.add_parser("patch", help="activation, path and edge patching, attribution, circuits",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy", help="name or path interp.load takes (default: toy)")
    parser.add_argument("--revision", default=None, help="checkpoint, e.g. step1000 (default: final)")
    parser.add_argument("--task", default=None, help=f"a built-in task: {', '.join(TASKS)} (default: induction)")
    parser.add_argument("--clean", nargs="+", help="your own clean prompt(s), instead of --task")
    parser.add_argument("--corrupt", nargs="+", help="the corrupt prompt(s), aligned token for token")
    parser.add_argument("--answer", help="the answer token, e.g. ' Mary' (one token)")
    parser.add_argument("--wrong", help="the wrong token the logit difference compares with")
    parser.add_argument("--method", default="path", help="activation, path, attribution, eap, eap-ig or circuit")
    parser.add_argument("--out", required=True, type=Path, help="folder to write into (created)")
    parser.add_argument("--n-prompts", type=int, default=8, help="prompts of a built-in task (default 8)")
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
    parser.add_argument("--steps", type=int, default=5, help="eap-ig/circuit: integration steps (default 5)")
    parser.add_argument("--top", type=int, default=None, help="circuit size in edges (default: smallest >= 0.8)")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG, the one file that needs a browser")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check the inputs and the folder, run the method, write the files."""
    from analyses import patching
    from analyses.export import save

    patching.check_method(args.method)
    _check_folder(args.out)
    import interp

    model = interp.load(args.model, revision=args.revision)
    task = _task(model, args)
    result, extra, circuit = _compute(patching, model, task, args)
    out: Path = args.out
    result.to_frame().to_csv(out / "patching.csv", index=False, float_format="%.6g")
    written = [out / "patching.csv"]
    figures = [result.figure(), *(e.figure() for e in extra)]
    written.append(save(figures, out / "patching.html"))
    record = {**result.provenance.record(), "method": args.method, "str_tokens": result.provenance.str_tokens,
              "task": task.describe(), "options": _options(args)}
    if circuit is not None:
        _write(circuit.to_json(), out / "circuit.json")
        written.append(out / "circuit.json")
        record["circuit"] = circuit.to_json()["circuit"]
    _write(record, out / "patching.json")
    written.append(out / "patching.json")
    if not args.no_png:
        written.append(save(figures[0], out / "patching.png"))
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
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
    curve = patching.faithfulness_curve(model, task, scores, **common)
    size = args.top if args.top is not None else (curve.smallest(0.8) or scores.graph.n_edges)
    circuit = patching.evaluate_circuit(model, task, scores.top(size), scores, **common)
    if args.method == "circuit":
        return circuit, [curve, scores], circuit
    return scores, [circuit, curve], circuit


def _task(model, args):
    from analyses.patching import tasks

    if args.clean or args.corrupt:
        if not (args.clean and args.corrupt and args.answer and args.wrong):
            raise tasks.TaskError("Your own task needs --clean, --corrupt, --answer and --wrong together "
                                  "(or use --task induction|ioi|greater-than).")
        return tasks.make(model, args.clean, args.corrupt, args.answer, args.wrong)
    name = args.task or "induction"
    builders = {"induction": tasks.induction, "ioi": tasks.ioi, "greater-than": tasks.greater_than}
    if name not in builders:
        raise tasks.TaskError(f"Unknown task {name!r}: choose one of {', '.join(TASKS)}, or pass --clean/--corrupt.")
    return builders[name](model, n_prompts=args.n_prompts, seed=args.seed)


def _check_folder(out: Path) -> None:
    """Create the output folder, or fail now (before any work) if it cannot be written."""
    import os

    from analyses.patching.errors import PatchingError

    if out.exists() and not out.is_dir():
        raise PatchingError(f"--out {str(out)!r} is a file; give a folder (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PatchingError(f"Cannot create the folder {str(out)!r} ({err.strerror}); choose another --out.") from None
    if not os.access(out, os.W_OK):
        raise PatchingError(f"The folder {str(out)!r} is not writable; choose another --out.")


def _options(args: argparse.Namespace) -> dict:
    keys = ("n_prompts", "seed", "metric", "sites", "all_positions", "direction", "ablation", "senders",
            "receivers", "freeze_mlps", "qk_fix", "steps", "top")
    return {k: getattr(args, k) for k in keys}


def _write(record: dict, path: Path) -> None:
    path.write_text(json.dumps(record, ensure_ascii=False, indent=1, allow_nan=False) + "\n", encoding="utf-8")
