"""Every attention score split exactly into a pass-through part and one part per rotary band, bias terms apart.

    >>> import interp
    >>> model = interp.load("toy")
    >>> dec = decompose(model, "for i in range(10):\\n    print(i)\\n")
    >>> dec.rotary_share.shape                     # (layer, head)
    torch.Size([2, 3])
    >>> frame = dec.to_frame()                     # a row per head and part (pass, band0, ...)

For a head, query token t and key token s at positions p_t, p_s, with q = q_c + b_Q and
k = k_c + b_K before rotation (content and bias), the score the softmax sees is

    score(t, s) = R(p_t) q_t . R(p_s) k_s / sqrt(d_head)
                = sum over parts P (pass-through dims; band i = dims i and i + r/2) of
                  sum over terms (q_c.k_c, q_c.b_K, b_Q.k_c, b_Q.b_K) of that dot product on P's dims.

The parts are exact (they sum to the model's scores to float rounding). Softmax ignores anything
that is constant along a query's row, so shares are of the *within-query* variance over causal
pairs of real (unpadded) tokens: with T~ the score minus its row mean over the row's keys,

    share(part, term) = sum_{t,s} part_term(t, s) T~(t, s) / sum_{t,s} T~(t, s)^2

These add up to 1 over all parts and terms (a term can be negative when it works against the
rest). rotary_share sums the bands, pass_share is the pass-through part. Query-only terms (the
pass-through q_c.b_K, and b_Q.b_K) have share 0 exactly. The positional index is the share of
the same variance explained by the offset alone: the least-squares fit score ~ f(Delta) + g(query)
with Delta = key_pos - query_pos (`analyses.rope.offsets`); f is the data kernel. Work is chunked
over heads and query positions, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analyses.rope.common import TERMS, Geometry, check_layers, geometry, head_label, part_names, score_scale
from analyses.rope.offsets import OffsetFit
from interp import rope
from interp.cache import Provenance
from interp.model import Model, Tokens

CHUNK_ELEMENTS = 2**21  # elements of one (batch, head, query, key) block: 8 MiB in fp32


@dataclass(frozen=True)
class ScoreDecomposition:
    """Per head: variance shares by part and bias term, band energies, mean q/k, data kernel, attention stats."""

    variance_share: Float[Tensor, "layer head part term"]
    q_energy: Float[Tensor, "layer head part"]  # mean squared norm of q on the part's dims (bias included)
    k_energy: Float[Tensor, "layer head part"]
    q_mean: Float[Tensor, "layer head d_head"]  # mean q and k over real tokens, before rotation, bias included
    k_mean: Float[Tensor, "layer head d_head"]
    b_Q: Float[Tensor, "layer head d_head"]
    b_K: Float[Tensor, "layer head d_head"]
    data_kernel: Float[Tensor, "layer head offset"]  # offset effect f(Delta), Delta = -(n-1)..0 (NaN: no pair)
    offset_count: Int[Tensor, " offset"]  # causal pairs at each Delta
    positional_index: Float[Tensor, "layer head"]
    prev_attention: Float[Tensor, "layer head"]  # mean attention from each token to the one before
    sink_attention: Float[Tensor, "layer head"]  # mean attention to each prompt's first token (queries after it)
    scale: Float[Tensor, " layer"]  # the factor on q . k in each layer (1/sqrt(d_head))
    layers: tuple[int, ...]
    geometry: Geometry
    provenance: Provenance

    @property
    def part_names(self) -> list[str]:
        return part_names(self.geometry.n_bands)

    @property
    def part_share(self) -> Float[Tensor, "layer head part"]:
        return self.variance_share.sum(-1)

    @property
    def rotary_share(self) -> Float[Tensor, "layer head"]:
        """Share of within-query score variance from the rotary bands (all four bias terms)."""
        return self.part_share[..., 1:].sum(-1)

    @property
    def pass_share(self) -> Float[Tensor, "layer head"]:
        return self.part_share[..., 0]

    @property
    def energy(self) -> Float[Tensor, "layer head part"]:
        """sqrt(q_energy * k_energy): the typical size of a part's q . k before scaling."""
        return (self.q_energy * self.k_energy).sqrt()

    @property
    def offsets(self) -> Int[Tensor, " offset"]:
        n = self.offset_count.shape[0]
        return torch.arange(-(n - 1), 1)

    def to_frame(self):
        """One row per head and part: shares (total and per bias term), energies, frequency, wavelength."""
        import numpy as np
        import pandas as pd

        n_layers, n_heads, n_parts = self.q_energy.shape
        names = self.part_names
        freq = [0.0, *self.geometry.frequencies().tolist()]
        wave = [float("inf"), *self.geometry.wavelengths().tolist()]
        energy = self.energy
        energy_share = energy / energy.sum(-1, keepdim=True).clamp(min=1e-30)
        rows = []
        for i, L in enumerate(self.layers):
            for h in range(n_heads):
                for p in range(n_parts):
                    terms = {f"share {t}": self.variance_share[i, h, p, j].item() for j, t in enumerate(TERMS)}
                    rows.append({
                        "layer": L, "head": h, "name": head_label(L, h), "part": names[p],
                        "band": p - 1 if p else pd.NA, "frequency": freq[p], "wavelength": wave[p],
                        "variance_share": self.part_share[i, h, p].item(), **terms,
                        "q_energy": self.q_energy[i, h, p].item(), "k_energy": self.k_energy[i, h, p].item(),
                        "energy": energy[i, h, p].item(), "energy_share": energy_share[i, h, p].item(),
                    })
        frame = pd.DataFrame(rows)
        frame["band"] = frame["band"].astype("Int64")
        frame["wavelength"] = frame["wavelength"].replace(np.inf, np.nan)
        return frame

    def figure(self, value: str = "energy_share"):
        """A head x band heatmap of `energy_share` or `variance_share` (rows: heads; columns: pass, bands)."""
        from analyses.rope import figures

        return figures.band_heatmap(self, value)


