"""Forward + backward: `run_with_cache_and_grads` against HF's own forward + backward, side by side.

    $ python bench/grads.py                      # pythia-160m config, random init, batch 1 x 256, CPU
    $ python bench/grads.py --size 14m --rounds 3

Each contender runs in a fresh process per round (so its peak resident memory is its own), rounds
interleaved; the table shows median seconds, the ratio to HF, peak RSS above the loaded model, and
the bytes each run keeps (activations + their gradients).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONTENDERS = ("HF forward + backward (param grads)", "ours: grads at the residual stream",
              "ours: grads at every standard site")


def metric(logits):
    return logits[:, -1].log_softmax(-1)[:, 0].sum()


def run_one(name: str, size: str, batch: int, pos: int, threads: int) -> dict:
    """Build the model, then time one forward + backward of `name`; report seconds and memory."""
    import torch
    from transformers import GPTNeoXForCausalLM

    import interp

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf = GPTNeoXForCausalLM(interp.suite.config(size)).eval()
    model = interp.Model(hf)
    ids = torch.randint(0, 50000, (batch, pos))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if name.startswith("HF"):
        metric(hf(ids, use_cache=False).logits).backward()
        kept = 0
    else:
        names = (lambda n: "resid" in n) if "residual" in name else None
        _, cache, grads = model.run_with_cache_and_grads(ids, metric, names=names)
        kept = cache.nbytes() + grads.nbytes()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"seconds": seconds, "peak_mib": peak / 1024, "kept_mib": kept / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="160m")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pos", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.batch, args.pos, args.threads)))
        return
    results: dict[str, list[dict]] = {n: [] for n in CONTENDERS}
    for _ in range(args.rounds):
        for name in CONTENDERS:
            cmd = [sys.executable, __file__, "--one", name, "--size", args.size, "--batch", str(args.batch),
                   "--pos", str(args.pos), "--threads", str(args.threads)]
            results[name].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                                            .stdout.strip().splitlines()[-1]))
    base = statistics.median(r["seconds"] for r in results[CONTENDERS[0]])
    base_peak = statistics.median(r["peak_mib"] for r in results[CONTENDERS[0]])
    print(f"pythia-{args.size} config, batch {args.batch} x {args.pos}, {args.threads} thread(s), "
          f"{args.rounds} rounds\n")
    print("| contender | median s | x HF fwd+bwd | peak MiB | peak - HF peak | MiB kept |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        s, peak = statistics.median(r["seconds"] for r in rows), statistics.median(r["peak_mib"] for r in rows)
        kept = statistics.median(r["kept_mib"] for r in rows)
        print(f"| {name} | {s:.3f} | {s / base:.2f} | {peak:.0f} | {peak - base_peak:+.0f} | {kept:.1f} |")


if __name__ == "__main__":
    main()
