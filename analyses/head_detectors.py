"""Head detectors: score every head for previous-token, duplicate-token, induction, sink, distance.

    >>> scores = head_scores(patterns(model, repeated_tokens(model)))
    >>> scores.top("induction"), scores.to_frame()

For one head with pattern A (q_pos x k_pos, rows sum to 1) over n real tokens:

    A'[q, k] = A[q, k] * keep[q, k]     keep = 0 on column 0 if exclude_first, on q == k if
                                        exclude_current, 1 elsewhere
    mul score  S = sum_qk A'[q, k] D[q, k] / sum_qk A'[q, k]       (share of kept attention on D)
    abs score  S = 1 - sum_qk |A[q, k] - D[q, k]| keep[q, k] / n

with the detection patterns D (1 where the head "should" attend, else 0), as in TransformerLens
(`transformer_lens.head_detector.detect_head` gives the same scores on the same patterns, except
that it rounds "abs" scores to 3 decimals):

    prev_token       D[q, k] = [k == q - 1]
    duplicate_token  D[q, k] = [k < q and tok[k] == tok[q]]
    induction        D[q, k] = [1 <= k <= q and tok[k - 1] == tok[q]]  (after an earlier copy)

and two more that are always weighted means over the kept attention (error_measure aside):

    first_token      sum_q A'[q, 0] / sum_qk A'[q, k]   (the share on position 0, the "sink";
                     exclude_first never applies to it, since it would make it 0)
    mean_distance    sum_qk A'[q, k] (q - k) / sum_qk A'[q, k]   (in tokens)

For a batch, each row is scored on its own real (unpadded) tokens and the rows are averaged.
On repeated random tokens [r; r] only the second copy has earlier occurrences, so a perfect
induction head scores about 1/2 with "mul" (as in TransformerLens), not 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.cache import Provenance
from interp.errors import InputError
from interp.model import Model, Tokens

if TYPE_CHECKING:
    from analyses.attention_maps import AttentionPatterns

DETECTORS = ("prev_token", "duplicate_token", "induction", "first_token", "mean_distance")
TL_DETECTORS = ("prev_token", "duplicate_token", "induction")  # the ones error_measure applies to
ErrorMeasure = Literal["mul", "abs"]


@dataclass(frozen=True)
class HeadScores:
    """Detector scores per head: `scores[name]` is (layer, head) for each name in DETECTORS."""

    scores: dict[str, Float[Tensor, "layer head"]]
    layers: tuple[int, ...]
    exclude_first: bool
    exclude_current: bool
    error_measure: ErrorMeasure
    provenance: Provenance

    def to_frame(self):
        """One row per head: layer, head, name ("L1H3"), then one column per detector."""
        import pandas as pd

        n_heads = next(iter(self.scores.values())).shape[1]
        index = [(L, h) for L in self.layers for h in range(n_heads)]
        frame = pd.DataFrame(index, columns=["layer", "head"])
        frame.insert(2, "name", [f"L{L}H{h}" for L, h in index])
        for name, values in self.scores.items():
            frame[name] = values.flatten().double().numpy()
        return frame

    def top(self, detector: str, k: int = 3) -> list[tuple[int, int]]:
        """The k highest-scoring heads for a detector, as (layer, head), best first."""
        values = self.scores[_check_detector(detector)]
        order = values.flatten().argsort(descending=True)[:k].tolist()
        n_heads = values.shape[1]
        return [(self.layers[i // n_heads], i % n_heads) for i in order]

    def figure(self, detector: str | None = None):
        """A layer x head heatmap of one detector, or of all with a dropdown if `detector` is None.

        >>> detect_heads(model).figure("induction")
        """
        from analyses import attention_figures as af

        names = DETECTORS if detector is None else (_check_detector(detector),)
        return af.score_heatmap({n: self.scores[n] for n in names}, self.layers, self._subtitle(), self.error_measure)

    def _subtitle(self) -> str:
        prov = self.provenance
        rev = f"@{prov.revision}" if prov.revision else ""
        opts = [
            o
            for o, on in (
                ("exclude_first", self.exclude_first),
                ("exclude_current", self.exclude_current),
            )
            if on
        ]
        return f"{prov.model}{rev} · {self.error_measure}" + "".join(f" · {o}" for o in opts)


def head_scores(
    pats: AttentionPatterns,
    *,
    exclude_first: bool = False,
    exclude_current: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> HeadScores:
    """Every detector on every head held, averaged over the batch (formulas: module docstring).

    >>> head_scores(patterns(model, tokens), exclude_first=True).to_frame()
    """
    if error_measure not in ("mul", "abs"):
        raise InputError(f"error_measure={error_measure!r} is not one of 'mul', 'abs'.")
    rows = []
    for b in range(len(pats.str_tokens)):
        pattern, ids = pats.row(b)
        rows.append(_score_row(pattern.float(), torch.tensor(ids), exclude_first, exclude_current, error_measure))
    scores = {name: torch.stack([r[name] for r in rows]).mean(0) for name in DETECTORS}
    return HeadScores(scores, pats.layers, exclude_first, exclude_current, error_measure, pats.provenance)


def detection_patterns(ids: Int[Tensor, " pos"]) -> dict[str, Float[Tensor, "q_pos k_pos"]]:
    """The 0/1 patterns D of the TransformerLens detectors, plus first_token's and the distances."""
    n = len(ids)
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]  # (q_pos, 1), (1, k_pos)
    same = ids[:, None] == ids[None, :]  # (q_pos, k_pos)
    after_copy = torch.zeros(n, n, dtype=torch.bool)
    after_copy[:, 1:] = same[:, :-1]  # tok[k - 1] == tok[q]
    return {
        "prev_token": (k == q - 1).float(),
        "duplicate_token": (same & (k < q)).float(),
        "induction": (after_copy & (k >= 1) & (k <= q)).float(),
        "first_token": (k == 0).expand(n, n).float(),
        "mean_distance": (q - k).clamp(min=0).float(),
    }


