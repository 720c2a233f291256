"""What every RoPE analysis shares: the model's positional geometry, part and term names, checked inputs.

    >>> import interp
    >>> model = interp.load("toy")
    >>> geo = geometry(model)
    >>> geo.positional, geo.rotary_dim, geo.n_bands, part_names(geo.n_bands)[:3]
    ('rotary', 8, 4, ['pass', 'band0', 'band1'])

Sign convention everywhere: the offset is Delta = key_pos - query_pos, so a causal head sees
Delta in -(n_ctx - 1)..0 and a previous-token head peaks at Delta = -1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp import rope
from interp.errors import InputError
from interp.model import Model, Tokens

# Each score part splits into four bias terms: q = q_content + b_Q and k = k_content + b_K.
TERMS: tuple[str, ...] = ("q·k", "q·b_K", "b_Q·k", "b_Q·b_K")


@dataclass(frozen=True)
class Geometry:
    """How a model's attention sees position: rotary dims and base, or learned absolute positions."""

    positional: str  # "rotary" or "learned"
    rotary_dim: int  # 0 for learned positions
    base: float
    d_head: int
    n_ctx: int

    @property
    def n_bands(self) -> int:
        return self.rotary_dim // 2

    def frequencies(self) -> Float[Tensor, " band"]:
        """theta_i, radians per token, of each band."""
        return rope.inverse_frequencies(self.rotary_dim, self.base)

    def wavelengths(self) -> Float[Tensor, " band"]:
        """Tokens per full turn of each band."""
        return rope.wavelengths(self.rotary_dim, self.base)

    def part_of_dim(self) -> Int[Tensor, " d_head"]:
        """Part index of each head dim: 0 for pass-through, 1 + i for band i (dims i and i + r/2)."""
        part = torch.zeros(self.d_head, dtype=torch.long)
        pairs = rope.band_dims(self.rotary_dim)
        for i, (a, b) in enumerate(pairs.tolist()):
            part[a] = part[b] = 1 + i
        return part


def geometry(model: Model) -> Geometry:
    """The positional geometry of a model (`model.arch.positional`: rotary on NeoX, learned on GPT-2)."""
    positional = model.arch.positional
    rotary_dim = model.rotary_dim if positional == "rotary" else 0
    base = model.rotary_base if positional == "rotary" else 0.0
    return Geometry(positional, rotary_dim, base, model.d_head, model.n_ctx)


def n_ctx(model: Model) -> int:
    """The model's context length."""
    return model.n_ctx


def score_scale(model: Model, layer: int) -> float:
    """The factor the model's attention puts on q . k in `layer` (1/sqrt(d_head) unless configured otherwise)."""
    attention = model.module(f"blocks.{layer}.attn.hook_pattern")
    return float(getattr(attention, "scaling", 1 / math.sqrt(model.d_head)))


def part_names(n_bands: int) -> list[str]:
    """'pass', then 'band0' ... 'band{n-1}' (band 0 turns fastest)."""
    return ["pass", *(f"band{i}" for i in range(n_bands))]


def check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Sorted model layers (negative counts from the end); all of them for None."""
    if layers is None:
        return list(range(n_layers))
    bad = [L for L in layers if not -n_layers <= L < n_layers]
    if bad or not len(layers):
        raise InputError(f"layers={list(layers)}: pass layers in 0..{n_layers - 1}, or None for all of them.")
    return sorted({L % n_layers for L in layers})


def check_heads(heads: Sequence[tuple[int, int]] | None, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """(layer, head) pairs; every head of the model for None."""
    if heads is None:
        return [(L, h) for L in range(n_layers) for h in range(n_heads)]
    out = []
    for pair in heads:
        if len(pair) != 2 or not (0 <= pair[0] < n_layers and 0 <= pair[1] < n_heads):
            raise InputError(
                f"head {pair!r} is not a (layer, head) pair with layer in 0..{n_layers - 1} and head in "
                f"0..{n_heads - 1}; pass e.g. [(0, 1)], or None for every head."
            )
        out.append((int(pair[0]), int(pair[1])))
    return out


def require_rotary(geo: Geometry, what: str) -> None:
    """Refuse an analysis that only exists for rotary positions, saying what to use instead."""
    if geo.positional != "rotary" or geo.rotary_dim == 0:
        raise InputError(
            f"{what} works on rotary frequency bands, and this model has {geo.positional} positions (no rotary "
            "dims). For learned positions use decompose, positional_kernel, head_table and position_tests."
        )


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


# pydoc topics of Python's own documentation that the toy suite never trained on.
SAMPLE_TOPICS = ("execmodel", "assignment", "comparisons", "import", "try")


def sample_text() -> str:
    """Plain English text that ships with Python: documentation topics held out from the toy suite's training.

    >>> sample_text()[:15]
    'Execution model'
    """
    from pydoc_data.topics import topics

    return "\n".join(topics[name] for name in SAMPLE_TOPICS if name in topics)


def sample_tokens(model: Model, n_tokens: int = 256) -> Tokens:
    """The first `n_tokens` tokens of `sample_text()` as one unpadded row.

    >>> import interp
    >>> model = interp.load("toy")
    >>> sample_tokens(model, 100).ids.shape
    torch.Size([1, 100])
    """
    text = sample_text()
    ids = model.to_tokens(text[: 16 * n_tokens]).ids[0]
    if not 2 <= n_tokens <= len(ids):
        raise InputError(f"n_tokens={n_tokens}: choose 2..{len(ids)} tokens of the sample text.")
    ids = ids[:n_tokens][None]
    return Tokens(ids, torch.ones_like(ids))
