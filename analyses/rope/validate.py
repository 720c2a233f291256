"""Validate the positional index: move positions through the real model and watch each head's pattern.

    >>> import interp
    >>> model = interp.load("toy")
    >>> from analyses.rope import sample_tokens
    >>> tests = position_tests(model, sample_tokens(model, 128), split=64, gap=32)
    >>> bool(tests.values["shift_kl"].abs().max() < 1e-6)    # rotary scores see offsets only
    True
    >>> frame = tests.to_frame()                 # a row per head: gap_kl, gap_kl_kernel, reverse_*_tv, ...

The prompt is split into a context (positions < split) and a probe; every number is a mean over
the probe's query rows. Three experiments, each one forward of the real model with new inputs:

- shift: every position + `shift` (position_ids passed to the model). Rotary scores depend only on
  key_pos - query_pos, so the prediction for a rotary model is no change at all (`shift_kl` then
  measures float rounding); a model with learned absolute positions changes.
- gap: the probe's positions + `gap`, so every probe-to-context offset moves by -gap while
  offsets inside the context and inside the probe stay. `gap_kl` is KL(before || after) of the
  probe rows; `gap_kl_kernel` is what the content-free kernel predicts, adding
  K(Delta - gap) - K(Delta) to the observed scores of context keys. Positional heads move;
  content heads do not.
- reverse: the context's tokens in reverse order. `reverse_position_tv` is the total variation
  between the probe rows indexed by key position, `reverse_token_tv` after following each context
  token to its new position. A positional head keeps the first small, a content head the second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.rope.common import head_label, n_ctx
from analyses.rope.decomposition import ScoreDecomposition, decompose
from analyses.rope.kernel import PositionalKernel, positional_kernel
from interp.cache import Provenance
from interp.errors import InputError
from interp.model import Model, Tokens

EXPERIMENTS = ("shift_kl", "gap_kl", "gap_kl_kernel", "reverse_position_tv", "reverse_token_tv")


@dataclass(frozen=True)
class PositionTests:
    """Per head and experiment, the mean change of the probe rows' attention (see the module docstring)."""

    values: dict[str, Float[Tensor, "layer head"]]
    positional_index: Float[Tensor, "layer head"]
    split: int
    shift: int
    gap: int
    provenance: Provenance

    def to_frame(self):
        """One row per head: positional_index and each experiment's change."""
        import pandas as pd

        n_layers, n_heads = self.positional_index.shape
        rows = []
        for L in range(n_layers):
            for h in range(n_heads):
                row = {"layer": L, "head": h, "name": head_label(L, h),
                       "positional_index": self.positional_index[L, h].item()}
                rows.append(row | {k: v[L, h].item() for k, v in self.values.items()})
        return pd.DataFrame(rows)

    def figure(self):
        """Gap KL (measured and kernel-predicted) and reversal changes against the positional index."""
        from analyses.rope import figures

        return figures.position_tests(self)


def position_tests(
    model: Model, x, *, split: int | None = None, shift: int | None = None, gap: int | None = None,
    decomposition: ScoreDecomposition | None = None,
) -> PositionTests:
    """Shift, gap and reversal experiments on an unpadded prompt (or batch of equal-length prompts).

    >>> import interp
    >>> model = interp.load("toy")
    >>> position_tests(model, "a = 1\\nb = 2\\nc = a + b\\nprint(c)\\n", gap=8).values["gap_kl"].shape
    torch.Size([2, 3])
    """
    tokens = model.tokens(x)
    n = tokens.ids.shape[1]
    split, shift, gap = _check(tokens, n, n_ctx(model), split, shift, gap)
    dec = decomposition if decomposition is not None else decompose(model, tokens)
    kernel = positional_kernel(model, decomposition=dec)
    base = tokens.position_ids
    clean, scores = _patterns(model, tokens, base, with_scores=True)
    probe = slice(split, n)
    values = {
        "shift_kl": _kl(clean, _patterns(model, tokens, base + shift), probe),
        "gap_kl": _kl(clean, _patterns(model, tokens, _gapped(base, split, gap)), probe),
        "gap_kl_kernel": _kernel_prediction(scores, kernel, split, gap),
    }
    order = torch.cat([torch.arange(split).flip(0), torch.arange(split, n)])  # new position -> old
    reversed_tokens = Tokens(tokens.ids[:, order.to(tokens.ids.device)], tokens.attention_mask)
    rev = _patterns(model, reversed_tokens, base)
    values["reverse_position_tv"] = _tv(clean, rev, probe)
    values["reverse_token_tv"] = _tv(clean, rev[..., order.argsort()], probe)
    return PositionTests(values, dec.positional_index.float(), split, shift, gap, dec.provenance)


