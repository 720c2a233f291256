"""The attention tap: HF's eager attention, step for step in the model's dtype, with hook points inside.

    >>> import interp
    >>> model = interp.load("toy")
    >>> _, cache = model.run_with_cache("Hello, I am", names=["blocks.0.attn.hook_pattern"])
    >>> cache["pattern", 0].shape                      # (batch, head, q_pos, k_pos)
    torch.Size([1, 3, 7, 7])

A tapped layer's `query_key_value` output, its rotary cos/sin and its mask are captured as the
real module runs; just before the output projection, `eager_z` recomputes attention from them
exactly as HF's eager function does (firing rot_q, rot_k, attn_scores and pattern on the way)
and its z replaces the module's own. So a tapped layer *is* HF eager, bit for bit, in fp32, bf16
and fp16; untapped layers keep their own implementation and mask. No attention implementation
is switched and no config is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.arch import Architecture
from interp.errors import InputError

# fire(kind, tensor) -> tensor: runs the hooks of one inner site ("rot_q", "rot_k", "attn_scores", "pattern")
Fire = Callable[[str, Tensor], Tensor]


@dataclass
class Captured:
    """What the real attention module was given, read by hooks as it ran."""

    fused: Tensor | None = None  # the final query_key_value output (after any q/k/v hooks)
    mask: Tensor | None = None  # the mask the model built for its own implementation
    position_embeddings: tuple[Tensor, Tensor] | None = None  # rotary (cos, sin), NeoX only


def capture_kwargs(captured: Captured, kwargs: dict) -> None:
    """Keep the attention module's mask and rotary embeddings; refuse a filled KV cache."""
    cache = kwargs.get("layer_past", kwargs.get("past_key_values"))
    if cache is not None and cache.get_seq_length() > 0:
        raise InputError(
            "Attention internals (rot_q, rot_k, attn_scores, pattern) cannot be tapped while decoding with a KV "
            "cache: call the model with use_cache=False (Model.generate does this for you inside hooks())."
        )
    captured.mask = kwargs.get("attention_mask")
    captured.position_embeddings = kwargs.get("position_embeddings")


def eager_z(
    arch: Architecture, module: nn.Module, captured: Captured, n_heads: int, fire: Fire, fp32_scores: bool = False
) -> Float[Tensor, "batch pos d_model"]:
    """HF eager attention from the captured pieces, firing the inner hooks; returns z for the output projection."""
    q, k, v = (arch.split_qkv(captured.fused, n_heads, i).transpose(1, 2) for i in range(3))  # (batch, head, pos, d)
    if arch.positional == "rotary":
        q, k = _rotate(arch, q, k, captured.position_embeddings)
        q = fire("rot_q", q.transpose(1, 2)).transpose(1, 2)
        k = fire("rot_k", k.transpose(1, 2)).transpose(1, 2)
    if getattr(module, "reorder_and_upcast_attn", False):
        fp32_scores = True  # GPT-2's optional upcast path takes the scores in fp32
    qs, ks = (q.float(), k.float()) if fp32_scores else (q, k)
    scores = torch.matmul(qs, ks.transpose(-1, -2)) * module.scaling  # (batch, head, q_pos, k_pos)
    mask = additive_mask(captured.mask, scores)
    if mask is not None:
        scores = scores + mask
    scores = fire("attn_scores", scores)
    if arch.softmax_in_fp32:
        pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    else:
        pattern = nn.functional.softmax(scores, dim=-1).type(v.dtype)
    pattern = fire("pattern", pattern)
    pattern = nn.functional.dropout(pattern, p=_dropout(arch, module), training=module.training)
    z = torch.matmul(pattern, v).transpose(1, 2).contiguous()  # (batch, pos, head, d_head)
    return z.reshape(*z.shape[:2], -1)


def additive_mask(mask: Tensor | None, scores: Tensor) -> Tensor | None:
    """The float mask HF's eager attention adds: the model's own (eager), or its boolean one as 0 / min."""
    if mask is not None and mask.dtype != torch.bool:
        return mask.to(scores.dtype) if mask.dtype != scores.dtype else mask
    if mask is None:  # the causal mask was left implicit (no padding): build it
        q_len, k_len = scores.shape[-2:]
        rows = torch.arange(q_len, device=scores.device)[:, None] + (k_len - q_len)
        mask = (torch.arange(k_len, device=scores.device)[None, :] <= rows)[None, None]  # (1, 1, q_pos, k_pos)
    zero = torch.zeros((), device=scores.device, dtype=scores.dtype)
    return torch.where(mask, zero, torch.finfo(scores.dtype).min)


def _rotate(arch: Architecture, q: Tensor, k: Tensor, position_embeddings) -> tuple[Tensor, Tensor]:
    """Apply the model's own rotary function (the very code its attention ran)."""
    cos, sin = position_embeddings
    return arch.apply_rotary(q, k, cos, sin)


def _dropout(arch: Architecture, module: nn.Module) -> float:
    if not module.training:
        return 0.0
    return module.attention_dropout if arch.kind == "neox" else module.attn_dropout.p
