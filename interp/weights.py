"""Per-head weight views, consistent with the hook sites (TransformerLens shapes).

    >>> model.W_Q.shape                     # (layer, head, d_model, d_head)
    >>> z = cache["z", 0]                   # (batch, pos, head, d_head)
    >>> einsum(z, model.W_O[0], "b p h d, h d m -> b p m") + model.b_O[0]   # == cache["attn_out", 0]

Each property stacks over layers (a copy); per-layer functions return views of the real parameters.
"""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn


def qkv_weight(attention: nn.Module, n_heads: int, which: int) -> Float[Tensor, "head d_model d_head"]:
    """W_Q (0), W_K (1) or W_V (2) of one layer; the fused rows are per head `[q | k | v]`."""
    w = attention.query_key_value.weight.view(n_heads, 3, -1, attention.query_key_value.in_features)
    return w[:, which].transpose(-1, -2)  # (head, d_model, d_head)


def qkv_bias(attention: nn.Module, n_heads: int, which: int) -> Float[Tensor, "head d_head"]:
    """b_Q, b_K or b_V of one layer."""
    return attention.query_key_value.bias.view(n_heads, 3, -1)[:, which]


def out_weight(attention: nn.Module, n_heads: int) -> Float[Tensor, "head d_head d_model"]:
    """W_O of one layer: `dense` reads z as (head d_head)."""
    return einops.rearrange(attention.dense.weight, "d_model (head d_head) -> head d_head d_model", head=n_heads)


class WeightViews:
    """Mixed into `Model`: W_E, W_U and per-layer weights stacked as (layer, ...)."""

    hf: nn.Module
    n_heads: int

    def _layers(self):
        return self.hf.gpt_neox.layers

    def _stack(self, fn) -> Tensor:
        return torch.stack([fn(layer) for layer in self._layers()]).detach()

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.hf.gpt_neox.embed_in.weight.detach()

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.hf.lm_head.weight.detach().T

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack(lambda layer: qkv_weight(layer.attention, self.n_heads, 0))

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack(lambda layer: qkv_weight(layer.attention, self.n_heads, 1))

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack(lambda layer: qkv_weight(layer.attention, self.n_heads, 2))

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack(lambda layer: qkv_bias(layer.attention, self.n_heads, 0))

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack(lambda layer: qkv_bias(layer.attention, self.n_heads, 1))

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack(lambda layer: qkv_bias(layer.attention, self.n_heads, 2))

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stack(lambda layer: out_weight(layer.attention, self.n_heads))

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack(lambda layer: layer.attention.dense.bias)

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack(lambda layer: layer.mlp.dense_h_to_4h.weight.T)

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack(lambda layer: layer.mlp.dense_h_to_4h.bias)

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack(lambda layer: layer.mlp.dense_4h_to_h.weight.T)

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack(lambda layer: layer.mlp.dense_4h_to_h.bias)
