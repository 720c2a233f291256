"""Metrics on logits, and the one sign convention every patching method follows.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> metric = LogitDiff.of(task)                 # answer - wrong at the last position
    >>> metric(model(task.clean)).shape             # one value per prompt
    torch.Size([4])

Sign convention (stated here and only here)
-------------------------------------------
A patching *effect* is a difference of metric values M, averaged over the task's prompts:

- noising (the default): a component takes its corrupt (or mean, or zero) value inside the clean
  run, and   effect = M(patched) - M(clean);
- denoising: a component takes its clean value inside the corrupt run, and
  effect = M(patched) - M(corrupt).

`effect` is in the metric's raw units. `effect_normalized` divides it by M(clean) - M(corrupt), so
on the normalised metric (clean = 1, corrupt = 0) a component that carries the whole behaviour
scores -1 when noised and +1 when denoised. Attribution scores (AtP, EAP, EAP-IG) estimate the
noising effect and carry the same sign; a circuit's value is M of the run with only its edges kept.

A metric maps logits at its positions, (row, k, d_vocab), to one value per row. Rows are
patches stacked along the batch, each a copy of the task's prompts: row = patch * n_prompts + prompt.
Any callable `fn(logits) -> scalar or (batch,)` is accepted where a metric is and is applied to one
patch's rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses.patching.errors import PatchingError, UnknownMethodError

METRICS = ("logit_diff", "prob_diff", "kl")


@dataclass
class Metric:
    """Base class: which positions a metric reads, and its value per row from the logits there."""

    n_prompts: int
    positions: Int[Tensor, "prompt k"] | None = None  # None: every position
    name: str = "metric"

    def values(self, logits: Float[Tensor, "row k d_vocab"]) -> Float[Tensor, " row"]:
        raise NotImplementedError

    def tokens(self) -> Int[Tensor, " token"] | None:
        """The vocabulary ids whose logits the metric reads, sorted (None: every one)."""
        return None

    def on_tokens(self, tokens: Int[Tensor, " token"]) -> Metric:
        """The same metric on logits that hold only the columns of `tokens` (from `tokens()`), in that order."""
        raise NotImplementedError

    def gather(self, x: Float[Tensor, "row pos ..."]) -> Float[Tensor, "row k ..."]:
        """The rows of `x` at this metric's positions (all of them when positions is None)."""
        if self.positions is None:
            return x
        index = _tile(self.positions.to(x.device) % x.shape[1], x.shape[0])  # (row, k)
        return x[torch.arange(x.shape[0], device=x.device)[:, None], index]

    def __call__(self, logits: Float[Tensor, "row pos d_vocab"]) -> Float[Tensor, " row"]:
        """The metric of full logits, one value per row."""
        return self.values(self.gather(logits))

    def per_patch(self, values: Float[Tensor, " row"]) -> Float[Tensor, " patch"]:
        """Average rows over each patch's copy of the prompts."""
        return values.view(-1, self.n_prompts).mean(-1)

    def describe(self) -> str:
        return self.name


@dataclass
class LogitDiff(Metric):
    """logit[answer] - logit[wrong], averaged over the chosen positions (default: the last)."""

    answer: Int[Tensor, " prompt"] = None
    wrong: Int[Tensor, " prompt"] = None
    name: str = "logit_diff"

    @classmethod
    def of(cls, task, positions: int | list[int] | Tensor = -1) -> LogitDiff:
        """The task's answer-minus-wrong logit difference at `positions` of every prompt."""
        return cls(task.n_prompts, _positions(positions, task.n_prompts), answer=task.answer, wrong=task.wrong)

    def tokens(self) -> Int[Tensor, " token"]:
        """
        >>> LogitDiff(2, answer=torch.tensor([7, 3]), wrong=torch.tensor([3, 9])).tokens()
        tensor([3, 7, 9])
        """
        return torch.unique(torch.cat([self.answer, self.wrong]).cpu())

    def on_tokens(self, tokens: Int[Tensor, " token"]) -> LogitDiff:
        column = lambda ids: torch.searchsorted(tokens.to(ids.device), ids)  # noqa: E731
        return replace(self, answer=column(self.answer), wrong=column(self.wrong))

    def values(self, logits: Float[Tensor, "row k d_vocab"]) -> Float[Tensor, " row"]:
        rows = logits.shape[0]
        answer = _tile(self.answer.to(logits.device), rows)[:, None, None].expand(-1, logits.shape[1], 1)
        wrong = _tile(self.wrong.to(logits.device), rows)[:, None, None].expand(-1, logits.shape[1], 1)
        return (logits.gather(-1, answer) - logits.gather(-1, wrong)).squeeze(-1).mean(-1)


