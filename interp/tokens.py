"""Tokens: left-padded batches with the rotary positions Pythia expects, and the text <-> ids helpers.

    >>> import interp
    >>> model = interp.load("toy")
    >>> batch = model.to_tokens(["The cat sat", "The"])
    >>> batch.attention_mask.tolist(), batch.position_ids.tolist()
    ([[1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], [[0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])

No BOS is prepended unless asked, as Pythia was trained; a padded prompt's activations equal
those of the prompt alone because its positions start at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from interp.errors import InputError
from interp.text import render_token

Prompt = str | Sequence[str]


@dataclass(frozen=True)
class Tokens:
    """A left-padded batch: ids, the mask of real tokens, and the rotary positions that follow."""

    ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]

    @property
    def position_ids(self) -> Int[Tensor, "batch pos"]:
        """Real tokens count from 0 whatever the padding; pads sit at 0."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def padded(self) -> bool:
        return not bool(self.attention_mask.all())

    @property
    def lengths(self) -> list[int]:
        return self.attention_mask.sum(-1).tolist()

    def __len__(self) -> int:
        return self.ids.shape[0]

    def to(self, device: str | torch.device) -> Tokens:
        return Tokens(self.ids.to(device), self.attention_mask.to(device))

    def hf_inputs(self) -> dict[str, Tensor]:
        """Keyword arguments for the HF forward; masks and positions only when padded."""
        if not self.padded:
            return {"input_ids": self.ids}
        return {"input_ids": self.ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


class Tokenizing:
    """Mixed into `Model`: text to Tokens and back, validated against the model's vocabulary and context."""

    tokenizer: object
    d_vocab: int
    n_ctx: int
    hf: torch.nn.Module

    def to_tokens(self, text: Prompt, prepend_bos: bool = False) -> Tokens:
        """Tokenize one prompt or a batch (left-padded); no BOS unless asked, as Pythia was trained."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not isinstance(t, str) or not t for t in texts):
            raise InputError(f"Empty or non-text prompt in {texts!r}: give one or more non-empty strings.")
        tok = self._require_tokenizer()
        rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        if prepend_bos:
            rows = [[self._bos_id()] + r for r in rows]
        return self._pad(rows)

    def to_single_token(self, text: str) -> int:
        """The id of a string that is exactly one token, e.g. `" cat"`; an InputError naming the pieces otherwise."""
        ids = self._require_tokenizer()(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [render_token(p) for p in self.tokenizer.convert_ids_to_tokens(ids)]
            raise InputError(f"{text!r} is {len(ids)} tokens {pieces}, not one. Pick a string that is a single token "
                             "(often with a leading space, e.g. ' Mary').")
        return ids[0]

    def to_str_tokens(self, tokens: str | Tokens | Tensor | Sequence[int]) -> list[str] | list[list[str]]:
        """Readable token strings (`Ġthe` -> ' the', `Ċ` -> '\\n'); one list per prompt for a batch."""
        if isinstance(tokens, str):
            return self.to_str_tokens(self.to_tokens(tokens).ids[0])
        ids = tokens.ids if isinstance(tokens, Tokens) else torch.as_tensor(tokens)
        if ids.ndim == 2:
            return [self.to_str_tokens(row) for row in ids]
        pieces = self._require_tokenizer().convert_ids_to_tokens(ids.tolist())
        return [render_token(p) for p in pieces]

    def to_string(self, tokens: Tokens | Tensor | Sequence[int]) -> str | list[str]:
        """Decode ids back to text, skipping padding."""
        if isinstance(tokens, Tokens):
            return [self.to_string(row[m.bool()]) for row, m in zip(tokens.ids, tokens.attention_mask, strict=True)]
        return self._require_tokenizer().decode(torch.as_tensor(tokens).tolist())

    def tokens(self, x: Prompt | Tokens | Tensor) -> Tokens:
        """Text, ids (tensor, numpy array, lists of ints) or Tokens -> validated Tokens on the model's device."""
        if isinstance(x, Tokens):
            tokens = x
        elif isinstance(x, str) or (isinstance(x, (list, tuple)) and x and all(isinstance(t, str) for t in x)):
            tokens = self.to_tokens(x)
        else:
            ids = _as_ids(x)
            tokens = Tokens(ids, torch.ones_like(ids))
        self._check(tokens)
        return tokens.to(self.hf.device)

    def _check(self, tokens: Tokens) -> None:
        """Refuse input the model cannot run, before anything is attached."""
        ids, mask = tokens.ids, tokens.attention_mask
        if ids.ndim != 2 or 0 in ids.shape or ids.shape != mask.shape:
            raise InputError(f"Token ids must be (batch, pos) with pos >= 1 and a mask of the same shape; got ids "
                             f"{tuple(ids.shape)} and mask {tuple(mask.shape)}.")
        if ids.shape[1] > self.n_ctx:
            raise InputError(f"Sequence of {ids.shape[1]} tokens is longer than this model's context "
                             f"(n_ctx={self.n_ctx}); truncate or split it.")
        bad = ids[(ids < 0) | (ids >= self.d_vocab)]
        if bad.numel():
            raise InputError(f"Token id {bad[0].item()} is outside the vocabulary 0..{self.d_vocab - 1}.")
        if ((mask != 0) & (mask != 1)).any() or not mask.any(-1).all():
            raise InputError("attention_mask must hold 0 (pad) and 1 (token), with at least one token per row; "
                             f"got {mask.tolist()[:2]}... Build it with model.to_tokens(prompts).")
        if (mask.diff(dim=-1) < 0).any() or not mask[:, -1].all():
            raise InputError("Tokens are right-padded (a 0 after a 1 in attention_mask): pythia-interp left-pads so "
                             "that the last position is every prompt's last token. Use model.to_tokens(prompts).")

    def _pad(self, rows: list[list[int]]) -> Tokens:
        width, pad = max(map(len, rows)), self._pad_id()
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return Tokens(ids, mask)

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise InputError("This model has no tokenizer: pass token ids, or Model(hf_model, tokenizer).")
        return self.tokenizer

    def _bos_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else self.hf.config.bos_token_id

    def _pad_id(self) -> int:
        tok, cfg = self.tokenizer, self.hf.config
        candidates = (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None), cfg.eos_token_id, 0)
        return next(i for i in candidates if i is not None)


def _as_ids(x) -> Tensor:
    """Integer ids from a tensor, a numpy array or (nested) lists; an InputError for anything else."""
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (list, tuple)) and len({len(r) for r in x}) > 1:
        raise InputError(f"Ragged rows of ids (lengths {[len(r) for r in x]}): pad them with model.to_tokens(texts) "
                         "or build interp.Tokens(ids, attention_mask) with left padding.")
    try:
        ids = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"Cannot read token ids from {type(x).__name__}: give text, a list of ints, "
                         f"a tensor or a numpy array ({err}).") from err
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InputError(f"Token ids must be integers; got dtype {ids.dtype}. Did you pass embeddings or a mask?")
    ids = ids.long()
    return ids[None] if ids.ndim == 1 else ids
