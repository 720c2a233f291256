"""Head detectors: score every head for previous-token, duplicate-token, induction, sink, distance.

    >>> import interp
    >>> model = interp.load("toy")
    >>> scores = detect_heads(model)              # on repeated random tokens
    >>> scores.top("induction", k=3)
    [(1, 2), (1, 0), (1, 1)]

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
On repeated random tokens [r; r] (`repeated_random_tokens`) only the second copy has earlier
occurrences, so a perfect induction head scores about 1/2 with "mul" (as in TransformerLens),
and a perfect previous-token head (n - 1)/n. This is the one induction score of the project:
the toy suite's model card and `training.json` use it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

import interp
from analyses.attention.patterns import AttentionPatterns, patterns
from interp.cache import Provenance
from interp.errors import InputError

__all__ = [
    "DETECTORS",
    "HeadScores",
    "detect_heads",
    "detection_patterns",
    "head_scores",
    "ordinary_ids",
    "pattern_scores",
    "repeated_random_tokens",
]

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
        """One row per head: layer, head, name ("L1H3"), then one column per detector.

        >>> frame = detect_heads(interp.load("toy")).to_frame()
        >>> list(frame.columns[:4]), len(frame)
        (['layer', 'head', 'name', 'prev_token'], 6)
        """
        import pandas as pd

        n_heads = next(iter(self.scores.values())).shape[1]
        index = [(L, h) for L in self.layers for h in range(n_heads)]
        frame = pd.DataFrame(index, columns=["layer", "head"])
        frame.insert(2, "name", [f"L{L}H{h}" for L, h in index])
        for name, values in self.scores.items():
            frame[name] = values.flatten().double().numpy()
        return frame

    def top(self, detector: str, k: int = 3) -> list[tuple[int, int]]:
        """The k highest-scoring heads for a detector, as (layer, head), best first.

        >>> detect_heads(interp.load("toy")).top("prev_token", k=1)
        [(0, 1)]
        """
        values = self.scores[_check_detector(detector)]
        order = values.flatten().argsort(descending=True)[:k].tolist()
        n_heads = values.shape[1]
        return [(self.layers[i // n_heads], i % n_heads) for i in order]

    def figure(self, detector: str | Sequence[str] | None = None):
        """A layer x head heatmap of one detector, or of several (all if None) with a dropdown, the first shown.

        >>> fig = detect_heads(interp.load("toy")).figure(["induction", "prev_token"])
        >>> [b.label for b in fig.layout.updatemenus[0].buttons]
        ['induction', 'prev_token']
        """
        from analyses.attention import figures

        if detector is None:
            names = DETECTORS
        else:
            names = tuple(_check_detector(d) for d in ([detector] if isinstance(detector, str) else detector))
            if not names:
                raise InputError(f"detector={detector!r} names no detector: pass one of {', '.join(DETECTORS)}.")
        values = {n: self.scores[n] for n in names}
        return figures.score_heatmap(values, self.layers, self._subtitle(), self.error_measure)

    def _subtitle(self) -> str:
        prov = self.provenance
        rev = f"@{prov.revision}" if prov.revision else ""
        flags = (("exclude_first", self.exclude_first), ("exclude_current", self.exclude_current))
        return f"{prov.model}{rev} · {self.error_measure}" + "".join(f" · {o}" for o, on in flags if on)


def head_scores(
    pats: AttentionPatterns,
    *,
    exclude_first: bool = False,
    exclude_current: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> HeadScores:
    """Every detector on every head held, averaged over the batch (formulas: module docstring).

    >>> model = interp.load("toy")
    >>> scores = head_scores(patterns(model, "a = b. a = b."), exclude_first=True)
    >>> scores.scores["induction"].shape
    torch.Size([2, 3])
    """
    _check_error_measure(error_measure)
    rows = []
    for b in range(len(pats.str_tokens)):
        pattern, ids = pats.row(b)
        rows.append(pattern_scores(pattern[:, None], torch.tensor([ids]), exclude_first=exclude_first,
                                   exclude_current=exclude_current, error_measure=error_measure))
    scores = {name: torch.stack([r[name] for r in rows]).mean(0) for name in DETECTORS}
    return HeadScores(scores, pats.layers, exclude_first, exclude_current, error_measure, pats.provenance)


def detect_heads(
    model: interp.Model,
    x: str | Sequence[str] | interp.Tokens | Tensor | None = None,
    *,
    seq_len: int = 50,
    batch: int = 4,
    seed: int = 0,
    exclude_first: bool = False,
    exclude_current: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> HeadScores:
    """Score every head on `x`, or on `repeated_random_tokens(model, seq_len, batch, seed)` when None.

    >>> model = interp.load("toy")
    >>> best = float(detect_heads(model).scores["induction"].max())
    >>> 0.3 < best < 0.55                      # a perfect head: about 0.5
    True
    >>> detect_heads(model, "The cat sat. The cat", exclude_current=True).top("prev_token", 1)
    [(0, 1)]

    `seq_len` shrinks to half the model's context when it would not fit.
    """
    _check_error_measure(error_measure)
    if x is None:
        x = repeated_random_tokens(model, min(seq_len, model.n_ctx // 2), batch, seed)
    return head_scores(patterns(model, x), exclude_first=exclude_first, exclude_current=exclude_current,
                       error_measure=error_measure)


def pattern_scores(
    pattern: Float[Tensor, "layer batch head q_pos k_pos"],
    ids: Int[Tensor, "batch pos"],
    *,
    exclude_first: bool = False,
    exclude_current: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> dict[str, Float[Tensor, "layer head"]]:
    """Every detector's score per head from raw patterns of unpadded rows, averaged over the batch.

    >>> ids = torch.tensor([[5, 6, 7, 5, 6, 7]])
    >>> perfect = torch.zeros(1, 1, 1, 6, 6)               # (layer, batch, head, q_pos, k_pos)
    >>> perfect[..., 0, 0] = 1
    >>> perfect[..., torch.arange(1, 6), torch.arange(0, 5)] = 1     # always the previous token
    >>> pattern_scores(perfect, ids)["prev_token"]
    tensor([[0.8333]])

    Works on any attention weights, e.g. `output_attentions` of a plain Hugging Face model.
    """
    _check_error_measure(error_measure)
    if pattern.ndim != 5 or ids.ndim != 2 or pattern.shape[1] != ids.shape[0] or pattern.shape[-1] != ids.shape[1]:
        raise InputError(f"pattern {tuple(pattern.shape)} and ids {tuple(ids.shape)} do not fit: pass "
                         "(layer, batch, head, pos, pos) weights and (batch, pos) token ids.")
    n = ids.shape[1]
    keep = _keep(n, exclude_first, exclude_current)
    out: dict[str, list[Tensor]] = {name: [] for name in DETECTORS}
    for b in range(ids.shape[0]):
        pat = pattern[:, b].float()  # (layer, head, q_pos, k_pos)
        for name, D in detection_patterns(ids[b].cpu()).items():
            kept = _keep(n, False, exclude_current) if name == "first_token" else keep
            if error_measure == "abs" and name in TL_DETECTORS:
                out[name].append(1 - _weighted_sum((pat - D).abs(), kept) / n)
            else:
                out[name].append(_weighted_sum(pat, kept * D) / _weighted_sum(pat, kept))
    return {name: torch.stack(values).mean(0) for name, values in out.items()}


def detection_patterns(ids: Int[Tensor, " pos"]) -> dict[str, Float[Tensor, "q_pos k_pos"]]:
    """The 0/1 patterns D of the TransformerLens detectors, plus first_token's and the distances.

    >>> detection_patterns(torch.tensor([3, 4, 3, 4]))["induction"]
    tensor([[0., 0., 0., 0.],
            [0., 0., 0., 0.],
            [0., 1., 0., 0.],
            [0., 0., 1., 0.]])
    """
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


def repeated_random_tokens(
    source: interp.Model | Int[Tensor, " ids"], seq_len: int = 50, batch: int = 4, seed: int = 0
) -> Int[Tensor, "batch pos"]:
    """`batch` rows of `seq_len` random ordinary tokens, each row written twice: (batch, 2 * seq_len).

    >>> model = interp.load("toy")
    >>> ids = repeated_random_tokens(model, seq_len=20, batch=2)
    >>> ids.shape, torch.equal(ids[:, :20], ids[:, 20:])
    (torch.Size([2, 40]), True)

    `source` is a model (tokens its tokenizer knows, minus special ones: see `ordinary_ids`) or
    a 1-D tensor of the ids to draw from. Draws are uniform and seeded by `seed` alone.
    """
    if batch < 1:
        raise InputError(f"batch={batch} must be at least 1 row.")
    if isinstance(source, Tensor):
        pool = source.flatten().long()
        n_ctx = None
    else:
        pool, n_ctx = ordinary_ids(source.tokenizer, source.d_vocab), source.n_ctx
    limit = n_ctx // 2 if n_ctx else None
    if seq_len < 2 or (limit is not None and seq_len > limit):
        fits = f"the context of {n_ctx} positions" if n_ctx else "a row"
        raise InputError(f"seq_len={seq_len} must be in 2..{limit or 'any'}: the repeated rows "
                         f"(2 x seq_len tokens) must fit {fits}. Pass a smaller seq_len.")
    if len(pool) == 0:
        raise InputError("No token ids to draw from: pass a non-empty 1-D tensor of ids.")
    generator = torch.Generator().manual_seed(seed)
    half = pool[torch.randint(len(pool), (batch, seq_len), generator=generator)]  # (batch, seq_len)
    return torch.cat([half, half], dim=1)  # (batch, pos)


def ordinary_ids(tokenizer, d_vocab: int) -> Int[Tensor, " ids"]:
    """Ids below `d_vocab` the tokenizer knows, minus special tokens (all of d_vocab without one).

    >>> ordinary_ids(interp.load("toy").tokenizer, 1024)[:3]   # 0 and 1 are special
    tensor([2, 3, 4])
    """
    if tokenizer is None:
        return torch.arange(d_vocab)
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    return torch.tensor([i for i in range(min(d_vocab, len(tokenizer))) if i not in special])


def _weighted_sum(
    pattern: Float[Tensor, "layer head q_pos k_pos"], weights: Float[Tensor, "q_pos k_pos"]
) -> Float[Tensor, "layer head"]:
    """sum_qk pattern[l, h, q, k] * weights[q, k], as one matrix-vector product."""
    return pattern.flatten(-2) @ weights.flatten().to(pattern.device)  # (layer, head, q*k) @ (q*k,)


def _keep(n: int, exclude_first: bool, exclude_current: bool) -> Float[Tensor, "q_pos k_pos"]:
    """1 where a (query, key) cell counts, 0 where an exclusion drops it."""
    keep = torch.ones(n, n)
    if exclude_first:
        keep[:, 0] = 0
    if exclude_current:
        keep.fill_diagonal_(0)
    return keep


def _check_detector(name: str) -> str:
    if name not in DETECTORS:
        raise InputError(f"Unknown detector {name!r}; choose one of {', '.join(DETECTORS)}.")
    return name


def _check_error_measure(error_measure: str) -> None:
    if error_measure not in ("mul", "abs"):
        raise InputError(f"error_measure={error_measure!r} is not one of 'mul', 'abs'.")
