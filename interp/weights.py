"""Per-head weight views in TransformerLens's shapes, for both architectures, and QK/OV circuits.

    >>> import interp, torch
    >>> model = interp.load("toy")
    >>> model.W_Q.shape                                  # (layer, head, d_model, d_head)
    torch.Size([2, 3, 96, 32])
    >>> _, cache = model.run_with_cache("Hello, I am")
    >>> z = cache["z", 0]                                # (batch, pos, head, d_head)
    >>> out = torch.einsum("bphd,hdm->bpm", z, model.W_O[0]) + model.b_O[0]
    >>> torch.allclose(out, cache["attn_out", 0], atol=1e-4)
    True

Stacks over layers are built once and reused until a parameter changes (in place or replaced).
"""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.arch import Architecture


def qkv_weight(arch: Architecture, qkv: nn.Module, n_heads: int, which: int) -> Float[Tensor, "head d_model d_head"]:
    """W_Q (0), W_K (1) or W_V (2) of one layer, whatever the fused layout and storage."""
    return arch.split_qkv(arch.in_out(qkv), n_heads, which).permute(1, 0, 2)  # (head, d_model, d_head)


def qkv_bias(arch: Architecture, qkv: nn.Module, n_heads: int, which: int) -> Float[Tensor, "head d_head"]:
    """b_Q, b_K or b_V of one layer (zeros when the projection has no bias)."""
    if qkv.bias is None:
        return torch.zeros_like(qkv_weight(arch, qkv, n_heads, which)[:, 0])
    return arch.split_qkv(qkv.bias, n_heads, which)


def bias(arch: Architecture, linear: nn.Module) -> Float[Tensor, " d_out"]:
    """A linear layer's bias (zeros when it has none)."""
    if linear.bias is None:
        return torch.zeros_like(arch.in_out(linear)[0])
    return linear.bias


def out_weight(arch: Architecture, out: nn.Module, n_heads: int) -> Float[Tensor, "head d_head d_model"]:
    """W_O of one layer: the output projection reads z as (head d_head)."""
    return einops.rearrange(arch.in_out(out), "(head d_head) d_model -> head d_head d_model", head=n_heads)


class WeightViews:
    """Mixed into `Model`: W_E, W_pos, W_U and per-layer weights stacked as (layer, ...)."""

    hf: nn.Module
    arch: Architecture
    n_heads: int
    n_layers: int

    def _stack(self, key: str, role: str, fn) -> Tensor:
        """Stack `fn(module)` over layers, rebuilt only when one of those parameters changed."""
        modules = [self.arch.module(self.hf, role, L) for L in range(self.n_layers)]
        stamp = tuple((p.data_ptr(), p._version) for m in modules for p in m.parameters(recurse=False))
        cache = self.__dict__.setdefault("_weight_stacks", {})
        if key not in cache or cache[key][0] != stamp:
            with torch.no_grad():
                cache[key] = (stamp, torch.stack([fn(m) for m in modules]).detach())
        return cache[key][1]

    def _qkv(self, key: str, which: int, bias: bool) -> Tensor:
        fn = qkv_bias if bias else qkv_weight
        return self._stack(key, "qkv", lambda m: fn(self.arch, m, self.n_heads, which))

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.arch.module(self.hf, "embed").weight.detach()

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        """Learned position embeddings (GPT-2); rotary models have none."""
        from interp.errors import SiteNotAvailableError

        if not self.arch.has("pos_embed"):
            raise SiteNotAvailableError(f"{self.arch.kind} has rotary positions, not a W_pos: see interp.rope.")
        return self.arch.module(self.hf, "pos_embed").weight.detach()

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.arch.module(self.hf, "unembed").weight.detach().T

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._qkv("W_Q", 0, False)

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._qkv("W_K", 1, False)

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._qkv("W_V", 2, False)

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return self._qkv("b_Q", 0, True)

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return self._qkv("b_K", 1, True)

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return self._qkv("b_V", 2, True)

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stack("W_O", "out", lambda m: out_weight(self.arch, m, self.n_heads))

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("b_O", "out", lambda m: bias(self.arch, m))

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack("W_in", "fc_in", self.arch.in_out)

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack("b_in", "fc_in", lambda m: bias(self.arch, m))

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack("W_out", "fc_out", self.arch.in_out)

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("b_out", "fc_out", lambda m: bias(self.arch, m))

    def QK(self, layer: int) -> Float[Tensor, "head d_model d_model"]:
        """W_Q[h] W_K[h]^T of one layer: the bilinear form of the scores, ignoring biases and positions.

        On rotary models this is only the position-free part; `analyses.rope` gives the rotary-aware circuit.
        """
        return self.W_Q[self._layer(layer)] @ self.W_K[self._layer(layer)].transpose(-1, -2)

    def OV(self, layer: int) -> Float[Tensor, "head d_model d_model"]:
        """W_V[h] W_O[h] of one layer: what a head writes for what it reads."""
        return self.W_V[self._layer(layer)] @ self.W_O[self._layer(layer)]

    def _layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -self.n_layers <= layer < self.n_layers:
            from interp.errors import InputError

            raise InputError(f"layer={layer!r} is not a layer of this model: use 0..{self.n_layers - 1}.")
        return layer
