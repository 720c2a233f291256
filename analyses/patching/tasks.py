"""Tasks: clean and corrupt prompts that align token for token, with the answer and a wrong token.

    >>> import interp
    >>> model = interp.load("toy")
    >>> task = induction(model, n_prompts=8)          # repeated random tokens (any model)
    >>> task.clean.ids.shape == task.corrupt.ids.shape
    True
    >>> custom = make(model, clean=["When Mary and John went to the store, John gave a drink to"],
    ...               corrupt=["When Alice and Bob went to the store, Carl gave a drink to"],
    ...               answer=" Mary", wrong=" John")   # doctest: +SKIP

`ioi` (ABC corruption) and `greater_than` (the "01" corruption) need a real Pythia tokenizer, where
the names and two-digit years they use are single tokens; `make` checks any pair you bring.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses.patching.errors import TaskError
from interp.tokens import Tokens

Prompts = str | Sequence[str] | Tokens | Tensor
Answers = str | int | Sequence[str] | Sequence[int] | Tensor


@dataclass(frozen=True)
class Task:
    """Aligned clean/corrupt prompts, the answer and a wrong token per prompt, and the default metric."""

    name: str
    clean: Tokens
    corrupt: Tokens
    answer: Int[Tensor, " prompt"]
    wrong: Int[Tensor, " prompt"]
    metric: str = "logit_diff"
    signs: Float[Tensor, "prompt d_vocab"] | None = None  # for prob_diff: +1 good tokens, -1 bad

    def __post_init__(self):
        _check_aligned(None, self.clean, self.corrupt)  # a Task built by hand too (make also shows the tokens)

    @property
    def n_prompts(self) -> int:
        return len(self.clean)

    @property
    def n_pos(self) -> int:
        return self.clean.ids.shape[1]

    def to(self, device) -> Task:
        return Task(self.name, self.clean.to(device), self.corrupt.to(device), self.answer.to(device),
                    self.wrong.to(device), self.metric, None if self.signs is None else self.signs.to(device))

    def describe(self) -> dict:
        """A JSON-able record: name, token ids, answers."""
        return {"name": self.name, "clean": self.clean.ids.tolist(), "corrupt": self.corrupt.ids.tolist(),
                "attention_mask": self.clean.attention_mask.tolist(), "answer": self.answer.tolist(),
                "wrong": self.wrong.tolist(), "metric": self.metric}


def make(model, clean: Prompts, corrupt: Prompts, answer: Answers, wrong: Answers, name: str = "custom",
         metric: str = "logit_diff", signs: Tensor | None = None) -> Task:
    """A task from your own pairs; refuses prompts that do not align and answers that are not one token.

    >>> import interp
    >>> make(interp.load("toy"), clean=[[5, 6, 7]], corrupt=[[5, 9, 7]], answer=[6], wrong=[9]).n_prompts
    1
    """
    clean_t, corrupt_t = _tokens(model, clean), _tokens(model, corrupt)
    _check_aligned(model, clean_t, corrupt_t)
    n = len(clean_t)
    answer_ids, wrong_ids = _answers(model, answer, n, "answer"), _answers(model, wrong, n, "wrong")
    return Task(name, clean_t, corrupt_t, answer_ids, wrong_ids, metric, signs)


def induction(model, n_prompts: int = 8, length: int = 12, repeat: int = 8, seed: int = 0,
              low: int | None = None, high: int | None = None) -> Task:
    """Repeated random tokens; the corruption changes the token before the answer's first occurrence.

    Each clean prompt is a block of `length` distinct random tokens followed by its first `repeat`
    tokens; the answer is the block's token at index `repeat` (what an induction head copies). The
    corrupt prompt replaces the block's token at `repeat - 1`, the one the last token matches, with a
    token absent from the block, so the induction heads find nothing to key on. `wrong` is another
    token absent from the prompt.

    >>> import interp
    >>> task = induction(interp.load("toy"), n_prompts=2, length=6, repeat=3)
    >>> task.n_pos, bool((task.clean.ids != task.corrupt.ids).sum(1).eq(1).all())
    (9, True)
    """
    _check_count(n_prompts)
    if not 1 <= repeat < length:
        raise TaskError(f"induction needs 1 <= repeat < length; got repeat={repeat}, length={length}.")
    low = (2 if model.d_vocab <= 4096 else 1000) if low is None else low
    high = (model.d_vocab if model.d_vocab <= 4096 else 20000) if high is None else high
    g = torch.Generator().manual_seed(seed)
    draws = torch.stack([low + torch.randperm(high - low, generator=g)[: length + 2] for _ in range(n_prompts)])
    block, fresh, wrong = draws[:, :length], draws[:, length], draws[:, length + 1]
    clean = torch.cat([block, block[:, :repeat]], dim=1)
    corrupt = clean.clone()
    corrupt[:, repeat - 1] = fresh
    return make(model, clean, corrupt, block[:, repeat], wrong, name="induction")


NAMES = ("Mary", "John", "Tom", "James", "Anna", "Paul", "Mark", "Sarah", "David", "Lisa", "Michael", "Emma",
         "Daniel", "Kate", "Alice", "Jane", "Sam", "Jack", "Peter", "Laura", "George", "Henry", "Lucy", "Grace")
IOI_TEMPLATES = (
    "When{A} and{B} went to the store,{S} gave a drink to",
    "When{A} and{B} got a snack at the cafe,{S} decided to give it to",
    "After{A} and{B} went to the park,{S} gave a ball to",
    "While{A} and{B} were working at the office,{S} gave a report to",
    "Then,{A} and{B} had a long argument, and afterwards{S} said to",
)


def ioi(model, n_prompts: int = 8, seed: int = 0) -> Task:
    """Indirect object identification with the ABC corruption (three fresh names), for real tokenizers.

    Clean: "When Mary and John went to the store, John gave a drink to" (answer " Mary", wrong
    " John"); corrupt: the same sentence with three other distinct names, so no name repeats.
    """
    _check_count(n_prompts)
    names = [n for n in NAMES if _is_single(model, " " + n)]
    if len(names) < 6:
        raise TaskError(f"IOI needs at least 6 names that are single tokens with a leading space; this tokenizer "
                        f"has {len(names)} of {NAMES}. Use a Pythia tokenizer, or make() with your own pairs.")
    rng = random.Random(seed)
    clean, corrupt, answer, wrong = [], [], [], []
    for i in range(n_prompts):
        template = IOI_TEMPLATES[i % len(IOI_TEMPLATES)]
        io, s, *others = (" " + n for n in rng.sample(names, 5))
        first, second = (io, s) if rng.random() < 0.5 else (s, io)
        clean.append(template.format(A=first, B=second, S=s))
        corrupt.append(template.format(A=others[0], B=others[1], S=others[2]))
        answer.append(io)
        wrong.append(s)
    return make(model, clean, corrupt, answer, wrong, name="ioi")


GT_NOUNS = ("war", "expedition", "drought", "siege", "reign", "strike", "journey", "campaign", "famine", "project")


def greater_than(model, n_prompts: int = 8, seed: int = 0) -> Task:
    """Greater-than: "The war lasted from the year 1732 to the year 17"; the corruption writes the year as 1701.

    The default metric is prob_diff: probability on two-digit years above YY minus on those at
    or below it. `answer` is a year above YY and `wrong` one below, for logit_diff.
    """
    _check_count(n_prompts)
    years = _year_tokens(model)
    centuries = _centuries(model, years)
    rng = random.Random(seed)
    clean, corrupt, answer, wrong = [], [], [], []
    signs = torch.zeros(n_prompts, model.d_vocab)
    for i in range(n_prompts):
        century, yy, noun = rng.choice(centuries), rng.randint(2, 97), rng.choice(GT_NOUNS)
        clean.append(f"The {noun} lasted from the year {century}{yy:02d} to the year {century}")
        corrupt.append(f"The {noun} lasted from the year {century}01 to the year {century}")
        answer.append(years[rng.randint(yy + 1, 99)])
        wrong.append(years[rng.randint(0, yy - 1)])
        signs[i, years[yy + 1:]] = 1.0
        signs[i, years[: yy + 1]] = -1.0
    return make(model, clean, corrupt, answer, wrong, name="greater_than", metric="prob_diff", signs=signs)


# ---- checks -------------------------------------------------------------------------------


def _tokens(model, x: Prompts) -> Tokens:
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (list, tuple)):
        x = torch.tensor(x)
    return model.tokens(x)


def _check_aligned(model, clean: Tokens, corrupt: Tokens) -> None:
    """Same number of prompts, and each clean prompt as many tokens as its corrupt one."""
    if len(clean) != len(corrupt):
        raise TaskError(f"{len(clean)} clean prompts but {len(corrupt)} corrupt ones: give one corrupt per clean.")
    clean_len, corrupt_len = clean.attention_mask.sum(1), corrupt.attention_mask.sum(1)
    for i in (clean_len != corrupt_len).nonzero().flatten().tolist():
        raise TaskError(
            f"Prompt {i}: the clean prompt has {clean_len[i]} tokens {_pieces(model, clean, i)} and the corrupt "
            f"one {corrupt_len[i]} {_pieces(model, corrupt, i)}. Patching needs them aligned token for token: "
            "change words for words of the same token length (e.g. one-token names)."
        )
    if clean.ids.shape != corrupt.ids.shape:  # same lengths, different padding widths
        width = max(clean.ids.shape[1], corrupt.ids.shape[1])
        raise TaskError(f"Clean and corrupt batches are padded to different widths; pad both to {width}.")


def _pieces(model, tokens: Tokens, i: int) -> list[str]:
    ids = tokens.ids[i][tokens.attention_mask[i].bool()]
    try:
        return model.to_str_tokens(ids)
    except Exception:  # no tokenizer: show ids
        return ids.tolist()


def _answers(model, answers: Answers, n: int, what: str) -> Tensor:
    """One token id per prompt from strings (each must be one token) or ids."""
    if isinstance(answers, Tensor):
        answers = answers.tolist()
    if isinstance(answers, (str, int)):
        answers = [answers] * n
    if len(answers) != n:
        raise TaskError(f"{len(answers)} {what} tokens for {n} prompts: give one per prompt, or a single one.")
    ids = [a if isinstance(a, int) else _single_token(model, a, what) for a in answers]
    bad = [i for i in ids if not 0 <= i < model.d_vocab]
    if bad:
        raise TaskError(f"{what} token id {bad[0]} is outside the vocabulary 0..{model.d_vocab - 1}.")
    return torch.tensor(ids, dtype=torch.long, device=model.device)


def _single_token(model, text: str, what: str) -> int:
    """The id of `text` if it is exactly one token, else a TaskError showing how it splits."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"] if model.tokenizer is not None else None
    if ids is None or len(ids) != 1:
        pieces = model.to_str_tokens(ids) if ids else "no tokenizer"
        raise TaskError(
            f"The {what} {text!r} is not a single token (it splits into {pieces}). Patching metrics compare "
            "one-token answers: pick a word that is one token (often with a leading space, e.g. ' Mary'), "
            "or pass token ids."
        )
    return ids[0]


