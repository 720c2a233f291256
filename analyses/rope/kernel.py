"""Positional kernels: the score each head gives to an offset alone, from its mean q/k and from data.

    >>> import interp
    >>> model = interp.load("toy")
    >>> from analyses.rope import sample_tokens
    >>> kern = positional_kernel(model, sample_tokens(model, 128))
    >>> kern.argmax[0, 1].item()             # the toy previous-token head
    -1
    >>> fig = kern.figure(heads=[(0, 1)])

Offsets are Delta = key_pos - query_pos, for Delta = -(n_ctx - 1)..0 (a previous-token head
peaks at -1). For rotary positions the content-free kernel replaces every q and k by its mean
over the prompt's real tokens (biases included) and rotates them exactly:

    K(Delta) = [mean q . R(Delta) mean k] / sqrt(d_head) = pass constant + sum over bands i of
               (q1 k1 + q2 k2) cos(theta_i Delta) + (q2 k1 - q1 k2) sin(theta_i Delta)

with (q1, q2) and (k1, k2) the band's dims i and i + r/2. The bias kernel uses b_Q and b_K alone.
For learned positions (GPT-2) the kernel reads the position embeddings through each layer's
LayerNorm and W_Q/W_K and averages over query positions at each offset. The data kernel is the
mean within-query-centred score at each offset the prompt covers (see `decompose`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses.rope.common import Geometry, check_heads, head_label
from analyses.rope.decomposition import ScoreDecomposition, decompose
from interp import rope
from interp.cache import Provenance
from interp.model import Model


@dataclass(frozen=True)
class PositionalKernel:
    """Content-free, bias-only and data kernels of every head against the offset Delta."""

    offsets: Int[Tensor, " offset"]  # -(n_ctx - 1)..0
    kernel: Float[Tensor, "layer head offset"]  # content-free (mean q/k, biases included), scaled like scores
    bias_kernel: Float[Tensor, "layer head offset"]  # b_Q and b_K only
    band_kernel: Float[Tensor, "layer head band offset"]  # each band's part of `kernel` (rotary only)
    data_offsets: Int[Tensor, " data_offset"]  # -(n-1)..0 for an n-token prompt
    data_kernel: Float[Tensor, "layer head data_offset"]  # mean centred score of the prompt (NaN: no pair)
    layers: tuple[int, ...]
    geometry: Geometry
    provenance: Provenance

    @property
    def argmax(self) -> Int[Tensor, "layer head"]:
        """The offset where the content-free kernel peaks (the latest offset wins a tie)."""
        flipped = self.kernel.flip(-1).argmax(-1)
        return self.offsets.flip(0)[flipped]

    @property
    def data_argmax(self) -> Int[Tensor, "layer head"]:
        """The offset where the data kernel peaks."""
        return self.data_offsets[self.data_kernel.nan_to_num(float("-inf")).argmax(-1)]

    def to_frame(self):
        """One row per head and offset: kernel, bias_kernel, data_kernel (NaN beyond the prompt)."""
        import numpy as np
        import pandas as pd

        n_layers, n_heads, n_off = self.kernel.shape
        data = torch.full_like(self.kernel, float("nan"))
        data[..., n_off - self.data_offsets.shape[0]:] = self.data_kernel.to(data.dtype)
        layer = np.repeat(np.array(self.layers), n_heads * n_off)
        head = np.tile(np.repeat(np.arange(n_heads), n_off), n_layers)
        return pd.DataFrame({
            "layer": layer, "head": head, "offset": np.tile(self.offsets.numpy(), n_layers * n_heads),
            "kernel": self.kernel.flatten().numpy(), "bias_kernel": self.bias_kernel.flatten().numpy(),
            "data_kernel": data.flatten().numpy(),
        })

    def figure(self, heads: list[tuple[int, int]] | None = None, max_offset: int = 64):
        """Kernel curves of some heads (default: the four with the largest kernel range) for Delta >= -max_offset."""
        from analyses.rope import figures

        if heads is None:
            spread = self.kernel[..., -max_offset - 1:]
            spread = (spread.amax(-1) - spread.amin(-1)).flatten()
            n_heads = self.kernel.shape[1]
            heads = [(self.layers[i // n_heads], i % n_heads) for i in spread.argsort(descending=True)[:4].tolist()]
        heads = check_heads(heads, max(self.layers) + 1, self.kernel.shape[1])
        return figures.kernel_curves(self, heads, max_offset)

    def curve(self, layer: int, head: int) -> dict[str, Tensor]:
        """The three kernels of one head, keyed by name."""
        i = self.layers.index(layer)
        return {"kernel": self.kernel[i, head], "bias_kernel": self.bias_kernel[i, head],
                "data_kernel": self.data_kernel[i, head], "name": head_label(layer, head)}


def positional_kernel(model: Model, x=None, *, decomposition: ScoreDecomposition | None = None) -> PositionalKernel:
    """Every head's kernels, from a decomposition of `x` (computed here when not given).

    >>> import interp
    >>> model = interp.load("toy")
    >>> positional_kernel(model, "x = [1, 2, 3]").argmax.shape
    torch.Size([2, 3])
    """
    dec = decomposition if decomposition is not None else decompose(model, x)
    geo = dec.geometry
    offsets = torch.arange(-(geo.n_ctx - 1), 1)
    if geo.positional == "rotary":
        scale = dec.scale[:, None, None]  # (layer, 1, 1)
        band = rope.band_kernel(dec.q_mean, dec.k_mean, offsets, geo.rotary_dim, geo.base) * scale[..., None]
        constant = _pass_dot(dec.q_mean, dec.k_mean, geo)[..., None] * scale
        bias = rope.band_kernel(dec.b_Q, dec.b_K, offsets, geo.rotary_dim, geo.base).sum(-2)
        bias = (bias + _pass_dot(dec.b_Q, dec.b_K, geo)[..., None]) * scale
        kernel = band.sum(-2) + constant
    else:
        from analyses.rope.learned import learned_kernels

        kernel, bias = learned_kernels(model, dec.layers, dec.scale)
        band = kernel.new_zeros(*kernel.shape[:2], 0, len(offsets))
    return PositionalKernel(offsets, kernel.float(), bias.float(), band.float(), dec.offsets, dec.data_kernel.float(),
                            dec.layers, geo, dec.provenance)


def _pass_dot(q: Tensor, k: Tensor, geo: Geometry) -> Tensor:
    """q . k on the pass-through dims."""
    return (q[..., geo.rotary_dim:].double() * k[..., geo.rotary_dim:].double()).sum(-1)
