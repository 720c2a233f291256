"""The RoPE-aware QK circuit W_Q R(Delta) W_K^T, biases and bands apart, beside the plain W_Q W_K^T.

    >>> import interp
    >>> model = interp.load("toy")
    >>> circ = qk_circuit(model)
    >>> circ.to_frame().query("name == 'L0H1' and part == 'band0'").shape    # a row per offset
    (17, 12)
    >>> qk_matrix(model, 0, 1, offset=-1).shape                        # (d_model + 1, d_model + 1)
    torch.Size([97, 97])

With x_t, x_s the inputs of q and k (the ln1 output; the weights act on it as `model.W_Q` does)
and Delta = key_pos - query_pos, a head's score times sqrt(d_head) is

    (x_t W_Q + b_Q) R(Delta) (x_s W_K + b_K)^T
      = x_t W_Q R W_K^T x_s^T + x_t W_Q R b_K^T + b_Q R W_K^T x_s^T + b_Q R b_K^T

and every term splits over parts (pass-through dims, where R is the identity, and each band).
TransformerLens reports W_Q W_K^T, which is the circuit at Delta = 0 only. Per head, part and
offset this gives the Frobenius norm of the q.k term, the norms of the two bias-cross vectors, and
the bias-bias scalar; `difference` is ||W_Q (R(Delta) - I) W_K^T|| / ||W_Q W_K^T||, how far the
plain product is from the real circuit at that offset. Norms come from d_head x d_head Gram
matrices: ||W_Q M W_K^T||^2 = tr(M^T W_Q^T W_Q M W_K^T W_K).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses.rope.common import TERMS, Geometry, check_layers, geometry, head_label, part_names, require_rotary
from interp import rope
from interp.errors import InputError
from interp.model import Model


@dataclass(frozen=True)
class QKCircuit:
    """Norms of the rotary QK circuit per head, part, bias term and offset, with the plain product's."""

    offsets: Int[Tensor, " offset"]
    terms: Float[Tensor, "layer head part term offset"]  # norms (q.k, q.b_K, b_Q.k) and the b_Q.b_K scalar
    total: Float[Tensor, "layer head offset"]  # ||W_Q R(Delta) W_K^T||_F
    plain: Float[Tensor, "layer head"]  # ||W_Q W_K^T||_F, the TransformerLens circuit
    difference: Float[Tensor, "layer head offset"]  # ||W_Q (R(Delta) - I) W_K^T||_F / plain
    layers: tuple[int, ...]
    geometry: Geometry
    model: str

    def to_frame(self):
        """One row per head, part and offset: the four terms, and the head's total, plain and difference."""
        import pandas as pd

        names = part_names(self.geometry.n_bands)
        rows = []
        for i, L in enumerate(self.layers):
            for h in range(self.plain.shape[1]):
                for p, part in enumerate(names):
                    for o, offset in enumerate(self.offsets.tolist()):
                        rows.append({
                            "layer": L, "head": h, "name": head_label(L, h), "part": part, "offset": offset,
                            **{t: self.terms[i, h, p, j, o].item() for j, t in enumerate(TERMS)},
                            "total": self.total[i, h, o].item(), "plain": self.plain[i, h].item(),
                            "difference": self.difference[i, h, o].item(),
                        })
        return pd.DataFrame(rows)

    def figure(self, layer: int = 0, head: int = 0):
        """One head's q.k norm per band against the offset, the total, and the plain product."""
        from analyses.rope import figures

        if layer not in self.layers or not 0 <= head < self.plain.shape[1]:
            raise InputError(f"No head L{layer}H{head} here: layers {list(self.layers)}, heads "
                             f"0..{self.plain.shape[1] - 1}.")
        return figures.circuit_lines(self, layer, head)


def default_offsets(n_ctx: int) -> Int[Tensor, " offset"]:
    """0, -1, -2, -3, -4, -6, -8, -11, -16, ... (about two per octave) down to -(n_ctx - 1)."""
    steps = {0, 1, 2, 3} | {round(2 ** (k / 2)) for k in range(4, 64) if 2 ** (k / 2) < n_ctx}
    return -torch.tensor(sorted(steps | {n_ctx - 1}))


