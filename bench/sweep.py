"""Sweep wall time: prefetching against its floor (analysis times plus one load), and Ray against local.

    $ python bench/sweep.py                                  # every toy-2l checkpoint, head detectors
    $ python bench/sweep.py --synthetic 70m --checkpoints 8  # random pythia-70m weights in a local hub cache
    $ python bench/sweep.py --no-ray                         # local executor only

"floor" is what a sweep cannot beat on one process: the sum of every checkpoint's analysis (and
store write) times, measured without prefetch so that nothing else competes for the CPU, plus
one load. The target is prefetch wall <= 1.15 x floor.

The local executor runs in pairs: a sweep without prefetch (which gives the pair's floor) and one
with it, back to back in one process on fresh stores, the order alternating from pair to pair.
Each of `--rounds` fresh processes warms up (imports, first forward, first swap) and runs
`--pairs` pairs. A sweep's analysis times move by 10-20% from one process to the next, and from
one second to the next on a shared machine, so a ratio is only fair within a pair: each ratio
shown is the median over pairs of that pair's wall / that pair's floor (min-max in brackets).
"quiet pairs" leaves out the pairs during which other processes on the machine took more than
0.2 of a core (from /proc/stat, less this process's own CPU time, so a slowdown of our own
making is never left out). Walls are medians, every one listed. "own floor" is the same sum
from each sweep's own timings (with prefetch, analyses share the CPU with loading, so this shows
the orchestration's overhead alone). Ray runs once, in a process of its own; its ratio is to the
median floor. Ray's time excludes `ray.init`, shown apart; its workers import torch on their
first task, as in any real run. The load average is printed before and after.

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
QUIET = 0.2  # a pair is quiet when other processes took at most this many cores during both of its sweeps


def child(modes: list[str], model: str, revisions: list[str], analysis: str, cpus: int) -> list[dict]:
    """Executors in this process, one after another: warm up on two checkpoints, then time each sweep."""
    from analyses.sweep import sweep

    sweep(model, analysis, revisions[:2], progress=False)  # imports, first forward, first swap
    runs = []
    for mode in modes:
        init = 0.0
        if mode == "ray":
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            init = time.perf_counter() - start
        store = tempfile.mkdtemp(prefix="bench-sweep-")
        options = {"executor": "ray"} if mode == "ray" else {"prefetch": mode == "prefetch"}
        busy, cpu, start = machine_cpu(), time.process_time(), time.perf_counter()
        result = sweep(model, analysis, revisions, store=store, progress=False, **options)
        wall = time.perf_counter() - start
        others = machine_cpu() - busy - (time.process_time() - cpu)
        timings = result.timings
        runs.append({"mode": mode, "wall": wall, "init": init, "analysis": float(timings["analysis_s"].sum()),
                     "write": float(timings["write_s"].sum()), "loads": timings["load_s"].tolist(),
                     "others": others / wall})
        shutil.rmtree(store, ignore_errors=True)
    return runs


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (or stolen by its hypervisor) since boot; 0 where unknown."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_child(modes: list[str], args: argparse.Namespace, revisions: list[str], env: dict) -> list[dict]:
    command = [sys.executable, __file__, "--child", ",".join(modes), "--model", args.model, "--analysis",
               args.analysis, "--revisions", ",".join(revisions), "--cpus", str(args.cpus)]
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{','.join(modes)} run failed:\n{out.stderr[-3000:]}")
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


def floor_of(run: dict) -> float:
    """Analyses + writes + the first load: a sweep without prefetch's floor."""
    return run["analysis"] + run["write"] + run["loads"][0]


def summary(runs: list[dict], floors: list[float], quiet: list[bool]) -> dict:
    """Medians over pairs: wall, and the ratios to the pair's floor (all pairs, and the quiet ones), and to
    the sweep's own floor."""
    med = statistics.median
    ratios = [r["wall"] / f for r, f in zip(runs, floors, strict=True)]
    calm = [r for r, q in zip(ratios, quiet, strict=True) if q]
    return {"wall": med([r["wall"] for r in runs]), "init": med([r["init"] for r in runs]),
            "ratio": med(ratios), "spread": (min(ratios), max(ratios)), "quiet": med(calm) if calm else None,
            "quiet_spread": (min(calm), max(calm)) if calm else None,
            "own": med([r["wall"] / floor_of(r) for r in runs]), "walls": [r["wall"] for r in runs]}


