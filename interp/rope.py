"""NeoX rotary embeddings: `rotate_half` pairs dim i with i + r/2, on the first `rotary_dim` dims.

    >>> import torch
    >>> q = torch.randn(1, 5, 2, 32)                          # (batch, pos, head, d_head)
    >>> cos, sin = rotary_cos_sin(torch.arange(5)[None], rotary_dim=8)
    >>> q_rot = apply_rotary(q, cos, sin)                     # rotated on dims [0, 8), the rest unchanged
    >>> torch.equal(q_rot[..., 8:], q[..., 8:])
    True

Written from the definition, independently of transformers, so tests can check one against the other.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def inverse_frequencies(rotary_dim: int, base: float = 10000.0) -> Float[Tensor, " half"]:
    """theta_j = base^(-2j / r) for j < r/2: the angle per position of pair (j, j + r/2)."""
    return base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)


def rotary_cos_sin(
    positions: Int[Tensor, "*batch pos"], rotary_dim: int, base: float = 10000.0
) -> tuple[Float[Tensor, "*batch pos rot"], Float[Tensor, "*batch pos rot"]]:
    """cos and sin of each position's angles, repeated for both halves of the rotary dims."""
    angles = positions[..., None].double() * inverse_frequencies(rotary_dim, base)  # (*batch, pos, r/2)
    angles = torch.cat([angles, angles], dim=-1)  # (*batch, pos, r)
    return angles.cos(), angles.sin()


def rotate_half(x: Float[Tensor, "... rot"]) -> Float[Tensor, "... rot"]:
    """(x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "batch pos rot"],
    sin: Float[Tensor, "batch pos rot"],
) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate the first `rot` dims of every head; the rest pass through unrotated."""
    rot = cos.shape[-1]
    cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
    x_rot, x_pass = x[..., :rot].double(), x[..., rot:]
    rotated = x_rot * cos + rotate_half(x_rot) * sin
    return torch.cat([rotated.to(x.dtype), x_pass], dim=-1)


def relative_rotation(offset: int | Tensor, rotary_dim: int, base: float = 10000.0) -> Float[Tensor, "... rot rot"]:
    """The matrix R(offset) with rot(q, i) . rot(k, j) = q R(j - i) k on the rotary dims."""
    angles = torch.as_tensor(offset, dtype=torch.float64)[..., None] * inverse_frequencies(rotary_dim, base)
    cos, sin = angles.cos(), angles.sin()
    top = torch.cat([torch.diag_embed(cos), -torch.diag_embed(sin)], dim=-1)
    bottom = torch.cat([torch.diag_embed(sin), torch.diag_embed(cos)], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def band_dims(rotary_dim: int) -> Int[Tensor, "band 2"]:
    """The two dims of each frequency band: band i is the pair (i, i + r/2), rotated by theta_i.

    >>> band_dims(8).tolist()
    [[0, 4], [1, 5], [2, 6], [3, 7]]
    """
    half = rotary_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1)


def wavelengths(rotary_dim: int, base: float = 10000.0) -> Float[Tensor, " band"]:
    """Tokens per full turn of each band, 2 pi / theta_i (6.28 for band 0).

    >>> [round(w, 1) for w in wavelengths(16).tolist()][:3]      # pythia-160m: 8 bands, up to 19,869
    [6.3, 19.9, 62.8]
    """
    return 2 * torch.pi / inverse_frequencies(rotary_dim, base)


def rotate(
    x: Float[Tensor, "batch pos head d_head"], positions: Int[Tensor, "batch pos"], rotary_dim: int,
    base: float = 10000.0,
) -> Float[Tensor, "batch pos head d_head"]:
    """`x` rotated to `positions` on its first `rotary_dim` dims (what the model does to q and k).

    >>> rotate(torch.ones(1, 3, 2, 8), torch.arange(3)[None], rotary_dim=4).shape
    torch.Size([1, 3, 2, 8])
    """
    cos, sin = rotary_cos_sin(positions.cpu(), rotary_dim, base)  # angles in float64 on the CPU
    return apply_rotary(x, cos.to(x.device), sin.to(x.device))


def band_kernel(
    q: Float[Tensor, "... d_head"], k: Float[Tensor, "... d_head"], offsets: Int[Tensor, " offset"],
    rotary_dim: int, base: float = 10000.0,
) -> Float[Tensor, "... band offset"]:
    """Each band's part of rot(q, i) . rot(k, i + offset): (q1 k1 + q2 k2) cos + (q2 k1 - q1 k2) sin.

    Summed over bands it equals `q[:r] @ relative_rotation(offset, r) @ k[:r]` (r = rotary_dim).

    >>> band_kernel(torch.ones(8), torch.ones(8), torch.tensor([0, -1]), rotary_dim=8)[0].tolist()
    [2.0, 1.0806046117362795]
    """
    pairs = band_dims(rotary_dim).to(q.device)
    q1, q2 = q[..., pairs[:, 0]].double(), q[..., pairs[:, 1]].double()  # (..., band)
    k1, k2 = k[..., pairs[:, 0]].double(), k[..., pairs[:, 1]].double()
    angles = offsets.cpu().double()[None, :] * inverse_frequencies(rotary_dim, base)[:, None]  # (band, offset)
    angles = angles.to(q.device)
    cos_part = (q1 * k1 + q2 * k2)[..., None] * angles.cos()
    sin_part = (q2 * k1 - q1 * k2)[..., None] * angles.sin()
    return cos_part + sin_part