def _patterns(model: Model, tokens: Tokens, positions: Tensor, with_scores: bool = False):
    """Patterns (layer, batch, head, q, k) of every layer, and optionally pre-mask scores, at given positions."""
    kinds = ("pattern", "attn_scores") if with_scores else ("pattern",)
    store: dict[str, list[Tensor]] = {k: [None] * model.n_layers for k in kinds}

    def save(t, hook):
        store[hook.name.rsplit("hook_", 1)[1]][hook.layer] = t.detach().float().cpu()

    with model.hooks(fwd={f"blocks.{L}.attn.hook_{k}": save for L in range(model.n_layers) for k in kinds}):
        run_at_positions(model, tokens, positions)
    patterns = torch.stack(store["pattern"])
    return (patterns, torch.stack(store["attn_scores"])) if with_scores else patterns


def run_at_positions(model: Model, tokens: Tokens, positions: Tensor) -> Tensor:
    """The real model's logits with explicit position ids (hooks of an enclosing `model.hooks` fire)."""
    with torch.no_grad():
        return model.hf(input_ids=tokens.ids, attention_mask=tokens.attention_mask,
                        position_ids=positions.to(tokens.ids.device), use_cache=False).logits


def _gapped(positions: Tensor, split: int, gap: int) -> Tensor:
    out = positions.clone()
    out[:, split:] += gap
    return out


def _kl(p: Tensor, q: Tensor, rows: slice) -> Tensor:
    """Mean over batch and probe rows of KL(p || q) per (layer, head)."""
    p, q = p[..., rows, :].double(), q[..., rows, :].double()
    terms = torch.where(p > 0, p * (p.clamp(min=1e-300).log() - q.clamp(min=1e-300).log()), 0.0)
    return terms.sum(-1).mean((1, 3)).float()


def _tv(p: Tensor, q: Tensor, rows: slice) -> Tensor:
    """Mean total variation distance over batch and probe rows, per (layer, head)."""
    return (p[..., rows, :] - q[..., rows, :]).abs().sum(-1).mean((1, 3)).float() / 2


def _kernel_prediction(scores: Tensor, kernel: PositionalKernel, split: int, gap: int) -> Tensor:
    """KL between the probe rows' softmax and the softmax after adding K(Delta - gap) - K(Delta) on context keys."""
    n = scores.shape[-1]
    q_pos, k_pos = torch.arange(n)[:, None], torch.arange(n)[None, :]
    last = len(kernel.offsets) - 1  # kernel.offsets[i] = i - last
    delta = (k_pos - q_pos).clamp(-last, 0)  # (q, k); pairs past the query are masked anyway
    index, moved = delta + last, (delta - gap).clamp(min=-last) + last
    change = kernel.kernel[..., moved] - kernel.kernel[..., index]  # (layer, head, q, k)
    change = change * ((q_pos >= split) & (k_pos < split))
    before = scores.softmax(-1)
    after = (scores + change[:, None]).softmax(-1)
    return _kl(before, after, slice(split, n))


def _check(tokens: Tokens, n: int, n_ctx: int, split, shift, gap) -> tuple[int, int, int]:
    """Defaults and bounds; refuse padded input (reversal needs every row to share its positions)."""
    if tokens.padded:
        raise InputError("position_tests needs unpadded prompts: pass one prompt, or a batch of equal length.")
    split = n // 2 if split is None else split
    if not 1 <= split < n:
        raise InputError(f"split={split} must be in 1..{n - 1}: the probe is tokens split..{n - 1}.")
    room = n_ctx - n
    shift = min(64, room) if shift is None else shift
    gap = min(64, room) if gap is None else gap
    for name, value in (("shift", shift), ("gap", gap)):
        if not 0 <= value <= room:
            raise InputError(f"{name}={value} must be in 0..{room}: the last position must stay below n_ctx={n_ctx}.")
    return split, shift, gap
