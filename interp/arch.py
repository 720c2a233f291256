"""One table per architecture: where each part lives in the HF model and how its weights are laid out.

    >>> from interp.arch import NEOX, GPT2
    >>> NEOX.path("qkv", 3), GPT2.path("qkv", 3)
    ('gpt_neox.layers.3.attention.query_key_value', 'transformer.h.3.attn.c_attn')
    >>> NEOX.qkv_layout, GPT2.qkv_layout
    ('per_head', 'blocked')

Nothing else in the library spells an HF module path or a weight layout: sites, hooks, weights,
the attention tap and `stop_at_layer` all read an `Architecture`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.errors import UnsupportedModelError


@dataclass(frozen=True)
class Architecture:
    """Module paths by role (`{L}` is the layer), the fused qkv layout and the residual form."""

    kind: str  # "neox" | "gpt2"
    hf_class: str
    model_type: str
    paths: dict[str, str]
    qkv_layout: str  # "per_head": per head [q | k | v];  "blocked": [all q | all k | all v]
    conv1d: bool  # weights stored (in, out) as in GPT-2's Conv1D, instead of nn.Linear's (out, in)
    positional: str  # "rotary" | "learned"
    softmax_in_fp32: bool  # HF eager: NeoX takes softmax in fp32, GPT-2 in the scores' dtype
    rotary_fn: str | None = None  # "module:function" of the rotary the attention module applies
    aliases: tuple[tuple[str, str], ...] = ()  # further HF paths accepted for a site

    def apply_rotary(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """The model's own rotary function, the very code its attention runs."""
        import importlib

        module, name = self.rotary_fn.split(":")
        return getattr(importlib.import_module(module), name)(q, k, cos, sin)

    def path(self, role: str, layer: int | None = None) -> str:
        """The HF module path of a role, e.g. `path("ln1", 2)`."""
        template = self.paths[role]
        return template if layer is None else template.replace("{L}", str(layer))

    def has(self, role: str) -> bool:
        return role in self.paths

    def module(self, hf: nn.Module, role: str, layer: int | None = None) -> nn.Module:
        """The module itself."""
        return hf.get_submodule(self.path(role, layer))

    def layers(self, hf: nn.Module) -> nn.ModuleList:
        return hf.get_submodule(self.paths["layers"])

    def parallel_residual(self, config) -> bool:
        return bool(getattr(config, "use_parallel_residual", False))

    def in_out(self, linear: nn.Module) -> Float[Tensor, "d_in d_out"]:
        """A projection's weight oriented (in, out), whatever the storage."""
        return linear.weight if self.conv1d else linear.weight.T

    def split_qkv(self, fused: Tensor, n_heads: int, which: int) -> Tensor:
        """q (0), k (1) or v (2) per head from a fused last axis: (..., 3 d_model) -> (..., head, d_head)."""
        if self.qkv_layout == "per_head":
            return fused.view(*fused.shape[:-1], n_heads, 3, -1)[..., which, :]  # (..., head, 3, d_head)
        return fused.view(*fused.shape[:-1], 3, n_heads, -1)[..., which, :, :]  # (..., 3, head, d_head)

    def merge_qkv(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The inverse of `split_qkv`: three (..., head, d_head) -> (..., 3 d_model) in this layout."""
        stacked = torch.stack([q, k, v], dim=-2 if self.qkv_layout == "per_head" else -3)
        return stacked.flatten(-3)


NEOX = Architecture(
    kind="neox",
    hf_class="GPTNeoXForCausalLM",
    model_type="gpt_neox",
    paths={
        "embed": "gpt_neox.embed_in",
        "rotary": "gpt_neox.rotary_emb",
        "layers": "gpt_neox.layers",
        "layer": "gpt_neox.layers.{L}",
        "ln1": "gpt_neox.layers.{L}.input_layernorm",
        "attn": "gpt_neox.layers.{L}.attention",
        "qkv": "gpt_neox.layers.{L}.attention.query_key_value",
        "out": "gpt_neox.layers.{L}.attention.dense",
        "ln2": "gpt_neox.layers.{L}.post_attention_layernorm",
        "mlp": "gpt_neox.layers.{L}.mlp",
        "fc_in": "gpt_neox.layers.{L}.mlp.dense_h_to_4h",
        "act": "gpt_neox.layers.{L}.mlp.act",
        "fc_out": "gpt_neox.layers.{L}.mlp.dense_4h_to_h",
        "ln_final": "gpt_neox.final_layer_norm",
        "unembed": "lm_head",
    },
    qkv_layout="per_head",
    conv1d=False,
    positional="rotary",
    softmax_in_fp32=True,
    rotary_fn="transformers.models.gpt_neox.modeling_gpt_neox:apply_rotary_pos_emb",
    aliases=(("embed_out", "hook_logits"),),  # the unembedding's name in Pythia's checkpoints
)

GPT2 = Architecture(
    kind="gpt2",
    hf_class="GPT2LMHeadModel",
    model_type="gpt2",
    paths={
        "embed": "transformer.wte",
        "pos_embed": "transformer.wpe",
        "layers": "transformer.h",
        "layer": "transformer.h.{L}",
        "ln1": "transformer.h.{L}.ln_1",
        "attn": "transformer.h.{L}.attn",
        "qkv": "transformer.h.{L}.attn.c_attn",
        "out": "transformer.h.{L}.attn.c_proj",
        "ln2": "transformer.h.{L}.ln_2",
        "mlp": "transformer.h.{L}.mlp",
        "fc_in": "transformer.h.{L}.mlp.c_fc",
        "act": "transformer.h.{L}.mlp.act",
        "fc_out": "transformer.h.{L}.mlp.c_proj",
        "ln_final": "transformer.ln_f",
        "unembed": "lm_head",
    },
    qkv_layout="blocked",
    conv1d=True,
    positional="learned",
    softmax_in_fp32=False,
)

ARCHITECTURES: dict[str, Architecture] = {a.hf_class: a for a in (NEOX, GPT2)}
MODEL_TYPES: dict[str, Architecture] = {a.model_type: a for a in (NEOX, GPT2)}


def of(hf: nn.Module) -> Architecture:
    """The architecture of an HF model; an `UnsupportedModelError` naming the supported classes otherwise."""
    arch = ARCHITECTURES.get(type(hf).__name__)
    if arch is None:
        raise UnsupportedModelError(
            f"{type(hf).__name__} is not supported: pythia-interp hooks {' and '.join(ARCHITECTURES)} "
            "(Pythia, GPT-NeoX-20B, GPT-2 and other `model_type: gpt_neox` or `gpt2` checkpoints). "
            "Load a causal-LM head model, e.g. transformers.GPTNeoXForCausalLM.from_pretrained(...)."
        )
    if arch.kind == "gpt2" and getattr(hf.config, "add_cross_attention", False):
        raise UnsupportedModelError("GPT-2 with cross-attention is not supported: use a decoder-only GPT-2.")
    return arch
