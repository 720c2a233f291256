"""`pythia-interp sweep`: one analysis across checkpoints (and sizes), kept in a resumable results store.

    $ pythia-interp sweep --model toy --analysis attention --revisions all --out runs/toy

writes runs/toy/sweep.csv (one row per checkpoint and analysis row: model, revision, step,
tokens_seen, the analysis's columns, weights_sha256, duplicate_of), runs/toy/sweep.html (figures over
training, log step axis) and runs/toy/sweep.json (what ran), and keeps every checkpoint's rows in
runs/toy/store (or --store DIR). Rerunning reads the store: an interrupted sweep resumes, and a
finished one is not recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from analyses.commands import (
    add_device_arguments,
    add_output_arguments,
    add_prompt_arguments,
    check_output_dir,
    print_written,
    read_prompts,
)
from analyses.sweep.registry import ANALYSES

EXECUTORS = ("local", "ray")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `sweep` subcommand."""
    parser = subparsers.add_parser("sweep", help="an analysis across training checkpoints and model sizes",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None, metavar="NAME",
                        help="toy, toy-4l, pythia-70m, ...; repeat or comma-separate for several (default: toy)")
    parser.add_argument("--analysis", required=True, choices=list(ANALYSES), help="what to run at each checkpoint")
    parser.add_argument("--revisions", "--revision", dest="revisions", default="all",
                        help="all (default), log (log-spaced), or a list: step0,step512,main")
    add_prompt_arguments(parser, required=False)  # for lens and rope; attention then scores heads on them
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="an analysis parameter, e.g. seq_len=40 (JSON values; repeatable)")
    add_device_arguments(parser)
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local (default: one process, next checkpoint loading while this one runs) or ray")
    parser.add_argument("--ray-address", default=None,
                        help="a running Ray cluster (default: $RAY_ADDRESS, else a local Ray is started)")
    parser.add_argument("--ray-cpus", type=float, default=1, help="CPUs per Ray task (default 1)")
    parser.add_argument("--ray-gpus", type=float, default=0, help="GPUs per Ray task (default 0; with --device cuda)")
    parser.add_argument("--max-retries", type=int, default=2, help="Ray retries of a task whose worker died")
    add_output_arguments(parser, png=False)
    parser.add_argument("--store", type=Path, default=None, help="results store folder (default: OUT/store)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Parse the options, run the sweep, write the table, the figures and what ran."""
    from analyses.export import save

    check_output_dir(args.out, ("sweep.csv", "sweep.html", "sweep.json"))
    store = args.store if args.store is not None else args.out / "store"
    _check_folder(store, "--store")
    params = _params(args, read_prompts(args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, figures, sweeps = _run_analysis(args, store, params)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)
    table.to_csv(args.out / "sweep.csv", index=False, float_format="%.6g")
    written = [args.out / "sweep.csv", save(figures, args.out / "sweep.html")]
    written.append(_write_provenance(args.out / "sweep.json", args, sweeps, store, params.get("prompts")))
    print_written(written)
    print(_summary(sweeps, store))
    return 0


def _run_analysis(args: argparse.Namespace, store: Path, params: dict) -> tuple:
    """(table, figures, the sweeps run): one sweep, or for `circuit` the two sweeps of circuits over training."""
    from analyses.sweep.core import sweep

    options = ({"max_retries": args.max_retries, "num_cpus": args.ray_cpus, "num_gpus": args.ray_gpus}
               if args.executor == "ray" else {})
    kwargs = {"params": params, "store": store, "executor": args.executor, "dtype": args.dtype,
              "device": args.device, "progress": not args.no_progress, "ray_address": args.ray_address,
              "ray_options": options}
    models = args.model or ["toy"]
    if args.analysis == "circuit":
        from analyses.sweep.circuits import circuits_over_training

        training = circuits_over_training(models, args.revisions, **kwargs)
        return training.table(), training.figures(), training.sweeps
    result = sweep(models, args.analysis, args.revisions, **kwargs)
    return result.to_frame(), result.figures() or [_first_figure(result)], (result,)


def _check_folder(path: Path, option: str) -> None:
    """Refuse, before any work, a folder that cannot be made because a file is in the way."""
    from interp.errors import InputError

    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(f"{option} {path}: {blocker} is a file, so no folder can be made there; pass another path.")


def _params(args: argparse.Namespace, prompts: list[str]) -> dict:
    """--param NAME=VALUE pairs (JSON values, else strings) plus the prompts, if any were given."""
    from interp.errors import InputError

    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--param {item!r} is not NAME=VALUE; e.g. --param seq_len=40.")
        try:
            params[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[name.strip()] = value
    if prompts:
        params["prompts"] = prompts
    return params


def _first_figure(result):
    """A generic figure for analyses that define none: the first numeric column, max over rows."""
    skip = {"step", "tokens_seen", "layer", "head"}
    numeric = [c for c in result.frame.select_dtypes("number") if c not in skip]
    if not numeric:
        from interp.errors import InputError

        raise InputError(f"analysis {result.analysis.name!r} returned no numeric column to draw.")
    return result.figure(numeric[0])


def _write_provenance(path: Path, args: argparse.Namespace, sweeps: tuple, store: Path,
                      prompts: list[str] | None) -> Path:
    """Models, revisions, load options, prompts, keys, what was computed or read: enough to reproduce the table."""
    from analyses.sweep.core import dtype_name

    result = sweeps[0]
    record = {
        "models": list(result.models), "analysis": args.analysis, "revisions": args.revisions, "store": str(store),
        "dtype": dtype_name(args.dtype), "device": args.device or "cpu", "prompts": prompts,
        "executor": args.executor, "checkpoints": result.frame[["model", "revision", "step"]].drop_duplicates()
        .to_dict("records"), "duplicates": result.duplicates().to_dict("records"),
        "sweeps": [{"key": json.loads(s.key.to_json()), "key_digest": s.key.digest,
                    "computed": [list(c) for c in s.computed], "read_from_store": [list(c) for c in s.cached]}
                   for s in sweeps],
    }
    path.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def _summary(sweeps: tuple, store: Path) -> str:
    n_read, n_run = sum(len(s.cached) for s in sweeps), sum(len(s.computed) for s in sweeps)
    if n_run == 0:
        return f"all {n_read} checkpoints read from the store {store}: no model was loaded or run"
    return f"computed {n_run} checkpoints, read {n_read} from the store {store}"