def qk_circuit(model: Model, *, offsets: Sequence[int] | None = None, layers: Sequence[int] | None = None) -> QKCircuit:
    """Norms of every head's rotary QK circuit at each offset (default: `default_offsets`).

    >>> import interp
    >>> model = interp.load("toy")
    >>> qk_circuit(model, offsets=[0, -1]).total.shape
    torch.Size([2, 3, 2])
    """
    geo = geometry(model)
    require_rotary(geo, "qk_circuit")
    layers = check_layers(layers, model.n_layers)
    offsets = default_offsets(geo.n_ctx) if offsets is None else torch.as_tensor(list(offsets), dtype=torch.long)
    W_Q, W_K = model.W_Q[layers].double().cpu(), model.W_K[layers].double().cpu()  # (layer, head, d_model, d_head)
    b_Q, b_K = model.b_Q[layers].double().cpu(), model.b_K[layers].double().cpu()
    G_Q, G_K = W_Q.mT @ W_Q, W_K.mT @ W_K  # (layer, head, d_head, d_head)
    M = rotation(geo, offsets)  # (offset, d_head, d_head)
    total = _frobenius(G_Q, M, G_K)
    plain = _frobenius(G_Q, torch.eye(geo.d_head, dtype=M.dtype)[None], G_K)[..., 0]
    difference = _frobenius(G_Q, M - torch.eye(geo.d_head, dtype=M.dtype), G_K) / plain[..., None]
    parts = [_part_terms(G_Q, G_K, W_Q, W_K, b_Q, b_K, M * mask) for mask in _part_masks(geo)]
    terms = torch.stack(parts, dim=2)  # (layer, head, part, term, offset)
    return QKCircuit(offsets, terms.float(), total.float(), plain.float(), difference.float(), tuple(layers), geo,
                     model.name)


def qk_matrix(model: Model, layer: int, head: int, offset: int, part: str | None = None) -> Float[Tensor, "m m"]:
    """[[W_Q R W_K^T, W_Q R b_K^T], [b_Q R W_K^T, b_Q R b_K^T]] of one head at one offset (optionally one part).

    Acting on [x_t, 1] and [x_s, 1] it gives the score times sqrt(d_head) at that offset.

    >>> import interp
    >>> model = interp.load("toy")
    >>> qk_matrix(model, 0, 1, offset=0, part="pass").shape
    torch.Size([97, 97])
    """
    geo = geometry(model)
    require_rotary(geo, "qk_matrix")
    M = rotation(geo, torch.tensor([offset]))[0]
    if part is not None:
        names = part_names(geo.n_bands)
        if part not in names:
            raise InputError(f"Unknown part {part!r}; choose from {names}, or None for all.")
        M = M * _part_masks(geo)[names.index(part)]
    w_q = torch.cat([model.W_Q[layer, head], model.b_Q[layer, head][None]]).double().cpu()  # (d_model + 1, d_head)
    w_k = torch.cat([model.W_K[layer, head], model.b_K[layer, head][None]]).double().cpu()
    return w_q @ M @ w_k.T


def rotation(geo: Geometry, offsets: Tensor) -> Float[Tensor, "offset d_head d_head"]:
    """R(Delta) on the whole head: the rotary block on dims < rotary_dim, the identity on pass-through dims."""
    M = torch.eye(geo.d_head, dtype=torch.float64).repeat(len(offsets), 1, 1)
    M[:, :geo.rotary_dim, :geo.rotary_dim] = rope.relative_rotation(offsets, geo.rotary_dim, geo.base)
    return M


def _part_masks(geo: Geometry) -> list[Tensor]:
    """(d_head, d_head) 0/1 masks selecting each part's block of R."""
    part = geo.part_of_dim()
    return [((part[:, None] == p) & (part[None, :] == p)).double() for p in range(1 + geo.n_bands)]


def _frobenius(G_Q: Tensor, M: Tensor, G_K: Tensor) -> Tensor:
    """||W_Q M W_K^T||_F per (layer, head, offset) from the Gram matrices."""
    out = []
    for g_q, g_k in zip(G_Q, G_K, strict=True):  # one layer at a time: (head, d_head, d_head)
        inner = M.mT[None] @ g_q[:, None] @ M[None]  # (head, offset, d_head, d_head): M^T G_Q M
        out.append((inner * g_k.mT[:, None]).sum((-1, -2)))
    return torch.stack(out).clamp(min=0).sqrt()


def _part_terms(G_Q, G_K, W_Q, W_K, b_Q, b_K, M) -> Tensor:
    """The four terms of one part: (layer, head, term, offset)."""
    qk = _frobenius(G_Q, M, G_K)
    q_bk = torch.einsum("lhmd,ode,lhe->lhom", W_Q, M, b_K).norm(dim=-1)  # ||W_Q M b_K^T||
    bq_k = torch.einsum("lhd,ode,lhme->lhom", b_Q, M, W_K).norm(dim=-1)  # ||b_Q M W_K^T||
    bq_bk = torch.einsum("lhd,ode,lhe->lho", b_Q, M, b_K)
    return torch.stack([qk, q_bk, bq_k, bq_bk], dim=2)
