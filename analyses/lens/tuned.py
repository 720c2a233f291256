"""Tuned lens: one learned affine translator per layer, trained to match the model's own output.

    >>> import interp, tempfile
    >>> from analyses.lens import logit_lens
    >>> model = interp.load("toy")
    >>> lens = train_tuned_lens(model, default_text()[0], steps=20, progress=False)
    >>> path = lens.save(tempfile.mkdtemp())
    >>> result = logit_lens(model, "def f(x): return x", lens=TunedLens.load(path))
    >>> result.lens
    'tuned'

Layer boundary l < n_layers maps h -> h + A_l h + b_l (A = 0, b = 0 at the start, so an untrained
lens is the logit lens); the last boundary stays the identity, so it still decodes to exactly what
the model outputs. Training minimises KL(model || lens) at every layer on a token stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor, nn

import interp
from analyses.lens.logit import LensResult, Readout, Resid, boundary, lens_from_cache, resid_names
from interp.errors import InputError, InterpError
from interp.model import Prompt

WEIGHTS, INFO = "tuned_lens.safetensors", "tuned_lens.json"


@dataclass(frozen=True)
class LensInfo:
    """Provenance of a tuned lens: which model it reads and how it was trained."""

    model: str
    revision: str | None
    d_model: int
    n_layers: int
    steps: int = 0
    loss: float | None = None  # mean KL over layers, last 10% of steps (nats)
    layer_losses: list[float] = field(default_factory=list)  # per boundary 0..n_layers-1
    tokens_seen: int = 0
    batch_size: int = 0
    seq_len: int = 0
    lr: float = 0.0
    seed: int = 0
    text: str = ""  # what it was trained on


class LensNotFoundError(InterpError, FileNotFoundError):
    """A path that holds no tuned lens."""


class TunedLens(nn.Module):
    """Per-layer translators h + A_l h + b_l; pass it as `logit_lens(..., lens=tuned)`.

        >>> lens = TunedLens.for_model(interp.load("toy"))       # untrained: the logit lens
        >>> lens.info.n_layers, lens.info.steps
        (2, 0)
    """

    name = "tuned"

    def __init__(self, info: LensInfo):
        super().__init__()
        self.info = info
        d, n = info.d_model, info.n_layers
        self.weight = nn.Parameter(torch.zeros(n, d, d))  # A: (layer, d_model out, d_model in)
        self.bias = nn.Parameter(torch.zeros(n, d))  # b: (layer, d_model)

    @classmethod
    def for_model(cls, model: interp.Model) -> TunedLens:
        """An untrained (identity) lens shaped for `model`."""
        return cls(LensInfo(model.name, model.revision, model.d_model, model.n_layers))

    def __repr__(self) -> str:
        i = self.info
        return f"TunedLens({i.model}@{i.revision}: {i.n_layers} translators, {i.steps} steps)"

    def translate(self, h: Resid, layer: int) -> Resid:
        """Translate the residual at boundary `layer`; the last boundary is left as it is."""
        if layer == self.info.n_layers:
            return h
        w, b = self.weight[layer].to(h), self.bias[layer].to(h)
        return h + h @ w.T + b  # (..., d_model)

    def check(self, model: interp.Model) -> None:
        """Refuse a lens whose shapes do not fit `model` (another checkpoint of the same model
        is allowed: reading one checkpoint with another's lens is a legitimate experiment)."""
        mine, theirs = (self.info.d_model, self.info.n_layers), (model.d_model, model.n_layers)
        if mine != theirs:
            raise InputError(
                f"This tuned lens was trained on {self.info.model} ((d_model, n_layers) = {mine}) "
                f"and cannot read {model.name} {theirs}: train one with "
                "train_tuned_lens(model, text).")

    def save(self, path: str | Path) -> Path:
        """Write `path/tuned_lens.safetensors` and `path/tuned_lens.json` (provenance)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.weight.detach().contiguous(),
                   "bias": self.bias.detach().contiguous()}
        save_file(tensors, str(path / WEIGHTS), metadata={"info": json.dumps(asdict(self.info))})
        (path / INFO).write_text(json.dumps(asdict(self.info), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        """Read a lens written by `save` (the directory, or its .safetensors file)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        weights = path / WEIGHTS if path.is_dir() else path
        if not weights.is_file():
            raise LensNotFoundError(f"No tuned lens at {str(path)!r}: expected a directory holding "
                                    f"{WEIGHTS}, as written by TunedLens.save or "
                                    "`pythia-interp tuned-lens train --out DIR`.")
        with safe_open(str(weights), framework="pt") as f:
            info = LensInfo(**json.loads(f.metadata()["info"]))
        lens = cls(info)
        lens.load_state_dict(load_file(str(weights)))
        return lens.eval()


def token_stream(model: interp.Model, text: str | Sequence[str] | Tensor) -> Int[Tensor, " pos"]:
    """One 1-D stream of ids: each document tokenized and followed by end-of-text.

        >>> token_stream(interp.load("toy"), ["x = 1", "y"]).tolist()   # end-of-text (0) after each
        [89, 607, 652, 0, 90, 0]
    """
    if isinstance(text, Tensor):
        return text.flatten().long()
    docs = [text] if isinstance(text, str) else list(text)
    tok = model.tokenizer
    if tok is None:
        raise InputError("This model has no tokenizer: pass the text as a 1-D tensor of token ids.")
    if tok.eos_token_id is None:
        raise InputError("This model's tokenizer has no end-of-text token to separate documents: pass "
                         "one string, or a 1-D tensor of token ids.")
    eos = tok.eos_token_id
    rows = [e.ids for e in tok.backend_tokenizer.encode_batch(docs, add_special_tokens=False)]
    return torch.tensor([i for row in rows for i in [*row, eos]], dtype=torch.long)


def default_text() -> tuple[list[str], str]:
    """Training documents on every machine: the toy suite's split of Python's own docs.

        >>> docs, source = default_text()
        >>> len(docs) > 50, source
        (True, 'pydoc_data.topics (toy suite training split)')
    """
    from interp.toy.text import split_topics

    return split_topics()[0], "pydoc_data.topics (toy suite training split)"


def _windows(stream: Int[Tensor, " pos"], batch_size: int, seq_len: int,
            g: torch.Generator) -> Int[Tensor, "batch pos"]:
    """`batch_size` random windows of `seq_len` tokens from the stream."""
    starts = torch.randint(0, len(stream) - seq_len + 1, (batch_size,), generator=g)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


@contextmanager
def _frozen(*modules: nn.Module | None):
    """Parameters of the modules need no gradient inside the block; restored on any exit."""
    before = {p: p.requires_grad for m in modules if m is not None for p in m.parameters()}
    try:
        for p in before:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in before.items():
            p.requires_grad_(flag)


def train_tuned_lens(model: interp.Model, text: str | Sequence[str] | Tensor, *, steps: int = 250,
                     batch_size: int = 8, seq_len: int = 128, lr: float = 1e-3, seed: int = 0,
                     source: str = "", progress: bool = True) -> TunedLens:
    """Train a tuned lens on `text` (str, documents or a 1-D id stream), seeded.

        >>> lens = train_tuned_lens(interp.load("toy"), default_text()[0], steps=30, progress=False)
        >>> lens.info.steps, len(lens.info.layer_losses)
        (30, 2)

    Adam, warming up over the first 10% of steps then decaying linearly to zero; each step reads
    `batch_size` random windows of `seq_len` tokens and minimises the per-layer KL(model || lens).
    `source` says what the text is, for the lens's provenance.
    """
    from tqdm.auto import tqdm

    stream = token_stream(model, text)
    seq_len = min(seq_len, model.n_ctx, len(stream))
    if seq_len < 2 or steps < 1:
        raise InputError(f"Need steps >= 1 and a stream of at least 2 tokens; got steps={steps}, "
                         f"{len(stream)} tokens: give more text.")
    g = torch.Generator().manual_seed(seed)
    lens = TunedLens.for_model(model).to(model.device)
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (1 - s / steps))
    history, readout = [], Readout.of(model)
    with _frozen(readout.norm, readout.unembed):  # gradients reach the lens only, never the model
        for _ in tqdm(range(steps), desc="tuned lens", disable=not progress):
            ids = _windows(stream, batch_size, seq_len, g).to(model.device)
            history.append(_step(model, lens, ids, readout, optimizer))
            schedule.step()
    tail = torch.tensor(history[-max(1, steps // 10):]).mean(0)  # (layer,)
    lens.info = replace(lens.info, steps=steps, loss=tail.mean().item(), layer_losses=tail.tolist(),
                        tokens_seen=steps * batch_size * seq_len, batch_size=batch_size,
                        seq_len=seq_len, lr=lr, seed=seed, text=source)
    return lens.cpu().eval()


def _step(model: interp.Model, lens: TunedLens, ids: Int[Tensor, "batch pos"], readout: Readout,
          optimizer: torch.optim.Optimizer) -> list[float]:
    """One optimiser step; layers are backpropagated one at a time to bound memory."""
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names=resid_names(model), stop_at_layer=model.n_layers)
        ref = readout(boundary(cache, model.n_layers))  # (batch, pos, d_vocab)
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for layer in range(model.n_layers):
        logp = readout(lens.translate(boundary(cache, layer), layer))
        loss = nn.functional.kl_div(logp, ref, log_target=True, reduction="none").sum(-1).mean()
        loss.backward()
        losses.append(loss.item())
    optimizer.step()
    return losses


@dataclass(frozen=True)
class LensComparison:
    """The logit lens and a tuned lens on the same batch: mean KL and cross-entropy per layer."""

    results: dict[str, LensResult]  # lens name -> result

    def to_frame(self) -> pd.DataFrame:
        """Per lens and layer: means over prompts and real positions."""
        frames = [r.layer_means().assign(lens=name) for name, r in self.results.items()]
        frame = pd.concat(frames, ignore_index=True)
        return frame[["lens", "layer", "kl", "cross_entropy", "entropy", "agrees"]]

    def figure(self):
        """Mean KL and cross-entropy per layer, one line per lens, side by side."""
        from analyses.lens.figures import comparison_lines

        return comparison_lines(self.to_frame(), next(iter(self.results.values())).provenance.model)


def compare_lenses(model: interp.Model, x: Prompt | interp.Tokens | Tensor, tuned: TunedLens,
                   **kwargs) -> LensComparison:
    """Logit and tuned lens on one forward pass of `x` (keyword arguments as in `logit_lens`).

        >>> model = interp.load("toy")
        >>> tuned = train_tuned_lens(model, default_text()[0], steps=20, progress=False)
        >>> frame = compare_lenses(model, "def f(x): return x", tuned).to_frame()
        >>> sorted(set(frame["lens"]))
        ['logit', 'tuned']
    """
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names=resid_names(model), stop_at_layer=model.n_layers)
    return LensComparison({"logit": lens_from_cache(model, cache, **kwargs),
                           "tuned": lens_from_cache(model, cache, lens=tuned, **kwargs)})