def decompose(
    model: Model, x, *, layers: Sequence[int] | None = None, chunk_elements: int = CHUNK_ELEMENTS
) -> ScoreDecomposition:
    """Run the model once (caching q and k) and decompose every head's scores on `x`.

    >>> import interp
    >>> model = interp.load("toy")
    >>> decompose(model, "x = 1").pass_share.shape
    torch.Size([2, 3])
    """
    geo = geometry(model)
    layers = check_layers(layers, model.n_layers)
    tokens = model.tokens(x)
    names = [f"blocks.{L}.attn.hook_{s}" for L in layers for s in "qk"]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=names)
        b_Q, b_K = model.b_Q, model.b_K
        scales = [score_scale(model, L) for L in layers]
        stats = [layer_stats(cache["q", L], cache["k", L], b_Q[L], b_K[L], tokens, geo, scale, chunk_elements)
                 for L, scale in zip(layers, scales, strict=True)]
    fields = {k: torch.stack([s[k] for s in stats]) for k in stats[0]}
    fields["scale"] = torch.tensor(scales, dtype=torch.float64)
    fit = OffsetFit.from_lengths(tokens.lengths, tokens.ids.shape[1])
    fields["data_kernel"], fields["positional_index"] = fit.solve(fields.pop("offset_sums"), fields.pop("variance"))
    return ScoreDecomposition(**fields, offset_count=fit.count, layers=tuple(layers), geometry=geo,
                              provenance=cache.provenance)


