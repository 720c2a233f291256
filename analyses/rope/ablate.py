"""Band ablation: remove one rotary band, every rotary dim, or every pass-through dim from a head's q and k.

    >>> import interp
    >>> model = interp.load("toy")
    >>> from analyses.rope import sample_tokens
    >>> abl = band_ablation(model, sample_tokens(model, 64), heads=[(0, 1)])
    >>> abl.to_frame().sort_values("pattern_kl").ablation.iloc[-1]        # what the head cannot lose
    'rotary'
    >>> fig = abl.figure()                     # bars per head: pattern KL and loss change

Each ablation is one forward of the real model with hooks on `blocks.L.attn.hook_q` and `hook_k`
that zero the head's dims of that part before rotation. Rotation turns each band's pair of dims
(i, i + r/2) into itself, so zeroing the pair before rotation is the same as zeroing it after.
`pattern_kl` is KL(clean || ablated) of the head's attention, averaged over real query rows;
`loss_change` is the model's mean next-token loss on the prompt, ablated minus clean (nats).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.rope.common import Geometry, check_heads, geometry, head_label, part_names, require_rotary
from interp import rope
from interp.cache import Provenance
from interp.errors import InputError
from interp.model import Model, Tokens


@dataclass(frozen=True)
class BandAblation:
    """Per ablated head and ablation: the head's pattern KL and the change in loss."""

    heads: list[tuple[int, int]]
    ablations: list[str]
    pattern_kl: Float[Tensor, "ablated ablation"]
    loss_change: Float[Tensor, "ablated ablation"]
    clean_loss: float
    provenance: Provenance

    def to_frame(self):
        """One row per (head, ablation)."""
        import pandas as pd

        rows = [
            {"layer": L, "head": h, "name": head_label(L, h), "ablation": a,
             "pattern_kl": self.pattern_kl[i, j].item(), "loss_change": self.loss_change[i, j].item()}
            for i, (L, h) in enumerate(self.heads) for j, a in enumerate(self.ablations)
        ]
        return pd.DataFrame(rows)

    def figure(self):
        """Grouped bars: pattern KL and loss change per head, one colour per ablation."""
        from analyses.rope import figures

        return figures.ablation_bars(self)


def ablation_dims(geo: Geometry, ablation: str) -> list[int]:
    """Head dims an ablation zeroes: 'band<i>' (dims i and i + r/2), 'rotary' (0..r-1) or 'pass' (r..)."""
    if ablation == "rotary":
        return list(range(geo.rotary_dim))
    if ablation == "pass":
        return list(range(geo.rotary_dim, geo.d_head))
    bands = part_names(geo.n_bands)[1:]
    if ablation not in bands:
        raise InputError(f"Unknown ablation {ablation!r}; choose from {[*bands, 'rotary', 'pass']}.")
    return rope.band_dims(geo.rotary_dim)[int(ablation[4:])].tolist()


def band_ablation(
    model: Model, x, *, heads: Sequence[tuple[int, int]] | None = None, ablations: Sequence[str] | None = None
) -> BandAblation:
    """Ablate each part of each head in turn (every head and every part by default).

    >>> import interp
    >>> model = interp.load("toy")
    >>> band_ablation(model, "x = 1\\ny = x + 1\\n", heads=[(0, 1)], ablations=["band0"]).loss_change.shape
    torch.Size([1, 1])
    """
    geo = geometry(model)
    require_rotary(geo, "band_ablation")
    heads = check_heads(heads, model.n_layers, model.n_heads)
    ablations = list(ablations) if ablations is not None else [*part_names(geo.n_bands)[1:], "rotary", "pass"]
    dims = {a: ablation_dims(geo, a) for a in ablations}
    tokens = model.tokens(x)
    if min(tokens.lengths) < 2:
        raise InputError(f"Prompts of {min(tokens.lengths)} token(s): the loss needs at least 2 tokens per prompt.")
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(tokens, names=[f"blocks.{L}.attn.hook_pattern" for L, _ in heads])
    clean = next_token_loss(clean_logits, tokens)
    kl = torch.zeros(len(heads), len(ablations))
    loss = torch.zeros(len(heads), len(ablations))
    for i, (L, h) in enumerate(heads):
        for j, a in enumerate(ablations):
            pats, logits = _run(model, tokens, {L: (h, dims[a])}, layer=L)
            kl[i, j] = pattern_kl(cache["pattern", L][:, h], pats[L][:, h], tokens)
            loss[i, j] = next_token_loss(logits, tokens) - clean
    return BandAblation(heads, ablations, kl, loss, clean, cache.provenance)


def _run(model: Model, tokens: Tokens, zero: dict[int, tuple[int, list[int]]], layer: int):
    """Logits, and the patterns of `layer`, with some head dims zeroed in q and k."""
    patterns: dict[int, Tensor] = {}

    def save(t, hook):
        patterns[hook.layer] = t.detach().float()

    def zero_dims(t, hook):
        head, dims = zero[hook.layer]
        t = t.clone()
        t[:, :, head, dims] = 0
        return t

    fwd = {f"blocks.{layer}.attn.hook_pattern": save}
    for L in zero:
        fwd |= {f"blocks.{L}.attn.hook_q": zero_dims, f"blocks.{L}.attn.hook_k": zero_dims}
    with torch.no_grad(), model.hooks(fwd=fwd):
        logits = model(tokens)
    return patterns, logits


def pattern_kl(p: Float[Tensor, "batch q k"], q: Float[Tensor, "batch q k"], tokens: Tokens) -> float:
    """Mean over real query rows of KL(p || q)."""
    p, q = p.double(), q.double()
    terms = torch.where(p > 0, p * (p.clamp(min=1e-300).log() - q.clamp(min=1e-300).log()), 0.0).sum(-1)
    real = tokens.attention_mask.bool()
    return terms[real].mean().item()


def next_token_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Tokens) -> float:
    """Mean cross-entropy of each real token given the ones before it (padding skipped)."""
    logp = logits[:, :-1].double().log_softmax(-1)
    target = tokens.ids[:, 1:]
    nll = -logp.gather(-1, target[..., None])[..., 0]
    keep = tokens.attention_mask[:, 1:].bool() & tokens.attention_mask[:, :-1].bool()
    if not keep.any():
        raise InputError("The loss needs at least two real tokens in a prompt.")
    return nll[keep].mean().item()