def report(runs: dict[str, list[dict]], args: argparse.Namespace, n: int, load: tuple[tuple, tuple]) -> None:
    """Print wall times side by side, as ratios to the floor (medians of per-pair ratios)."""
    med = statistics.median
    base = runs["sequential"]
    floors = [floor_of(r) for r in base]
    floor = med(floors)
    busy = [max(a["others"], b["others"]) for a, b in zip(base, runs["prefetch"], strict=True)]
    quiet = [b <= QUIET for b in busy]
    print(f"sweep of {args.model}, {n} checkpoints, analysis {args.analysis!r}, {args.cpus} CPUs "
          f"(torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}), {args.rounds} processes x "
          f"{args.pairs} pairs; load average {' '.join(f'{x:.2f}' for x in load[0])} before, "
          f"{' '.join(f'{x:.2f}' for x in load[1])} after")
    print(f"  sum of analysis times {med(r['analysis'] for r in base):7.3f} s   store writes "
          f"{med(r['write'] for r in base):6.3f} s   one load {med(r['loads'][0] for r in base):6.3f} s   "
          f"(all loads {med(sum(r['loads']) for r in base):.3f} s)")
    print(f"  floor = analyses + writes + one load = {floor:.3f} s  (pairs: {' '.join(f'{f:.3f}' for f in floors)})")
    print(f"  other processes' CPU during each pair, in cores: {' '.join(f'{b:.2f}' for b in busy)}  "
          f"({sum(quiet)} quiet pairs: <= {QUIET})")
    print(f"  {'executor':<28}{'wall s':>8}{'/ floor':>9}{'  [min-max]':<15}{'quiet pairs':>12}"
          f"{'  [min-max]':<15}{'/ own floor':>11}")
    labels = {"prefetch": "local, prefetch (default)", "sequential": "local, no prefetch",
              "ray": f"ray, {args.cpus} CPUs"}
    for mode in (m for m in labels if m in runs):
        ray = mode == "ray"
        row = summary(runs[mode], [floor] if ray else floors, [True] if ray else quiet)
        extra = f"   (+ ray.init {row['init']:.1f} s)" if ray else ""
        target = "   target <= 1.15" if mode == "prefetch" else ""
        spread = "" if ray else f"  [{row['spread'][0]:.2f}-{row['spread'][1]:.2f}]"
        calm = "" if ray or row["quiet"] is None else f"{row['quiet']:12.2f}"
        calm_spread = f"  [{row['quiet_spread'][0]:.2f}-{row['quiet_spread'][1]:.2f}]" if calm else ""
        walls = " ".join(f"{w:.3f}" for w in row["walls"])
        print(f"  {labels[mode]:<28}{row['wall']:8.3f}{row['ratio']:9.2f}{spread:<15}{calm:>12}{calm_spread:<15}"
              f"{row['own']:11.2f}   walls [{walls}]{target}{extra}")
    if "ray" in runs:
        local = med(r["wall"] for r in runs["prefetch"])
        print(f"  ray / local prefetch: {runs['ray'][0]['wall'] / local:.2f}x wall")


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
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes for the local executor")
    parser.add_argument("--pairs", type=int, default=3, help="pairs (no prefetch, prefetch) in each process")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child.split(","), args.model, args.revisions.split(","), args.analysis, args.cpus)))
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
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {"sequential": [], "prefetch": []}
    for r in range(args.rounds):  # a fresh process, pairs in it, the order alternating from pair to pair
        pairs = range(r * args.pairs, (r + 1) * args.pairs)
        order = [("sequential", "prefetch")[:: 1 if i % 2 == 0 else -1] for i in pairs]
        for run in run_child([mode for pair in order for mode in pair], args, revisions, env):
            runs[run["mode"]].append(run)
    if not args.no_ray:
        runs["ray"] = run_child(["ray"], args, revisions, env)
    report(runs, args, len(revisions), (load, os.getloadavg()))

if __name__ == "__main__":
    main()
