"""Positional kernels of learned absolute positions (GPT-2): the position embeddings through W_Q and W_K.

    >>> import interp, transformers
    >>> config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=128, n_positions=64)
    >>> gpt2 = interp.Model(transformers.GPT2LMHeadModel(config).eval())
    >>> kernel, bias = learned_kernels(gpt2, layers=[0, 1], scales=torch.tensor([0.177, 0.177]))
    >>> kernel.shape                      # (layer, head, offset): Delta = -63..0
    torch.Size([2, 2, 64])

For layer L, with P_t the position embedding of position t and LN that layer's ln1 applied to the
position embeddings alone (the token embedding left out, so this is the content-free part):

    q_t = LN(P_t) W_Q + b_Q,   k_s = LN(P_s) W_K + b_K,   K(t, s) = scale * q_t . k_s
    K(Delta) = mean over query positions t of K(t, t + Delta),   Delta = s - t = -(n_ctx - 1)..0

Unlike rotary scores, K(t, t + Delta) also depends on t (positions are absolute); the mean over t
is what is comparable with a rotary model's kernel. The bias kernel uses q = b_Q alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.rope.decomposition import _diagonal_sums
from interp.model import Model


def learned_kernels(
    model: Model, layers: Sequence[int], scales: Float[Tensor, " layer"]
) -> tuple[Float[Tensor, "layer head offset"], Float[Tensor, "layer head offset"]]:
    """(kernel, bias kernel) of every head of `layers`, at offsets -(n_ctx - 1)..0."""
    P = model.W_pos  # (n_ctx, d_model)
    n = P.shape[0]
    count = torch.arange(1, n + 1, dtype=torch.float64, device=P.device)  # pairs at Delta = -(n-1)..0: n - |Delta|
    kernels, biases = [], []
    with torch.no_grad():
        for L, scale in zip(layers, scales.tolist(), strict=True):
            x = model.module(f"blocks.{L}.ln1.hook_out")(P).double()  # (n_ctx, d_model)
            q = torch.einsum("tm,hmd->thd", x, model.W_Q[L].double()) + model.b_Q[L].double()
            k = torch.einsum("tm,hmd->thd", x, model.W_K[L].double()) + model.b_K[L].double()
            scores = torch.einsum("thd,shd->hts", q, k).tril() * scale  # (head, q_pos, k_pos), causal
            kernels.append(_diagonal_sums(scores, 0, n) / count)
            by_key = torch.einsum("hd,shd->hs", model.b_Q[L].double(), k) * scale  # b_Q . k_s: no t
            biases.append(by_key.cumsum(-1) / count)  # index j <-> Delta = j - (n-1): mean over s <= j
    return torch.stack(kernels).cpu(), torch.stack(biases).cpu()
