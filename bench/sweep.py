"""Sweep wall time: prefetching against its floor (analysis times plus one load), and Ray against local.

    $ python bench/sweep.py                                  # every toy-2l checkpoint, head detectors
    $ python bench/sweep.py --synthetic 70m --checkpoints 8  # random pythia-70m weights in a local hub cache
    $ python bench/sweep.py --no-ray                         # local executor only

Each executor runs in a fresh process (the local ones in interleaved rounds; medians shown, every
round's wall in brackets), after a warm-up checkpoint (imports, first forward), on a
fresh results store. "floor" is what a sweep cannot beat on one process: the sum of every
checkpoint's analysis (and store write) times, measured without prefetch so that nothing else
competes for the CPU, plus one load. The target is prefetch wall <= 1.15 x floor. "own floor" is
the same sum from each run's own timings (with prefetch, analyses share the CPU with loading, so
this shows the orchestration's overhead alone; on a busy machine the two floors differ by noise). Ray's time
excludes `ray.init`, shown apart; its workers import torch on their first task, as in any real run.

--synthetic builds a Hugging Face cache of random-init checkpoints with a suite size's exact
config (fp16, as on the hub), laid out as `hf download` writes one (files under their sha256 in
blobs/, so the integrity fingerprint reads no file, as in a real cache), and points HF_HUB_CACHE
at it, so that every executor (Ray workers too) loads them as `pythia-<size>` offline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, model: str, revisions: list[str], analysis: str, cpus: int) -> dict:
    """One executor in this process: warm up on the first checkpoint, then time the sweep."""
    from analyses.sweep import sweep

    sweep(model, analysis, revisions[:1], progress=False)  # imports, first forward
    init = 0.0
    if mode == "ray":
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        init = time.perf_counter() - start
    store = tempfile.mkdtemp(prefix="bench-sweep-")
    options = {"executor": "ray"} if mode == "ray" else {"prefetch": mode == "prefetch"}
    start = time.perf_counter()
    result = sweep(model, analysis, revisions, store=store, progress=False, **options)
    wall = time.perf_counter() - start
    timings = result.timings
    return {"mode": mode, "wall": wall, "init": init, "analysis": float(timings["analysis_s"].sum()),
            "write": float(timings["write_s"].sum()), "loads": timings["load_s"].tolist()}


def run_child(mode: str, args: argparse.Namespace, revisions: list[str], env: dict) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--model", args.model, "--analysis", args.analysis,
               "--revisions", ",".join(revisions), "--cpus", str(args.cpus)]
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def synthetic_cache(size: str, n: int, root: Path) -> list[str]:
    """A hub cache holding `n` random-init fp16 checkpoints of pythia-<size> (steps 0, 1, 2, 4, ...), laid out as
    `hf download` lays out a real one: each file in blobs/ under its sha256, linked from snapshots/<commit>/."""
    import torch
    from transformers import GPTNeoXForCausalLM

    import interp

    repo = root / f"models--EleutherAI--pythia-{size}"
    repo.mkdir(parents=True, exist_ok=True)
    steps = interp.suite.pythia_steps()[:n]
    for step in steps:
        snapshot = repo / "snapshots" / hashlib.sha1(f"{size}-{step}".encode()).hexdigest()
        if not (snapshot / "model.safetensors").exists():
            torch.manual_seed(step)
            hf = GPTNeoXForCausalLM(interp.suite.config(size)).half()
            with tempfile.TemporaryDirectory(dir=root) as saved:
                hf.save_pretrained(saved)
                for file in sorted(Path(saved).iterdir()):
                    _link_blob(file, repo / "blobs", snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / f"step{step}").write_text(snapshot.name)
    return [f"step{s}" for s in steps]


def _link_blob(file: Path, blobs: Path, snapshot: Path) -> None:
    """Move `file` to blobs/<its sha256> and link snapshot/<its name> to it, as the hub cache stores files."""
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    if not (blobs / digest).exists():
        shutil.move(file, blobs / digest)
    (snapshot / file.name).unlink(missing_ok=True)
    (snapshot / file.name).symlink_to(Path("..", "..", "blobs", digest))


def median_run(runs: list[dict]) -> dict:
    """Per-key medians over rounds (loads: the median first load, the median sum)."""
    def med(values):
        return statistics.median(values)

    return {"mode": runs[0]["mode"], "wall": med([r["wall"] for r in runs]), "init": med([r["init"] for r in runs]),
            "analysis": med([r["analysis"] for r in runs]), "write": med([r["write"] for r in runs]),
            "loads": [med([r["loads"][0] for r in runs]), *([0.0] * (len(runs[0]["loads"]) - 1))],
            "all_loads": med([sum(r["loads"]) for r in runs]), "walls": [r["wall"] for r in runs]}


def report(runs: dict[str, dict], args: argparse.Namespace, n: int) -> None:
    """Print wall times side by side, as ratios to the floor."""
    base = runs["sequential"]
    floor = base["analysis"] + base["write"] + base["loads"][0]
    print(f"sweep of {args.model}, {n} checkpoints, analysis {args.analysis!r}, {args.cpus} CPUs "
          f"(torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}), medians of {args.rounds} rounds")
    print(f"  sum of analysis times {base['analysis']:7.2f} s   store writes {base['write']:5.2f} s   "
          f"one load {base['loads'][0]:5.2f} s   (all loads {base['all_loads']:.2f} s)")
    print(f"  floor = analyses + writes + one load = {floor:.2f} s")
    print(f"  {'executor':<28}{'wall s':>8}{'/ floor':>9}{'/ own floor':>13}")
    labels = {"prefetch": "local, prefetch (default)", "sequential": "local, no prefetch",
              "ray": f"ray, {args.cpus} CPUs"}
    for mode, run in runs.items():
        extra = f"   (+ ray.init {run['init']:.1f} s)" if mode == "ray" else ""
        target = "   target <= 1.15" if mode == "prefetch" else ""
        own = run["analysis"] + run["write"] + run["loads"][0]
        walls = " ".join(f"{w:.1f}" for w in run["walls"])
        print(f"  {labels[mode]:<28}{run['wall']:8.2f}{run['wall'] / floor:9.2f}{run['wall'] / own:13.2f}"
              f"   [{walls}]{target}{extra}")
    if "ray" in runs:
        print(f"  ray / local prefetch: {runs['ray']['wall'] / runs['prefetch']['wall']:.2f}x wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="toy-2l")
    parser.add_argument("--analysis", default="attention")
    parser.add_argument("--revisions", default="all")
    parser.add_argument("--synthetic", default=None, metavar="SIZE", help="random pythia-SIZE checkpoints")
    parser.add_argument("--checkpoints", type=int, default=8, help="how many synthetic checkpoints")
    parser.add_argument("--cache", type=Path, default=None, help="where to build the synthetic cache")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the local runs (Ray: one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.revisions.split(","), args.analysis, args.cpus)))
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if args.synthetic:
        cache = args.cache or Path(tempfile.gettempdir()) / "bench-sweep-hub-blobs"
        revisions = synthetic_cache(args.synthetic, args.checkpoints, cache)
        args.model = f"pythia-{args.synthetic}"
        env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    else:
        from analyses.sweep.revisions import checkpoints

        revisions = [c.revision for c in checkpoints(args.model, args.revisions)]
    rounds: dict[str, list[dict]] = {"prefetch": [], "sequential": []}
    for _ in range(args.rounds):  # interleaved, so a busy spell on a shared machine hits both
        for mode in rounds:
            rounds[mode].append(run_child(mode, args, revisions, env))
    if not args.no_ray:
        rounds["ray"] = [run_child("ray", args, revisions, env)]
    report({m: median_run(r) for m, r in rounds.items()}, args, len(revisions))


if __name__ == "__main__":
    main()
