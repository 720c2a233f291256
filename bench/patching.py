"""Patching at pythia-160m size (random weights, CPU): ours against one forward per patch, TransformerLens, plain loops.

    $ python bench/patching.py --threads 1              # the default: about 7 minutes on a 2-core machine
    $ python bench/patching.py --threads 1 --full       # every sender in the path-patching loop too

Rows (1 prompt x 64 tokens; the corrupt prompt differs at one token; metric: logit difference at the last position):

1. exact path patching of all 144 heads -> logits, against the plain loop (two forwards per sender);
2. EAP over all 32,347 edges, against one forward;
3. a 32-point faithfulness curve (exact, every circuit evaluated), against one forward;
4. activation patching of each head's z at each position (noising), batched, against one forward per patch
   (ours also on the positions from the changed token on alone: before it a patch changes nothing, costs
   nothing here and a whole forward in the loops)
   and against TransformerLens's `generic_activation_patch` on its TransformerBridge over the same weights
   (given the corrupt cache and the clean tokens, so that it noises too); the numbers must agree;
5. on the toy suite: how AtP, AtP*, EAP and EAP-IG correlate with exact activation and edge patching.

Times are the best of the repeats (the least disturbed run on a shared machine).

The slow contenders run on a subset of patches and their per-patch time is scaled up; the subset's
values are compared with ours. Each contender runs in a forked child so its peak memory (resident
set above the loaded model) is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch
from bridge import transformer_lens_bridge

SEQ, CHANGED = 64, 31


def build(size: str = "160m"):
    """The random-weight model and a one-prompt task."""
    from transformers import GPTNeoXForCausalLM

    import interp
    from analyses.patching import tasks
    from interp import suite

    torch.manual_seed(0)
    config = suite.config(size)
    config._attn_implementation = "sdpa"
    hf = GPTNeoXForCausalLM(config).eval()
    model = interp.Model(hf, name=f"pythia-{size} (random)")
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1000, 20000, (1, SEQ), generator=g)
    corrupt = clean.clone()
    corrupt[0, CHANGED] = 7
    return model, tasks.make(model, clean, corrupt, answer=[int(clean[0, CHANGED + 1])], wrong=[3])


def timed(fn, repeat: int = 1):
    """(best seconds of `repeat` runs, last result): on a shared machine the best run is the least disturbed."""
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def in_child(fn, *args, repeat: int = 1, reference=None):
    """Run fn(*args) in forked children: (seconds, result, peak MiB above the child's start).

    The time comes from a child with the default allocator. With `reference=(model, task)` that child
    times a plain forward before each run of fn, and the time comes back as the median ratio of the
    two, so load that drifts between runs cancels out. The peak comes from a second child, run once,
    that returns every freed block of 64 KiB or more to the system, so its high-water mark counts what
    is live (that allocator is slower, so it is kept out of the timing).
    """
    seconds, out = _fork(lambda: _timing(fn, args, repeat, reference))
    peak = _fork(lambda: _peak(fn, args, reference))
    return seconds, _tensors(out), peak


def _fork(work):
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=lambda: child.send(work()))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def _timing(fn, args, repeat: int, reference):
    if reference is None:
        seconds, out = timed(lambda: fn(*args), repeat=repeat)
        return seconds, _plain(out)
    forward(*reference)  # warm up
    ratios = []
    for _ in range(repeat):  # forward and contender in turn, so drifting load hits both: the median of the ratios
        unit = timed(lambda: forward(*reference))[0]
        seconds, out = timed(lambda: fn(*args))
        ratios.append(seconds / unit)
    return sorted(ratios)[len(ratios) // 2], _plain(out)


def _peak(fn, args, reference) -> float:
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: blocks >= 64 KiB get (and free) own pages
    if reference is not None:
        forward(*reference)  # warm up before the peak is reset
    sampler = _Peak()
    fn(*args)
    return sampler.stop() / 2**20


class _Peak:
    """The kernel's high-water mark of this process's resident set, reset at start: the peak above the start."""

    def __init__(self):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        self.start = _status("VmRSS")

    def stop(self) -> int:
        return _status("VmHWM") - self.start


def _status(field: str) -> int:
    """A /proc/self/status field, in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _plain(x):
    """Tensors as ("tensor", list) so they cross the pipe without shared memory."""
    if isinstance(x, torch.Tensor):
        return ("tensor", x.detach().cpu().tolist())
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    return x


def _tensors(x):
    if isinstance(x, tuple) and len(x) == 2 and x[0] == "tensor":
        return torch.tensor(x[1])
    if isinstance(x, tuple):
        return tuple(_tensors(v) for v in x)
    return x


# ---- contenders ---------------------------------------------------------------------------


def ours_activation(model, task, positions, budget_mb=1024):
    from analyses.patching import activation_patch

    return activation_patch(model, task, sites=["z"], positions=positions, budget_mb=budget_mb, progress=False).effects


def per_patch_loop(model, task, patches):
    """One forward per patch (our hooks), as a plain loop would run it."""
    from analyses.patching.metrics import LogitDiff

    metric = LogitDiff.of(task)
    _, corrupt = model.run_with_cache(task.corrupt, names=[f"blocks.{ly}.attn.hook_z" for ly in range(model.n_layers)])
    out = []
    with torch.no_grad():
        before = metric(model(task.clean)).mean()
        for layer, head, pos in patches:
            name = f"blocks.{layer}.attn.hook_z"

            def patch(z, hook, head=head, pos=pos, name=name):
                z = z.clone()
                z[:, pos, head] = corrupt[name][:, pos, head]
                return z

            with model.hooks(fwd={name: patch}):
                out.append(float(metric(model(task.clean)).mean() - before))
    return torch.tensor(out)


def transformer_lens_loop(bridge, task, patches):
    """TransformerLens's generic_activation_patch over the same patches, noising: it patches its "clean cache"
    into its "corrupted tokens", so it gets the corrupt cache and the clean tokens."""
    import pandas as pd
    from transformer_lens import patching

    answer, wrong = int(task.answer[0]), int(task.wrong[0])
    _, corrupt_cache = bridge.run_with_cache(task.corrupt.ids)
    index = pd.DataFrame([{"layer": ly, "pos": p, "head_index": h} for ly, h, p in patches])

    def metric(logits):
        return logits[0, -1, answer] - logits[0, -1, wrong]

    with torch.no_grad():
        base = float(metric(bridge(task.clean.ids)))
        values = patching.generic_activation_patch(bridge, task.clean.ids, corrupt_cache, metric,
                                                   patching.layer_pos_head_vector_patch_setter, "z", index_df=index)
    return values - base


def ours_path(model, task):
    from analyses.patching import path_patch

    return path_patch(model, task, "heads", "logits", progress=False).effects[:, 0]


def path_loop(model, task, senders):
    """The plain reference: per sender, a forward with every other head frozen, then the receiver patched."""
    from analyses.patching.metrics import LogitDiff

    L = model.n_layers
    z_names = [f"blocks.{ly}.attn.hook_z" for ly in range(L)]
    _, clean = model.run_with_cache(task.clean, names=z_names)
    _, corrupt = model.run_with_cache(task.corrupt, names=z_names)
    metric, final = LogitDiff.of(task), f"blocks.{L - 1}.hook_resid_post"
    out = []
    with torch.no_grad():
        before = metric(model(task.clean)).mean()
        for layer, head in senders:
            def freeze(z, hook, layer=layer, head=head):
                new = clean[hook.name].clone()
                if hook.layer == layer:
                    new[:, :, head] = corrupt[hook.name][:, :, head]
                return new

            recorded = {}

            def record(x, hook, recorded=recorded):
                recorded["x"] = x.clone()

            with model.hooks(fwd={**{n: freeze for n in z_names}, final: record}):
                model(task.clean)
            with model.hooks(fwd={final: lambda x, hook, recorded=recorded: recorded["x"]}):
                out.append(float(metric(model(task.clean)).mean() - before))
    return torch.tensor(out)


def forward(model, task):
    with torch.no_grad():
        return model(task.clean)


def ours_eap(model, task):
    from analyses.patching import eap

    return eap(model, task).scores


def ours_curve(model, task, scores, budget_mb=1024):
    from analyses.patching import faithfulness_curve

    return faithfulness_curve(model, task, scores, points=32, budget_mb=budget_mb, progress=False).values


# ---- the run ------------------------------------------------------------------------------


def row(name: str, seconds: float, unit: str, ratio: str = "", check: str = "", peak: float | None = None):
    mem = f"{peak:7.0f} MiB" if peak is not None else " " * 11
    print(f"  {name:<52} {seconds:9.3f} s {unit:<14} {ratio:<16} {mem}  {check}")


def activation_rows(model, task, args):
    n_pos = task.n_pos
    positions = list(range(n_pos)) if not args.positions else [n_pos * (2 * i + 1) // (2 * args.positions)
                                                                 for i in range(args.positions)]
    heads = [(ly, h) for ly in range(model.n_layers) for h in range(model.n_heads)]
    ours_t, effects, ours_mb = in_child(ours_activation, model, task, positions, args.budget_mb)
    n = len(heads) * len(positions)
    per = ours_t / n
    print(f"4. activation patching, every head's z at {len(positions)} of {n_pos} positions ({n} patches)")
    row("ours (batched, noising)", ours_t, f"{1e3 * per:.2f} ms/patch", "", "", ours_mb)
    changed = [p for p in positions if p >= CHANGED]
    if changed != positions:  # the positions where the corrupt prompt differs, or after it: the ones with work
        part_t, _, part_mb = in_child(ours_activation, model, task, changed, args.budget_mb)
        row(f"  of which positions {CHANGED}.. (from the changed token on)", part_t,
            f"{1e3 * part_t / (len(heads) * len(changed)):.2f} ms/patch", "", "", part_mb)
    g = torch.Generator().manual_seed(1)
    pick = torch.randperm(n, generator=g)[: args.baseline_patches].tolist()
    subset = [(*heads[i // len(positions)], positions[i % len(positions)]) for i in pick]
    loop_t, loop_vals, loop_mb = in_child(per_patch_loop, model, task, subset)
    err = (loop_vals - effects[pick].float()).abs().max()
    loop_per = loop_t / len(subset)
    ratio = f"ours {loop_per / per:5.1f}x faster"
    if changed != positions:
        ratio += f" ({loop_per * len(heads) * len(changed) / part_t:.1f}x from {CHANGED} on)"
    row("one forward per patch", loop_t, f"{1e3 * loop_per:.2f} ms/patch", ratio, f"max |diff| {err:.1e}", loop_mb)
    bridge = transformer_lens_bridge(model.hf)
    if bridge is None:
        print("  TransformerLens not installed: skipped")
        return
    tl_t, tl_vals, tl_mb = in_child(transformer_lens_loop, bridge, task, subset)
    err = (tl_vals.float() - effects[pick].float()).abs().max()
    tl_per = tl_t / len(subset)
    ratio = f"ours {tl_per / per:5.1f}x faster"
    if changed != positions:
        ratio += f" ({tl_per * len(heads) * len(changed) / part_t:.1f}x from {CHANGED} on)"
    row("TransformerLens generic_activation_patch (bridge)", tl_t, f"{1e3 * tl_per:.2f} ms/patch", ratio,
        f"max |diff| {err:.1e}", tl_mb)


def path_rows(model, task, args, fwd_t):
    ours_f, effects, ours_mb = in_child(ours_path, model, task, repeat=3, reference=(model, task))
    ours_t = ours_f * fwd_t
    heads = [(ly, h) for ly in range(model.n_layers) for h in range(model.n_heads)]
    subset = heads if args.full else heads[:: max(1, len(heads) // args.baseline_senders)]
    loop_t, loop_vals, loop_mb = in_child(path_loop, model, task, subset)
    idx = [heads.index(s) for s in subset]
    err = (loop_vals - effects[idx].float()).abs().max()
    print(f"1. exact path patching, {len(heads)} heads -> logits (MLPs mediate)")
    row("ours (residual engine)", ours_t, f"{ours_f:.1f} forwards", "", "", ours_mb)
    per_loop = loop_t / len(subset) * len(heads)
    row(f"plain loop ({len(subset)} senders timed, scaled to {len(heads)})", per_loop,
        f"{per_loop / fwd_t:.0f} forwards", f"ours {per_loop / ours_t:5.1f}x faster", f"max |diff| {err:.1e}", loop_mb)


def _plan(model, task, sites):
    from analyses.patching.activation import plan

    return plan(model, task.n_pos, sites)


def toy_correlations() -> None:
    """Pearson correlation of attribution scores with exact patching on the toy suite's induction task."""
    import numpy as np

    import interp
    from analyses.patching import activation_patch, atp, eap, eap_ig, masked_values, tasks

    print("5. toy suite, induction (8 prompts): correlation of attribution with exact patching")
    for name in ("toy-2l", "toy-4l"):
        model = interp.load(name)
        task = tasks.induction(model, n_prompts=8)
        sites = ["z", "q", "k", "v", "pattern", "resid_pre", "attn_out", "mlp_out"]
        exact = activation_patch(model, task, sites=sites, progress=False).effects
        plain, star = atp(model, task, sites=sites).effects, atp(model, task, sites=sites, qk_fix=True).effects
        first = eap(model, task)
        edge_exact = masked_values(model, task, torch.eye(first.graph.n_edges)) - first.clean  # one edge ablated each
        qk = torch.tensor([p.site in ("q", "k") for p in _plan(model, task, sites)])
        cells = {"AtP (all sites)": np.corrcoef(plain, exact)[0, 1], "AtP* (all sites)": np.corrcoef(star, exact)[0, 1],
                 "AtP (q, k)": np.corrcoef(plain[qk], exact[qk])[0, 1],
                 "AtP* (q, k)": np.corrcoef(star[qk], exact[qk])[0, 1],
                 "EAP (all edges)": np.corrcoef(first.scores, edge_exact)[0, 1]}
        for steps in (5, 20):
            cells[f"EAP-IG {steps} steps"] = np.corrcoef(eap_ig(model, task, steps=steps).scores, edge_exact)[0, 1]
        print(f"  {name}: " + ", ".join(f"{k} r = {v:.3f}" for k, v in cells.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", default="160m")
    parser.add_argument("--full", action="store_true", help="every sender in the plain path-patching loop (slow)")
    parser.add_argument("--positions", type=int, default=0,
                        help="positions patched per head, evenly spaced (default 0: every position)")
    parser.add_argument("--baseline-patches", type=int, default=12, help="patches the slow loops time")
    parser.add_argument("--baseline-senders", type=int, default=12, help="senders the plain path loop times")
    parser.add_argument("--budget-mb", type=float, default=1024, help="memory budget of our batched runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, task = build(args.size)
    fwd_t, _, fwd_mb = in_child(lambda: forward(model, task), repeat=3)
    print(f"pythia-{args.size} config, random weights, fp32, CPU, {args.threads} thread(s); 1 x {SEQ} tokens; "
          f"budget {args.budget_mb:.0f} MiB; one forward = {1e3 * fwd_t:.0f} ms (peak {fwd_mb:.0f} MiB)")
    print(f"  {'contender':<52} {'time':>11} {'':<14} {'ratio':<16} {'peak':>11}  check")
    path_rows(model, task, args, fwd_t)
    eap_f, scores, eap_mb = in_child(ours_eap, model, task, repeat=5, reference=(model, task))
    print(f"2. EAP over all {len(scores)} edges (median of 5 ratios to a forward timed just before each)")
    row("ours (2 forwards + 1 backward, scores in backward hooks)", eap_f * fwd_t, f"{eap_f:.2f} forwards",
        "target <= 3.5", "", eap_mb)
    from analyses.patching import eap

    scores = eap(model, task)
    curve_f, _, curve_mb = in_child(ours_curve, model, task, scores, args.budget_mb, repeat=5, reference=(model, task))
    first_f = in_child(ours_curve, model, task, scores, args.budget_mb, reference=(model, task))[0]
    print("3. faithfulness curve, 32 circuit sizes, each evaluated exactly (median of 5 ratios to a forward timed "
          "just before each; the first call in a process also allocates the scratch memory later calls reuse)")
    row("ours (node by node: only the heads and MLPs a circuit changes)", curve_f * fwd_t, f"{curve_f:.1f} forwards",
        "target <= 8", "", curve_mb)
    row("ours, the first call in a process", first_f * fwd_t, f"{first_f:.1f} forwards")
    activation_rows(model, task, args)  # last: it builds TransformerLens's bridge in this process
    toy_correlations()


if __name__ == "__main__":
    main()
