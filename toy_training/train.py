"""Train the toy suite, seeded and deterministic, saving Pythia-style step checkpoints.

    python -m toy_training.train                       # every toy model into interp/toy/models/
    python -m toy_training.train --model toy-gpt2      # one of them (its spec says which architecture)
    python -m toy_training.train --model toy-2l --steps 16 --out /tmp/toy

Run from the repository root; this package is not installed with pythia-interp.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from interp.files import SAFETENSORS
from interp.toy import MODELS_DIR, PACKED
from toy_training import corpus as corpus_mod
from toy_training import metrics
from toy_training.data import LONG_MIX, SHORT_MIX, Mix, batch, tokenize_docs
from toy_training.pack import pack
from toy_training.spec import SEQ_LEN, SHORT_LEN, SPECS, VOCAB_SIZE, ToySpec, hf_config, schedule
from toy_training.tokenizer import load_tokenizer, train_tokenizer

N_TRAIN_EVAL = 64  # windows of training text measured at each checkpoint
REPEAT_EVAL = {"n_seqs": 32, "half": 32, "seed": 0}  # repeated random tokens for scores
HEAD_SCORES = (
    "analyses.attention.detectors.pattern_scores (TransformerLens's definition, error_measure 'mul') on "
    "repeat_eval's tokens from repeated_random_tokens: a perfect induction head scores about 0.5"
)


@dataclass
class Corpus:
    """Tokenizer and token streams shared by every model of one run."""

    tokenizer: object
    train: torch.Tensor  # (pos,)
    heldout: torch.Tensor  # (pos,)
    pile: torch.Tensor | None  # (pos,)
    fingerprint: str
    tokenizer_source: str = "trained on the training text"


def build_corpus(tokenizer_dir: Path | None = None) -> Corpus:
    """Train the tokenizer on the training documents (or load a saved one) and tokenize every split."""
    train_docs, heldout_docs = corpus_mod.split_topics()
    tokenizer = train_tokenizer(train_docs) if tokenizer_dir is None else load_tokenizer(tokenizer_dir)
    pile_docs = corpus_mod.pile_sample()
    return Corpus(
        tokenizer=tokenizer,
        train=tokenize_docs(tokenizer, train_docs),
        heldout=tokenize_docs(tokenizer, heldout_docs),
        pile=tokenize_docs(tokenizer, pile_docs) if pile_docs else None,
        fingerprint=corpus_mod.fingerprint(train_docs),
        tokenizer_source="trained on the training text" if tokenizer_dir is None else
        f"the suite's, loaded from {Path(tokenizer_dir).name}/tokenizer.json",
    )


def eval_sets(corpus: Corpus) -> dict[str, torch.Tensor]:
    """Fixed evaluation batches: (batch, pos) each."""
    train = metrics.windows(corpus.train, SEQ_LEN)
    stride = max(1, len(train) // N_TRAIN_EVAL)
    sets = {
        "train": train[::stride][:N_TRAIN_EVAL],
        "heldout": metrics.windows(corpus.heldout, SEQ_LEN),
        "repeat": metrics.repeated_random(vocab=VOCAB_SIZE, **REPEAT_EVAL),
    }
    if corpus.pile is not None:
        sets["pile"] = metrics.windows(corpus.pile, SEQ_LEN)
    return sets


def lr_at(step: int, spec: ToySpec) -> float:
    """Learning rate for optimiser step `step` (1-based): linear warmup, cosine to min_lr_ratio."""
    if step <= spec.warmup:
        return spec.lr * step / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return spec.lr * (spec.min_lr_ratio + (1 - spec.min_lr_ratio) * cosine)


def phase(step: int, spec: ToySpec) -> tuple[int, Mix]:
    """Row length and data mix of optimiser step `step` (1-based): short rows first, then full ones."""
    return (SHORT_LEN, SHORT_MIX) if step <= spec.short_steps else (SEQ_LEN, LONG_MIX)


def batch_for(step: int, spec: ToySpec, corpus: Corpus) -> torch.Tensor:
    """The training batch of optimiser step `step` (1-based): (batch, pos)."""
    seq_len, mix = phase(step, spec)
    return batch(corpus.train, step, spec.seed, spec.batch_size, seq_len, VOCAB_SIZE, mix)


def batch_digests(spec: ToySpec, corpus: Corpus) -> dict[str, str]:
    """sha256 of the first batch of each phase, so a changed data pipeline is caught without training."""
    steps = (1, spec.short_steps + 1)
    return {str(s): hashlib.sha256(batch_for(s, spec, corpus).numpy().tobytes()).hexdigest() for s in steps}


OUTPUT_PROJECTIONS = {  # weights that write into the residual stream, per architecture
    "neox": ("attention.dense.weight", "dense_4h_to_h.weight"),
    "gpt2": ("attn.c_proj.weight", "mlp.c_proj.weight"),
}


def make_model(spec: ToySpec):
    """A freshly initialised GPTNeoXForCausalLM or GPT2LMHeadModel (seeded by the caller), with Pythia's init."""
    from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM

    cls = GPT2LMHeadModel if spec.arch == "gpt2" else GPTNeoXForCausalLM
    model = cls._from_config(hf_config(spec), attn_implementation="sdpa")
    pythia_init_(model, spec)
    return model