def rotated_parts(
    q: Float[Tensor, "batch pos head d_head"], k: Float[Tensor, "batch pos head d_head"],
    b_q: Float[Tensor, "head d_head"], b_k: Float[Tensor, "head d_head"],
    positions: Int[Tensor, "batch pos"], geo: Geometry, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Content and bias of q and k, rotated to their positions, as (batch, head, pos, d_head) fp32; q times `scale`."""
    q, k = q.float(), k.float()
    b_q, b_k = b_q.float().expand_as(q), b_k.float().expand_as(k)
    parts = [q - b_q, b_q, k - b_k, b_k]
    if geo.rotary_dim:
        parts = [rope.rotate(p, positions, geo.rotary_dim, geo.base) for p in parts]
    qc, qb, kc, kb = (p.transpose(1, 2) for p in parts)  # (batch, head, pos, d_head)
    return qc * scale, qb * scale, kc, kb


def causal_mask(attention_mask: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch q_pos k_pos"]:
    """True where a real query may attend to a real key (key at or before the query)."""
    real = attention_mask.bool()
    n = real.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=real.device).tril()
    return causal & real[:, :, None] & real[:, None, :]


def layer_stats(q, k, b_q, b_k, tokens: Tokens, geo: Geometry, scale: float,
                chunk_elements: int = CHUNK_ELEMENTS) -> dict:
    """Accumulate one layer's statistics chunk by chunk (heads x query positions)."""
    batch, n, n_heads, d_head = q.shape
    qc, qb, kc, kb = rotated_parts(q, k, b_q, b_k, tokens.position_ids, geo, scale)
    layer = _LayerTensors(qc, qb, kc, kb, tokens.attention_mask)
    mask = causal_mask(tokens.attention_mask)
    acc = _Accumulator(n_heads, d_head, n, q.device, tokens.attention_mask)
    head_step = max(1, min(n_heads, chunk_elements // (batch * n * 32)))
    for h0 in range(0, n_heads, head_step):
        heads = slice(h0, h0 + head_step)
        width = min(head_step, n_heads - h0)
        row_step = max(1, min(n, chunk_elements // (batch * width * n)))
        for t0 in range(0, n, row_step):
            acc.add_(layer, heads, t0, min(n, t0 + row_step), mask)
    return {**acc.finish(geo), **_token_stats(q, k, b_q, b_k, tokens.attention_mask, geo)}


def _token_stats(q, k, b_q, b_k, attention_mask, geo: Geometry) -> dict:
    """Energies per part and mean q/k over real tokens (before rotation; rotation keeps each band's norm)."""
    real = attention_mask.bool()
    q, k = q[real].double(), k[real].double()  # (token, head, d_head)
    part = geo.part_of_dim().to(q.device)
    n_parts = 1 + geo.n_bands

    def energy(x):
        return torch.zeros(x.shape[1], n_parts, dtype=x.dtype, device=x.device).index_add_(
            1, part, (x * x).mean(0))

    return {"q_energy": energy(q).cpu(), "k_energy": energy(k).cpu(), "q_mean": q.mean(0).cpu(),
            "k_mean": k.mean(0).cpu(), "b_Q": b_q.detach().double().cpu(), "b_K": b_k.detach().double().cpu()}


class _LayerTensors:
    """One layer's rotated parts, their sums, and each query's mean score over its keys (without n^2 work)."""

    def __init__(self, qc, qb, kc, kb, attention_mask):
        self.qc, self.qb = qc, qb
        self.q, self.k = qc + qb, kc + kb  # (batch, head, pos, d_head)
        self.k_parts = torch.cat([kc, kb], dim=-1)  # (batch, head, pos, 2 d_head)
        real = attention_mask[:, None, :, None].to(torch.float64)  # (batch, 1, pos, 1)
        k_sum = (self.k.double() * real).cumsum(2)  # sum of k over real keys up to each query
        count = real.cumsum(2).clamp(min=1)
        self.row_mean = ((self.q.double() * k_sum).sum(-1, keepdim=True) / count).float()  # (batch, head, pos, 1)


class _Accumulator:
    """Running sums over chunks of one layer, in float64."""

    def __init__(self, n_heads: int, d_head: int, n: int, device, attention_mask):
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.cov = zeros(n_heads, 2, 2, d_head)  # (head, q term, k term, dim): sum T~ * q_term[d] k_term[d]
        self.var = zeros(n_heads)
        self.diag = zeros(n_heads, n)  # sum of T~ at each Delta = -(n-1)..0
        self.prev, self.prev_n = zeros(n_heads), zeros(())
        self.sink, self.sink_n = zeros(n_heads), zeros(())
        self.attention_mask = attention_mask
        self.first = attention_mask.shape[1] - attention_mask.sum(-1)  # (batch,) each prompt's first real token
        self.padded = not bool(attention_mask.all())

    def add_(self, layer: _LayerTensors, heads: slice, t0: int, t1: int, mask) -> None:
        """Add query rows t0..t1-1 of some heads; their keys are 0..t1-1."""
        n = self.diag.shape[1]
        # without padding only keys t0.. can be masked: touch just that block
        lo = 0 if self.padded else t0
        hidden = ~mask[:, None, t0:t1, lo:t1]  # (batch, 1, row, key)
        scores = layer.q[:, heads, t0:t1] @ layer.k[:, heads, :t1].transpose(-1, -2)  # (batch, head, row, key)
        pad = n - 1 - t0
        padded = scores.new_empty(*scores.shape[:-1], pad + t1)  # T~ behind n-1-t0 zeros, for the offset sums
        padded[..., :pad] = 0
        centred = padded[..., pad:]
        torch.sub(scores, layer.row_mean[:, heads, t0:t1], out=centred)
        centred[..., lo:].masked_fill_(hidden, 0.0)
        self.var[heads] += torch.linalg.vector_norm(centred, dim=-1).double().square().sum((0, 2))
        mk = (centred @ layer.k_parts[:, heads, :t1]).unflatten(-1, (2, -1))  # (batch, head, row, k term, d)
        for i, q_part in enumerate((layer.qc, layer.qb)):
            self.cov[heads, i] += (q_part[:, heads, t0:t1, None, :] * mk).sum((0, 2)).double()
        self.diag[heads] += _skewed(padded, n).sum((0, 2)).double()
        scores[..., lo:].masked_fill_(hidden, float("-inf"))
        self._attention_(heads, t0, scores.softmax(-1), mask[:, t0:t1, :t1])

    def _attention_(self, heads: slice, t0: int, pattern, mask) -> None:
        """Attention to the previous token and to each prompt's first token (NaN rows of padding are skipped)."""
        rows = torch.arange(t0, t0 + pattern.shape[2], device=pattern.device)
        i, before = torch.arange(len(rows), device=rows.device), (rows - 1).clamp(min=0)
        prev_ok = mask[:, i, before] & (rows >= 1)  # (batch, row)
        prev = torch.where(prev_ok[:, None], pattern[:, :, i, before], 0.0)
        self.prev[heads] += prev.sum((0, 2)).double()
        first = self.first.to(rows.device)
        sink_ok = (rows[None] > first[:, None]) & self.attention_mask[:, t0:t0 + len(rows)].bool()
        index = first.clamp(max=pattern.shape[-1] - 1)[:, None, None, None].expand(*pattern.shape[:3], 1)
        sink = torch.where(sink_ok[:, None], pattern.gather(-1, index)[..., 0], 0.0)
        self.sink[heads] += sink.sum((0, 2)).double()
        if heads.start == 0:  # the same for every head: count once per row chunk
            self.prev_n += prev_ok.sum()
            self.sink_n += sink_ok.sum()

    def finish(self, geo: Geometry) -> dict:
        """Shares per (part, term), sums of T~ per offset, the variance and mean attention stats."""
        n_parts = 1 + geo.n_bands
        part = geo.part_of_dim().to(self.cov.device)
        cov = torch.zeros(*self.cov.shape[:3], n_parts, dtype=torch.float64, device=self.cov.device)
        cov.index_add_(-1, part, self.cov)  # (head, q term, k term, part)
        var = self.var.clamp(min=1e-300)
        share = (cov / var[:, None, None, None]).flatten(1, 2).transpose(1, 2)  # (head, part, term)
        return {
            "variance_share": share.cpu(), "offset_sums": self.diag.cpu(), "variance": self.var.cpu(),
            "prev_attention": (self.prev / self.prev_n.clamp(min=1)).cpu(),
            "sink_attention": (self.sink / self.sink_n.clamp(min=1)).cpu(),
        }


def _skewed(padded: Float[Tensor, "... row width"], n: int) -> Float[Tensor, "... row offset"]:
    """A view whose column c holds each row's entry at offset Delta = c - (n-1) (zero where there is none).

    Row i is query t0 + i, left-padded by n-1-t0 zeros before keys 0..t0+rows-1; reading with a row
    stride one longer than the row skews every diagonal into a column.
    """
    rows, width = padded.shape[-2:]
    return padded.as_strided((*padded.shape[:-2], rows, n), (*padded.stride()[:-2], width + 1, 1))


def _diagonal_sums(x: Float[Tensor, "... row key"], t0: int, n: int) -> Float[Tensor, "... offset"]:
    """Sum of x[i, s] over rows i at each offset Delta = s - (t0 + i), for Delta = -(n-1)..0 (keys 0..t0+rows-1)."""
    return _skewed(F.pad(x, (n - 1 - t0, 0)).contiguous(), n).sum(-2)
