"""The offset effect: least-squares fit of every causal score as f(Delta) + g(query), and the share it explains.

    >>> fit = OffsetFit.from_lengths([5, 3], n=5)
    >>> fit.count.tolist()                             # causal pairs at Delta = -4..0
    [1, 2, 4, 6, 8]

Softmax ignores g(query), so what position alone does to a head is f, the offset effect. With
T~ the scores centred within each query row, the fit solves the normal equations A f = b, where
b[Delta] = sum of T~ at that offset and A = sum over query rows of the row-centring projection
on that row's offsets (it depends only on the prompts' lengths, so it is factored once for every
layer and head). f(0) = 0 fixes the constant that g absorbs. The positional index is the share of
within-query variance the fit explains, f . b / sum T~^2: exactly 1 for a head whose scores
depend on the offset alone, about (offsets / causal pairs) for a head with no positional
structure (1% for 200 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class OffsetFit:
    """The factored normal equations of the offset fit for a set of prompt lengths."""

    count: Int[Tensor, " offset"]  # causal pairs at each Delta = -(n-1)..0
    free: Int[Tensor, " free"]  # offsets solved for: those with pairs, Delta = 0 excluded
    factor: Float[Tensor, "free free"] | None  # Cholesky factor of A restricted to `free`

    @classmethod
    def from_lengths(cls, lengths: list[int], n: int) -> OffsetFit:
        """Normal matrix for prompts of these real lengths, padded to n positions."""
        lengths_t = torch.tensor(lengths)
        m = torch.arange(1, n + 1)
        rows = (lengths_t[None, :] >= m[:, None]).sum(1).double()  # query rows with exactly m keys
        suffix = lambda x: x.flip(0).cumsum(0).flip(0)  # noqa: E731 - suffix[k-1] = sum over m >= k
        count = suffix(rows)  # count[k-1]: rows with >= k keys = pairs at |Delta| = k - 1
        weight = suffix(rows / m)
        index = torch.arange(n)  # offset index j <-> Delta = j - (n - 1), |Delta| + 1 = n - j
        count_j = count[n - 1 - index]
        nearest = torch.minimum(index[:, None], index[None, :])  # the smaller |Delta| bounds both
        A = torch.diag(count_j) - weight[n - 1 - nearest]
        free = torch.nonzero((count_j > 0) & (index < n - 1))[:, 0]
        factor = torch.linalg.cholesky(A[free][:, free]) if len(free) else None
        return cls(count_j.round().long(), free, factor)

    def solve(self, sums: Float[Tensor, "... offset"], var: Float[Tensor, "..."]) -> tuple[Tensor, Tensor]:
        """(offset effect with f(0) = 0 and NaN where no pair, explained share) for each row of `sums`."""
        effect = torch.zeros_like(sums)
        effect[..., self.count == 0] = float("nan")
        if self.factor is None:
            return effect, torch.zeros_like(var)
        b = sums[..., self.free]
        f = torch.cholesky_solve(b.reshape(-1, b.shape[-1]).T, self.factor).T.reshape(b.shape)
        effect[..., self.free] = f
        return effect, (f * b).sum(-1) / var.clamp(min=1e-300)
