"""Cost of caching, against plain HF forwards, on a random-init model with the exact pythia-160m config.

    $ python bench/cache_overhead.py              # batch 4 x 256 tokens, CPU, 7 interleaved rounds
    $ python bench/cache_overhead.py --rounds 3 --size 14m

Every contender runs once per round, in turn, so drift (thermal, other load) hits all alike;
the table shows medians, the ratio to each baseline, and the bytes each run keeps.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from bridge import transformer_lens_bridge
from transformers import GPTNeoXForCausalLM

import interp
from interp import suite


def nbytes(tensors) -> int:
    """Bytes of distinct storages among tensors."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
    return sum(storages.values())


def contenders(size: str, ids: torch.Tensor) -> dict[str, Callable[[], int]]:
    """name -> a function that runs once and returns the bytes it keeps."""
    torch.manual_seed(0)
    config = suite.config(size)
    config._attn_implementation = "sdpa"
    hf = GPTNeoXForCausalLM(config).eval()
    eager = GPTNeoXForCausalLM(config.__class__(**config.to_dict())).eval()
    eager.load_state_dict(hf.state_dict())
    eager.config._attn_implementation = "eager"
    model = interp.Model(hf)
    resid = ["hook_embed", *(f"blocks.{L}.hook_resid_post" for L in range(model.n_layers))]
    standard = [s.name for s in model.sites.standard()]

    def plain():
        return nbytes([hf(ids, use_cache=False).logits])

    def hf_outputs():
        out = eager(ids, output_hidden_states=True, output_attentions=True, use_cache=False)
        return nbytes([out.logits, *out.hidden_states, *out.attentions])

    def ours(names):
        return lambda: model.run_with_cache(ids, names=names)[1].nbytes()

    runs = {"HF forward (sdpa)": plain, "HF eager + hidden_states + attentions": hf_outputs,
            "ours: residual stream": ours(resid), "ours: every standard site": ours(standard)}
    bridge = transformer_lens_bridge(eager)
    if bridge is not None:
        fired = bridge.run_with_cache(ids[:1, :8])[1].cache_dict  # registered is not fired: rot_q/rot_k are not
        shared = {n for n in standard if n in fired}
        runs[f"ours: the {len(shared)} sites TL also fills"] = ours(sorted(shared))
        runs["TransformerLens bridge: same sites"] = lambda: nbytes(
            bridge.run_with_cache(ids, names_filter=lambda n: n in shared)[1].cache_dict.values())
        runs["TransformerLens bridge: default (all)"] = lambda: nbytes(
            bridge.run_with_cache(ids)[1].cache_dict.values())
    nnsight_run = _nnsight(hf, model, ids)
    if nnsight_run is not None:
        runs["nnsight: residual stream"] = nnsight_run
    return runs


def _nnsight(hf, model, ids):
    """nnsight saving the residual stream, if nnsight is installed."""
    try:
        from nnsight import NNsight
    except ImportError:
        return None
    wrapped = NNsight(hf)

    def run():
        with wrapped.trace(ids):
            saved = [layer.output.save() for layer in wrapped.gpt_neox.layers]
        return nbytes([getattr(s, "value", s) for s in saved])

    return run


def measure(runs: dict[str, Callable[[], int]], rounds: int) -> dict[str, tuple[float, int]]:
    """Median seconds and bytes per contender, interleaving one run of each per round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    kept: dict[str, int] = {}
    with torch.no_grad():
        for run in runs.values():  # warm-up
            run()
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                kept[name] = run()
                times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), kept[name]) for name, t in times.items()}


def report(results: dict[str, tuple[float, int]]) -> str:
    """A table with ratios against the sdpa forward and the eager forward with outputs."""
    sdpa, eager = results["HF forward (sdpa)"][0], results["HF eager + hidden_states + attentions"][0]
    lines = [f"{'contender':<40} {'median s':>9} {'x sdpa':>7} {'x eager+out':>12} {'MiB kept':>9}"]
    for name, (seconds, kept) in results.items():
        lines.append(f"{name:<40} {seconds:>9.3f} {seconds / sdpa:>7.2f} {seconds / eager:>12.2f} "
                     f"{kept / 2**20:>9.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="160m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = torch.randint(0, suite.TOKENIZER_VOCAB, (args.batch, args.tokens))
    print(f"pythia-{args.size} config, random weights, batch {args.batch} x {args.tokens} tokens, "
          f"{args.threads} threads, {args.rounds} interleaved rounds, torch {torch.__version__}")
    print(report(measure(contenders(args.size, ids), args.rounds)))


if __name__ == "__main__":
    main()