def _is_single(model, text: str) -> bool:
    return model.tokenizer is not None and len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) == 1


def _centuries(model, years: list[int]) -> list[int]:
    """Centuries 11..17 whose years all split as ' XX' + 'YY' (e.g. ' 1361' is ' 136' + '1', so 13 is out)."""
    good = []
    for century in range(11, 18):
        head = model.tokenizer(f" {century}", add_special_tokens=False)["input_ids"]
        if all(model.tokenizer(f" {century}{yy:02d}", add_special_tokens=False)["input_ids"] == head + [years[yy]]
               for yy in range(100)):
            good.append(century)
    if not good:
        raise TaskError("No century 11..17 splits its years as ' XX' + 'YY' with this tokenizer: greater_than needs "
                        "a Pythia (GPT-NeoX) tokenizer.")
    return good


def _year_tokens(model) -> list[int]:
    """Ids of the two-digit continuations '00'..'99' (as in ' 17' + '32'); a TaskError if any is not one token."""
    if model.tokenizer is None:
        raise TaskError("greater_than needs a tokenizer; load the model with one.")
    ids = []
    for yy in range(100):
        pieces = model.tokenizer(f" 17{yy:02d}", add_special_tokens=False)["input_ids"]
        if len(pieces) != 2:
            raise TaskError(f"This tokenizer splits ' 17{yy:02d}' into {len(pieces)} tokens, not ' 17' + "
                            f"'{yy:02d}': greater_than needs a Pythia (GPT-NeoX) tokenizer.")
        ids.append(pieces[1])
    return ids


def _check_count(n_prompts) -> None:
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise TaskError(f"n_prompts={n_prompts!r}: a task needs at least one prompt; give a whole number >= 1.")