@dataclass
class ProbDiff(Metric):
    """Probability on each prompt's good tokens minus on its bad ones (greater-than's metric)."""

    signs: Float[Tensor, "prompt d_vocab"] = None  # +1 good, -1 bad, 0 neither
    name: str = "prob_diff"

    def values(self, logits: Float[Tensor, "row k d_vocab"]) -> Float[Tensor, " row"]:
        probs = logits.float().softmax(-1)
        signs = _tile(self.signs.to(logits.device), logits.shape[0])[:, None, :]
        return (probs * signs).sum(-1).mean(-1).to(logits.dtype)


@dataclass
class KLToClean(Metric):
    """KL(clean || patched) of the next-token distributions at the chosen positions (0 when clean)."""

    clean_logits: Float[Tensor, "prompt k d_vocab"] = None
    name: str = "kl"

    def values(self, logits: Float[Tensor, "row k d_vocab"]) -> Float[Tensor, " row"]:
        clean = _tile(self.clean_logits.to(logits.device), logits.shape[0]).float().log_softmax(-1)
        patched = logits.float().log_softmax(-1)
        return (clean.exp() * (clean - patched)).sum(-1).mean(-1).to(logits.dtype)


@dataclass
class FunctionMetric(Metric):
    """Any callable on full logits, applied to one patch's copy of the prompts at a time."""

    fn: Callable[[Tensor], Tensor] = field(default=None, repr=False)
    name: str = "custom"

    def values(self, logits: Float[Tensor, "row pos d_vocab"]) -> Float[Tensor, " row"]:
        out = []
        for chunk in logits.split(self.n_prompts):
            value = torch.as_tensor(self.fn(chunk), device=logits.device)
            if value.numel() not in (1, self.n_prompts):
                raise PatchingError(f"The metric {self.name!r} returned {tuple(value.shape)} values for "
                                    f"{self.n_prompts} prompts: return one value (a scalar) or one per prompt.")
            out.append(value.reshape(()).expand(self.n_prompts) if value.numel() == 1 and self.n_prompts != 1
                       else value.reshape(self.n_prompts))
        return torch.cat(out)


def resolve(metric: str | Metric | Callable | None, model, task, positions: int | list[int] = -1) -> Metric:
    """A Metric from a name (logit_diff, prob_diff, kl), a Metric, a callable, or None (the task's default).

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> resolve("kl", model, task).name
    'kl'
    """
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return FunctionMetric(task.n_prompts, None, fn=metric, name=getattr(metric, "__name__", "custom"))
    name = metric or task.metric
    if name == "logit_diff":
        return LogitDiff.of(task, positions)
    if name == "prob_diff":
        if task.signs is None:
            raise UnknownMethodError(f"Task {task.name!r} has no good/bad token sets for prob_diff; "
                                     "use metric='logit_diff' or a greater-than task.")
        return ProbDiff(task.n_prompts, _positions(positions, task.n_prompts), signs=task.signs)
    if name == "kl":
        pos = _positions(positions, task.n_prompts)
        probe = KLToClean(task.n_prompts, pos)
        with torch.no_grad():
            clean = probe.gather(model(task.clean))
        return KLToClean(task.n_prompts, pos, clean_logits=clean)
    raise UnknownMethodError(f"Unknown metric {metric!r}: choose one of {METRICS}, a Metric, or a callable "
                             "fn(logits) -> value.")


def _positions(positions: int | list[int] | Tensor, n_prompts: int) -> Tensor:
    """(prompt, k) position indices from an int, a list of ints, or a per-prompt tensor."""
    pos = torch.as_tensor(positions, dtype=torch.long)
    if pos.ndim == 0:
        pos = pos[None]
    if pos.ndim == 1:
        pos = pos[None].expand(n_prompts, -1)
    return pos


def _tile(x: Tensor, rows: int) -> Tensor:
    """Repeat a per-prompt tensor along dim 0 to `rows` (patch-major)."""
    n = x.shape[0]
    return x if rows == n else x.repeat(rows // n, *([1] * (x.ndim - 1)))
