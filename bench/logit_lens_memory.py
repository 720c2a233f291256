"""Peak memory of the logit lens: chunked, against the full (layer, batch, pos, d_vocab) tensor.

    $ python bench/logit_lens_memory.py                     # pythia-160m config, 2048 tokens
    $ python bench/logit_lens_memory.py --sizes 160m 410m   # 410m's naive run only if RAM allows

Each run is a fresh process holding a random-init model with the suite's exact config. Its peak
is the resident memory it adds over the loaded model (ru_maxrss minus RSS before the run), the
forward pass included; large allocations are mmapped so that freed memory leaves RSS at once.
"forward" is the forward pass alone (run_with_cache of the residual stream), for scale.
"naive" is the obvious computation made as lean as it goes: the full log-probability tensor
once (log-softmax in place, a layer at a time) and the metrics read from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GIB = 2**30


def rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(mode: str, size: str, pos: int, chunk: int) -> dict:
    """Run one mode in this process and return its added peak and time."""
    import torch
    from transformers import GPTNeoXForCausalLM

    import interp
    from analyses.lens import logit_lens, resid_names

    torch.manual_seed(0)
    model = interp.Model(GPTNeoXForCausalLM(interp.suite.config(size)).eval(), name=size)
    ids = torch.randint(0, 50000, (1, pos))
    before, start = rss(), time.perf_counter()
    if mode == "chunked":
        logit_lens(model, ids, chunk=chunk)
    elif mode == "naive":
        naive(model, ids)
    else:
        with torch.no_grad():  # as the lens runs it: no autograd graph
            model.run_with_cache(ids, names=resid_names(model), stop_at_layer=model.n_layers)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"extra": peak - before, "seconds": time.perf_counter() - start}


def naive(model, ids) -> dict:
    """Every layer's full log-probabilities in one tensor, then the metrics from it."""
    import torch

    from analyses.lens import Readout, resid_names

    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names=resid_names(model))
        acc = cache.accumulated_resid().values  # (layer, batch, pos, d_model)
        readout = Readout.of(model)
        logp = readout.unembed(readout.norm(acc))  # (layer, batch, pos, d_vocab): the big one
        for layer in logp:
            layer.sub_(layer.logsumexp(-1, keepdim=True))  # log-softmax in place
        final = logp[-1]
        kl = torch.stack([(final.exp() * (final - layer)).sum(-1) for layer in logp])
        entropy = torch.stack([-(layer.exp() * layer).sum(-1) for layer in logp])
        top = logp.topk(5, dim=-1)
    return {"kl": kl, "entropy": entropy, "top": top}


def measure(mode: str, size: str, pos: int, chunk: int) -> dict:
    """Run `child` in a fresh interpreter and read its result."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    argv = [sys.executable, __file__, "--child", mode, "--sizes", size, "--pos", str(pos),
            "--chunk", str(chunk)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def available() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as f:
        line = next(line for line in f if line.startswith("MemAvailable"))
    return int(line.split()[1]) * 1024


def full_bytes(size: str, pos: int) -> int:
    """fp32 bytes of the (layer + 1, 1, pos, d_vocab) tensor."""
    import interp

    config = interp.suite.config(size)
    return (config.num_hidden_layers + 1) * pos * config.vocab_size * 4


def row(size: str, pos: int, chunk: int) -> str:
    """One table row: the three modes (naive only if ~1.4x the full tensor fits in half the
    free memory, so as not to crowd out other work on the machine)."""
    full = full_bytes(size, pos)
    runs = {mode: measure(mode, size, pos, chunk) for mode in ("forward", "chunked")}
    if 1.4 * full < available() / 2:
        runs["naive"] = measure("naive", size, pos, chunk)
    chunked = runs["chunked"]["extra"]
    naive_peak = runs.get("naive", {}).get("extra")
    ratio = f"{naive_peak / chunked:6.1f}x" if naive_peak else "   n/a "
    naive_text = f"{naive_peak / GIB:6.2f}" if naive_peak else "  skip"
    times = "  ".join(f"{m} {r['seconds']:.0f}s" for m, r in runs.items())
    return (f"{size:>5} {pos:>6} {full / GIB:8.2f} {naive_text:>8} {chunked / GIB:8.3f} "
            f"{runs['forward']['extra'] / GIB:8.3f} {ratio:>9} {full / chunked:9.1f}x   {times}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["160m"], help="suite sizes (default 160m)")
    parser.add_argument("--pos", type=int, default=2048, help="tokens in the prompt (default 2048)")
    parser.add_argument("--chunk", type=int, default=128, help="positions decoded at once")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.sizes[0], args.pos, args.chunk)))
        return
    print(f"peak memory added over the loaded model, GiB (chunk = {args.chunk} positions)")
    print(f"{'size':>5} {'tokens':>6} {'full':>8} {'naive':>8} {'chunked':>8} {'forward':>8} "
          f"{'naive/ch':>9} {'full/ch':>10}   time")
    for size in args.sizes:
        print(row(size, args.pos, args.chunk), flush=True)


if __name__ == "__main__":
    main()
