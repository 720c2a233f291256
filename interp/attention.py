"""An attention function registered with transformers' AttentionInterface that fires our inner sites.

    >>> with attention_taps(hf_model, {0: {"pattern": [lambda p: print(p.shape)]}}):
    ...     hf_model(input_ids)   # layer 0 computes eager attention and fires the hook
    torch.Size([1, 4, 5, 5])

Only layers with hooks take this path; the others call the model's own implementation (sdpa),
so nothing that was not asked for costs anything. Inside, the arithmetic is HF's eager attention
step for step (scores in fp32), so read-only hooks leave the outputs bitwise unchanged in fp32.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

NAME = "pythia_interp"
INSIDE = ("rot_q", "rot_k", "attn_scores", "pattern")

# A hook here takes the tensor and returns a replacement or None.
InnerHook = Callable[[Tensor], Tensor | None]


@dataclass
class _Tap:
    """Per attention module: the implementation to fall back to and the hooks to fire."""

    fallback: str
    hooks: dict[str, list[InnerHook]] = field(default_factory=dict)
    users: int = 0


_TAPS: weakref.WeakKeyDictionary[nn.Module, _Tap] = weakref.WeakKeyDictionary()


def tapped_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF eager attention that fires rot_q, rot_k, attn_scores and pattern hooks; else the fallback."""
    tap = _TAPS.get(module)
    if tap is None or not any(tap.hooks.values()):
        fallback = _interface(tap.fallback if tap else "sdpa")
        return fallback(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    # query, key, value: (batch, head, pos, d_head), rotary already applied by the module
    query = _fire(tap, "rot_q", query, transpose=True)
    key = _fire(tap, "rot_k", key, transpose=True)
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling  # (batch, head, q_pos, k_pos)
    if attention_mask is not None:
        scores = scores + attention_mask
    scores = _fire(tap, "attn_scores", scores)
    pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    pattern = _fire(tap, "pattern", pattern)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()  # (batch, q_pos, head, d_head)
    return out, pattern


def _fire(tap: _Tap, kind: str, x: Tensor, transpose: bool = False) -> Tensor:
    """Run the hooks of one inner site; q/k are shown as (batch, pos, head, d_head) like TL."""
    for hook in tap.hooks.get(kind, ()):
        shown = x.transpose(1, 2) if transpose else x
        new = hook(shown)
        if new is not None:
            x = new.transpose(1, 2) if transpose else new
    return x


def _interface(name: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.gpt_neox.modeling_gpt_neox import eager_attention_forward

    return eager_attention_forward if name == "eager" else ALL_ATTENTION_FUNCTIONS[name]


def _register() -> None:
    """Register the function and its (eager, additive) mask with transformers, once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, tapped_attention)
        AttentionMaskInterface.register(NAME, eager_mask)


@contextmanager
def attention_taps(hf_model: nn.Module, hooks: dict[int, dict[str, list[InnerHook]]]):
    """Route attention through `tapped_attention` and attach inner hooks per layer; undo on exit."""
    _register()
    config = hf_model.config
    previous = config._attn_implementation
    modules = [layer.attention for layer in hf_model.gpt_neox.layers]
    attached: list[tuple[_Tap, str, InnerHook]] = []
    try:
        for layer, attention in enumerate(modules):
            tap = _TAPS.setdefault(attention, _Tap(fallback=previous))
            tap.users += 1
            for kind, fns in hooks.get(layer, {}).items():
                for fn in fns:
                    tap.hooks.setdefault(kind, []).append(fn)
                    attached.append((tap, kind, fn))
        config._attn_implementation = NAME
        yield
    finally:
        for tap, kind, fn in attached:
            tap.hooks[kind].remove(fn)
        for attention in modules:
            tap = _TAPS.get(attention)
            if tap is not None:
                tap.users -= 1
                if tap.users <= 0:
                    del _TAPS[attention]
        config._attn_implementation = previous


def active_taps(hf_model: nn.Module) -> int:
    """How many attention modules of this model are tapped now (0 outside any context)."""
    return sum(layer.attention in _TAPS for layer in hf_model.gpt_neox.layers)
