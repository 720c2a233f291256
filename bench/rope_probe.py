"""Cost of the RoPE probe on every head, against one run_with_cache of the same sites.

    $ python bench/rope_probe.py                      # pythia-160m config, 1 x 1024 tokens, 5 rounds
    $ python bench/rope_probe.py --pos 2048 --rounds 3 --threads 2

Model: random init with the suite's exact config (`interp.suite.config`), wrapped by interp.Model.
"cache" is `run_with_cache` of every layer's hook_q and hook_k (what the probe reads); "probe" is
`analyses.rope.probing` (that same forward, the exact decomposition of all heads, the offset fit,
kernels and the head table; no ablations). Timings: both run once per round, in turn, medians.
Memory: each in a fresh process, the resident memory it adds over the loaded model (ru_maxrss
minus RSS before the run; large allocations mmapped so freed memory leaves RSS at once), beside
the bytes of the cached activations. Targets: probe <= 3x cache; probe peak < cached + 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

GIB = 2**30


def rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def setup(size: str, pos: int):
    """(model, ids, names): a random-init suite model, random token ids, and the q/k sites of every layer."""
    import torch
    from transformers import GPTNeoXForCausalLM

    import interp

    torch.manual_seed(0)
    model = interp.Model(GPTNeoXForCausalLM(interp.suite.config(size)).eval(), name=f"pythia-{size} (random init)")
    ids = torch.randint(0, 50000, (1, pos))
    names = [f"blocks.{L}.attn.hook_{s}" for L in range(model.n_layers) for s in "qk"]
    return model, ids, names


def contenders(model, ids, names) -> dict:
    """name -> a function that runs once."""
    import torch

    from analyses.rope import probe

    def cache():
        with torch.no_grad():
            return model.run_with_cache(ids, names=names)[1].nbytes()

    return {"cache": cache, "probe": lambda: probe(model, ids)}


def child(mode: str, size: str, pos: int) -> dict:
    """Run one contender in this process: the memory it adds and the bytes a cache keeps."""
    model, ids, names = setup(size, pos)
    run = contenders(model, ids, names)[mode]
    before, start = rss(), time.perf_counter()
    out = run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"extra": peak - before, "seconds": time.perf_counter() - start,
            "cached": out if isinstance(out, int) else None}


def measure(mode: str, size: str, pos: int, threads: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    argv = [sys.executable, __file__, "--child", mode, "--size", size, "--pos", str(pos)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timings(size: str, pos: int, rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds in this process, after one warm-up of each."""
    model, ids, names = setup(size, pos)
    runs = contenders(model, ids, names)
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="160m", help="suite size (default 160m)")
    parser.add_argument("--pos", type=int, default=1024, help="tokens (default 1024)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.size, args.pos)))
        return
    import torch

    torch.set_num_threads(args.threads)
    times = timings(args.size, args.pos, args.rounds)
    memory = {mode: measure(mode, args.size, args.pos, args.threads) for mode in ("cache", "probe")}
    base = statistics.median(times["cache"])
    cached = memory["cache"]["cached"]
    print(f"pythia-{args.size} config (random init), 1 x {args.pos} tokens, {args.threads} thread(s), "
          f"{args.rounds} rounds, medians; every head ({_heads(args.size)}) probed")
    print(f"{'contender':<36} {'median s':>9} {'x cache':>8} {'peak added GiB':>15}")
    labels = {"cache": "run_with_cache (q, k of every layer)", "probe": "rope probe (ablations excluded)"}
    for mode in ("cache", "probe"):
        t = statistics.median(times[mode])
        print(f"{labels[mode]:<36} {t:9.3f} {t / base:8.2f} {memory[mode]['extra'] / GIB:15.3f}")
    peak = memory["probe"]["extra"]
    print(f"cached activations: {cached / GIB:.3f} GiB; probe peak {peak / GIB:.3f} GiB "
          f"{'<' if peak < cached + GIB else '>='} cached + 1 GiB = {(cached + GIB) / GIB:.3f} GiB")


def _heads(size: str) -> str:
    import interp

    config = interp.suite.config(size)
    return f"{config.num_hidden_layers} x {config.num_attention_heads}"


if __name__ == "__main__":
    main()