def pythia_init_(model, spec: ToySpec) -> None:
    """GPT-NeoX's init for Pythia: small_init N(0, 2/(5d)) everywhere, wang_init on output projections.

    The same recipe for every architecture (GPT-2's learned positions included), so that the toy
    models differ in architecture only.
    """
    small = math.sqrt(2 / (5 * spec.d_model))
    wang = 2 / (spec.n_layers * math.sqrt(spec.d_model))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                continue  # biases stay 0, LayerNorm gains 1
            p.normal_(0.0, wang if name.endswith(OUTPUT_PROJECTIONS[spec.arch]) else small)


def make_optimizer(model, spec: ToySpec) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, LayerNorms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas)


def save_checkpoint(model, path: Path, packed: bool = False):
    """Save an fp16 copy to `path` (its weights xz-compressed if `packed`); return that copy in fp32 with eager
    attention, for evaluation."""
    half = copy.deepcopy(model).half()
    half.config.dtype = torch.float16
    half.save_pretrained(path, safe_serialization=True)
    if packed:
        pack(path / SAFETENSORS)
    shipped = half.float().eval()
    shipped.set_attn_implementation("eager")
    return shipped


def evaluate(model, sets: dict[str, torch.Tensor]) -> dict:
    """Losses and head scores of one checkpoint, as shipped (fp16 weights, fp32 compute)."""
    first, second = metrics.repeat_losses(model, sets["repeat"])
    texts = [name for name in ("train", "heldout", "pile") if name in sets]
    record = {f"{name}_loss": round(metrics.text_loss(model, sets[name]), 5) for name in texts}
    record.update(repeat_first_loss=round(first, 5), repeat_second_loss=round(second, 5))
    record.update(metrics.head_scores(model, sets["repeat"]))
    return record


def train_model(spec: ToySpec, corpus: Corpus, out: Path, steps: int) -> dict:
    """Train one model for `steps` steps of its schedule, saving and measuring each checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("step*"):
        if old.is_dir() and old.name[4:].isdigit():
            shutil.rmtree(old)  # checkpoints of an earlier run
    corpus.tokenizer.save_pretrained(out)
    torch.manual_seed(spec.seed)
    model = make_model(spec).train()
    optimizer = make_optimizer(model, spec)
    sets = eval_sets(corpus)
    saves = [s for s in schedule(spec) if s <= steps] + ([steps] if steps not in schedule(spec) else [])
    checkpoints, losses, start, cpu = [], [], time.perf_counter(), time.process_time()
    for step in range(steps + 1):
        if step in saves:
            record = evaluate(save_checkpoint(model, out / f"step{step}", spec.name in PACKED), sets)
            checkpoints.append({"step": step, "lr": round(lr_at(step, spec), 8) if step else 0.0, **record})
            print(f"{spec.name} step{step}: {_summary(record)}", flush=True)
        if step == steps:
            break
        tokens = batch_for(step + 1, spec, corpus)
        losses.append(_update(model, optimizer, tokens, lr_at(step + 1, spec), spec.grad_clip))
    seconds = {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}
    return _record(spec, corpus, steps, checkpoints, losses, seconds)


def _update(model, optimizer, tokens: torch.Tensor, lr: float, clip: float) -> float:
    """One optimiser step on a (batch, pos) batch; returns its loss before the update."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return round(loss.item(), 5)


