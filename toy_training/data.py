"""Training batches: text windows, some with a repeated random-token span, and repeated random tokens.

Repeats come at varied distances and span lengths, so that copying can only be learned as
induction (attend to the token after an earlier occurrence of the current token), never as a
fixed positional offset. Rows that open with a short repeating random block ("lead") give the
first-layer previous-token head a strong early signal: while attention is still spread evenly,
it is spread over few tokens only at the start of a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

N_SPECIAL = 2  # ids 0 and 1 are special; random tokens are drawn from [N_SPECIAL, vocab)


@dataclass(frozen=True)
class Mix:
    """Share of each kind of training sequence, and the range of repeat sizes."""

    text: float = 0.5  # plain text windows
    span: float = 0.2  # text with a random span written twice at a random distance
    lead: float = 0.2  # a short repeating random block, then text
    # the rest: random tokens repeating with a random period over the whole row
    span_len: tuple[int, int] = (3, 24)
    lead_len: tuple[int, int] = (24, 64)
    period: tuple[int, int] = (4, 64)  # log-uniform, capped at half the block's length


# The first phase: short rows, mostly short repeating random blocks, a strong signal for induction.
SHORT_MIX = Mix(text=0.3, span=0.0, lead=0.0, period=(6, 20))
# The rest of training: full-length rows, mostly text, repeats at every distance.
LONG_MIX = Mix()


def tokenize_docs(tokenizer, docs: list[str]) -> Tensor:
    """One long 1-D stream of token ids: each document followed by <|endoftext|>."""
    ids: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(docs):
        ids += encoding.ids + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """One integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def text_window(stream: Tensor, seq_len: int, g: torch.Generator) -> Tensor:
    """A random window of seq_len tokens from the stream."""
    start = _randint(g, 0, len(stream) - seq_len)
    return stream[start : start + seq_len].clone()


def write_repeated_span_(seq: Tensor, vocab: int, mix: Mix, g: torch.Generator) -> Tensor:
    """Write one random span into seq twice, at a random distance (in place; returns seq)."""
    seq_len = len(seq)
    length = _randint(g, *mix.span_len)
    distance = _randint(g, length, seq_len - length)
    first = _randint(g, 0, seq_len - length - distance)
    span = torch.randint(N_SPECIAL, vocab, (length,), generator=g)
    seq[first : first + length] = span
    seq[first + distance : first + distance + length] = span
    return seq


def _log_uniform(g: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high], log-uniformly: short lengths as often as long ones, per octave."""
    u = float(torch.rand((), generator=g))
    return min(high, int(low * (high + 1 - 1e-9) ** u / low ** u))


def periodic_random(seq_len: int, vocab: int, mix: Mix, g: torch.Generator) -> Tensor:
    """Random tokens: a random-length random prefix, then one random block repeated."""
    period = _log_uniform(g, mix.period[0], min(mix.period[1], seq_len // 2))
    prefix = _randint(g, 0, period - 1)
    block = torch.randint(N_SPECIAL, vocab, (period,), generator=g)
    reps = (seq_len - prefix) // period + 1
    head = torch.randint(N_SPECIAL, vocab, (prefix,), generator=g)
    return torch.cat([head, block.repeat(reps)])[:seq_len]


def batch(stream: Tensor, step: int, seed: int, size: int, seq_len: int, vocab: int, mix: Mix):
    """The batch for one optimiser step, a pure function of (seed, step): (batch, pos) ids."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rows = []
    for _ in range(size):
        kind = float(torch.rand((), generator=g))
        if kind < mix.text:
            rows.append(text_window(stream, seq_len, g))
        elif kind < mix.text + mix.span:
            rows.append(write_repeated_span_(text_window(stream, seq_len, g), vocab, mix, g))
        elif kind < mix.text + mix.span + mix.lead:
            lead = periodic_random(_randint(g, *mix.lead_len), vocab, mix, g)
            rows.append(torch.cat([lead, text_window(stream, seq_len - len(lead), g)]))
        else:
            rows.append(periodic_random(seq_len, vocab, mix, g))
    return torch.stack(rows)  # (batch, pos)
