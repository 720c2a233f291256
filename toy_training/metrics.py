"""Measurements recorded at every checkpoint: text losses, repeat losses and head scores.

Head scores are the project's one definition (`analyses.attention.detectors`, TransformerLens's):
on repeated random tokens a perfect induction head scores about 0.5, a perfect previous-token
head (n - 1)/n.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from analyses.attention.detectors import pattern_scores, repeated_random_tokens
from toy_training.data import N_SPECIAL


def windows(stream: Tensor, seq_len: int, n: int | None = None) -> Tensor:
    """Consecutive non-overlapping windows from the start of a stream: (batch, pos)."""
    count = len(stream) // seq_len if n is None else min(n, len(stream) // seq_len)
    return stream[: count * seq_len].view(count, seq_len)


def token_losses(model, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy at each position: (batch, pos - 1)."""
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float()  # (batch, pos, d_vocab)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


def text_loss(model, tokens: Tensor, chunk: int = 32) -> float:
    """Mean next-token loss over windows of text, in chunks to bound memory."""
    losses = [token_losses(model, tokens[i : i + chunk]) for i in range(0, len(tokens), chunk)]
    return float(torch.cat(losses).mean())


def repeated_random(n_seqs: int, half: int, vocab: int, seed: int) -> Tensor:
    """Random non-special tokens, each sequence its own block written twice: (batch, 2 * half)."""
    return repeated_random_tokens(torch.arange(N_SPECIAL, vocab), seq_len=half, batch=n_seqs, seed=seed)


def repeat_losses(model, tokens: Tensor) -> tuple[float, float]:
    """Mean loss predicting tokens of the first repeat and of the second: (first, second)."""
    half = tokens.shape[1] // 2
    loss = token_losses(model, tokens)  # loss[:, i] predicts token i + 1
    return float(loss[:, : half - 1].mean()), float(loss[:, half - 1 :].mean())


def patterns(model, tokens: Tensor) -> Tensor:
    """Attention patterns of every layer (eager attention): (layer, batch, head, q_pos, k_pos)."""
    with torch.no_grad():
        out = model(input_ids=tokens, output_attentions=True)
    return torch.stack([a.float() for a in out.attentions])


def head_scores(model, tokens: Tensor) -> dict[str, list[list[float]]]:
    """Induction and previous-token scores of each head on repeated random tokens: [layer][head]."""
    scores = pattern_scores(patterns(model, tokens), tokens)
    return {"induction": _rounded(scores["induction"]), "previous_token": _rounded(scores["prev_token"])}


def _rounded(scores: Tensor) -> list[list[float]]:
    """(layer, head) tensor as nested lists of floats with 4 decimals."""
    return [[round(float(s), 4) for s in row] for row in scores]