def _summary(record: dict) -> str:
    """One log line: losses and the best induction / previous-token scores."""
    best = {k: max(max(row) for row in record[k]) for k in ("induction", "previous_token")}
    return (
        f"train {record['train_loss']:.3f} heldout {record['heldout_loss']:.3f} "
        f"repeat {record['repeat_first_loss']:.2f}->{record['repeat_second_loss']:.2f} "
        f"induction {best['induction']:.2f} prev {best['previous_token']:.2f}"
    )


def _record(spec, corpus, steps, checkpoints, losses, seconds) -> dict:
    """The content of training.json."""
    import transformers

    return {
        "name": spec.name,
        "architecture": "GPT2LMHeadModel" if spec.arch == "gpt2" else "GPTNeoXForCausalLM",
        "spec": spec.to_dict(),
        "phases": [
            {"steps": [1, spec.short_steps], "seq_len": SHORT_LEN, "mix": asdict(SHORT_MIX)},
            {"steps": [spec.short_steps + 1, spec.steps], "seq_len": SEQ_LEN, "mix": asdict(LONG_MIX)},
        ],
        "vocab_size": VOCAB_SIZE,
        "schedule": [c["step"] for c in checkpoints],
        "steps_run": steps,
        "checkpoints": checkpoints,
        "batch_loss": losses,  # batch_loss[i]: loss of the batch of step i + 1, before its update
        "batch_sha256": batch_digests(spec, corpus),
        "train_seconds": round(seconds["wall"], 1),  # wall clock, evaluation included
        "cpu_seconds": round(seconds["cpu"], 1),  # summed over threads
        "torch_threads": torch.get_num_threads(),
        "corpus": {
            "source": "pydoc_data.topics.topics (Python's bundled documentation)",
            "heldout_topics": list(corpus_mod.HELDOUT_TOPICS),
            "train_tokens": len(corpus.train),
            "heldout_tokens": len(corpus.heldout),
            "pile_tokens": None if corpus.pile is None else len(corpus.pile),
            "train_sha256": corpus.fingerprint,
            "tokenizer": corpus.tokenizer_source,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "repeat_eval": REPEAT_EVAL,
        "head_scores": HEAD_SCORES,
    }


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m toy_training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all", choices=[*SPECS, "all"],
                        help="which toy model to train (its spec names the architecture)")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="parent of the <name>/ model dirs")
    parser.add_argument("--steps", type=int, default=None, help="stop the standard schedule early, after N steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (results depend on it)")
    parser.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                        help="use this saved tokenizer (e.g. interp/toy/models/toy-2l) instead of training one: "
                             "the suite's tokenizer where this Python's pydoc differs from the one it was trained on")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def main(argv=None) -> None:
    """Train the chosen models and write <out>/<name>/training.json next to the checkpoints."""
    from transformers.utils import logging

    args = parse_args(argv)
    logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    corpus = build_corpus(args.tokenizer)
    names = list(SPECS) if args.model == "all" else [args.model]
    for name in names:
        spec = SPECS[name]
        steps = spec.steps if args.steps is None else min(args.steps, spec.steps)
        record = train_model(spec, corpus, args.out / name, steps)
        (args.out / name / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: {steps} steps in {record['train_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