def _score_row(
    pattern: Float[Tensor, "layer head q_pos k_pos"],
    ids: Int[Tensor, " pos"],
    exclude_first: bool,
    exclude_current: bool,
    error_measure: ErrorMeasure,
) -> dict[str, Float[Tensor, "layer head"]]:
    """Scores of one prompt's real tokens."""
    n = len(ids)
    keep = _keep(n, exclude_first, exclude_current)
    out = {}
    for name, D in detection_patterns(ids).items():
        kept = _keep(n, False, exclude_current) if name == "first_token" else keep
        if error_measure == "abs" and name in TL_DETECTORS:
            out[name] = 1 - _weighted_sum((pattern - D).abs(), kept) / n
        else:
            out[name] = _weighted_sum(pattern, kept * D) / _weighted_sum(pattern, kept)
    return out


def _weighted_sum(
    pattern: Float[Tensor, "layer head q_pos k_pos"], weights: Float[Tensor, "q_pos k_pos"]
) -> Float[Tensor, "layer head"]:
    """sum_qk pattern[l, h, q, k] * weights[q, k], as one matrix-vector product."""
    return pattern.flatten(-2) @ weights.flatten()  # (layer, head, q*k) @ (q*k,)


def _keep(n: int, exclude_first: bool, exclude_current: bool) -> Float[Tensor, "q_pos k_pos"]:
    """1 where a (query, key) cell counts, 0 where an exclusion drops it."""
    keep = torch.ones(n, n)
    if exclude_first:
        keep[:, 0] = 0
    if exclude_current:
        keep.fill_diagonal_(0)
    return keep


def repeated_tokens(model: Model, seq_len: int = 50, batch: int = 4, seed: int = 0) -> Tokens:
    """`batch` rows of `seq_len` random tokens, each row repeated twice (ordinary tokens only).

    >>> repeated_tokens(model, seq_len=50).ids.shape
    torch.Size([4, 100])
    """
    n_ctx = model.hf.config.max_position_embeddings
    if seq_len < 2 or 2 * seq_len > n_ctx:
        raise InputError(
            f"seq_len={seq_len} must be in 2..{n_ctx // 2}: the repeated rows (2 x seq_len) "
            f"must fit the context of {n_ctx} positions."
        )
    pool = _ordinary_ids(model)
    generator = torch.Generator().manual_seed(seed)
    half = pool[torch.randint(len(pool), (batch, seq_len), generator=generator)]  # (batch, seq_len)
    ids = torch.cat([half, half], dim=1)  # (batch, pos)
    return Tokens(ids, torch.ones_like(ids))


def _check_detector(name: str) -> str:
    if name not in DETECTORS:
        raise InputError(f"Unknown detector {name!r}; choose one of {', '.join(DETECTORS)}.")
    return name


def _ordinary_ids(model: Model) -> Tensor:
    """Token ids the tokenizer knows, minus special tokens (all of d_vocab without a tokenizer)."""
    tok = model.tokenizer
    if tok is None:
        return torch.arange(model.d_vocab)
    special = set(tok.all_special_ids)
    special |= {i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if t.special}
    return torch.tensor([i for i in range(min(model.d_vocab, len(tok))) if i not in special])
