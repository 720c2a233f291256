"""Logit lens: decode the residual stream at every layer boundary through the model's own readout.

    >>> import interp
    >>> result = logit_lens(interp.load("toy"), "def f(x): return x", target=" x")
    >>> frame = result.to_frame()[["layer", "position", "top1", "kl", "prob[ x]"]]
    >>> bool((result.kl[-1] < 1e-5).all())    # the last boundary is the model itself
    True

Layer 0 is the embedding output and layer L+1 the output of block L, so the last layer is what
the model itself decodes. Metrics are computed a chunk of positions at a time: only the top-k
tokens and per-position numbers are kept, never a (layer, batch, pos, d_vocab) tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

import interp
from interp.cache import ActivationCache, Provenance
from interp.errors import InputError
from interp.model import Prompt

Target = str | int | Sequence[str | int] | None
METRICS = ("kl", "cross_entropy", "entropy", "top1_prob")
Resid = Float[Tensor, "... d_model"]


class Translator(Protocol):
    """What a lens does to the residual before the readout (identity for the logit lens)."""

    name: str

    def translate(self, h: Resid, layer: int) -> Resid:
        """The residual at boundary `layer` (0..n_layers), ready for the final LayerNorm."""
        ...


class LogitLens:
    """The plain logit lens: the residual goes to the readout unchanged."""

    name = "logit"

    def translate(self, h: Resid, layer: int) -> Resid:
        """The residual itself."""
        return h


def resid_names(model: interp.Model) -> list[str]:
    """The sites a lens reads: the residual entering block 0 (the embedding) and every block's resid_post.

        >>> resid_names(interp.load("toy"))
        ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
    """
    return ["blocks.0.hook_resid_pre", *[f"blocks.{L}.hook_resid_post" for L in range(model.n_layers)]]


def boundary(cache: ActivationCache, layer: int) -> Float[Tensor, "batch pos d_model"]:
    """Residual at layer boundary `layer`: 0 is what enters block 0 (the token embedding, plus the position
    embedding on GPT-2), L+1 the output of block L.

        >>> model = interp.load("toy")
        >>> _, cache = model.run_with_cache("Hello", names=resid_names(model))
        >>> boundary(cache, 0) is cache["blocks.0.hook_resid_pre"], boundary(cache, 2) is cache["resid_post", 1]
        (True, True)
    """
    return cache["resid_pre", 0] if layer == 0 else cache["resid_post", layer - 1]


@dataclass(frozen=True)
class Readout:
    """The model's own final LayerNorm (or none) and unembedding, found via the site table.

        >>> readout = Readout.of(interp.load("toy"))
        >>> readout(torch.zeros(96)).shape         # log-probabilities of a residual
        torch.Size([1024])
    """

    norm: nn.Module | None
    unembed: nn.Module

    @classmethod
    def of(cls, model: interp.Model, apply_ln: bool = True) -> Readout:
        """Readout of `model`; `apply_ln=False` skips the final LayerNorm."""
        norm = model.module("ln_final.hook_out") if apply_ln else None
        return cls(norm, model.module("hook_logits"))

    def __call__(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Log-probabilities (fp32) of the residual `h`."""
        x = self.norm(h) if self.norm is not None else h
        return self.unembed(x).float().log_softmax(-1)


def as_translator(lens: str | Translator, model: interp.Model) -> Translator:
    """`"logit"` or a translator that fits `model` (a TunedLens); anything else is refused."""
    if isinstance(lens, str):
        if lens != "logit":
            raise InputError(f"lens={lens!r} is not a lens: use 'logit' or a TunedLens "
                             "(analyses.lens.TunedLens.load(path)).")
        return LogitLens()
    if not callable(getattr(lens, "translate", None)):
        raise InputError(f"lens={type(lens).__name__} has no translate(h, layer): use 'logit' "
                         "or a TunedLens.")
    if callable(getattr(lens, "check", None)):
        lens.check(model)
    return lens


def decode(model: interp.Model, h: Resid, layer: int, lens: str | Translator = "logit",
           apply_ln: bool = True) -> Float[Tensor, "... d_vocab"]:
    """Full log-probabilities of one residual through a lens (small inputs; metrics use chunks).

        >>> model = interp.load("toy")
        >>> _, cache = model.run_with_cache("Hello, I am", names=resid_names(model))
        >>> decode(model, boundary(cache, 1), layer=1).shape   # (batch, pos, d_vocab)
        torch.Size([1, 7, 1024])
    """
    with torch.no_grad():
        return Readout.of(model, apply_ln)(as_translator(lens, model).translate(h, layer))


@dataclass(frozen=True)
class LensResult:
    """Per layer, prompt and position: KL to the model, cross-entropy, entropy, top-k, targets."""

    layers: list[int]  # layer boundaries: 0 = embedding, L+1 = after block L
    kl: Float[Tensor, "layer batch pos"]  # KL(model || lens) in nats; NaN at padding
    cross_entropy: Float[Tensor, "layer batch pos"]  # vs the next token; NaN at the last position
    entropy: Float[Tensor, "layer batch pos"]
    top_ids: Int[Tensor, "layer batch pos top_k"]
    top_probs: Float[Tensor, "layer batch pos top_k"]
    final_top1: Int[Tensor, "batch pos"]  # the model's own top-1 token
    target_ids: list[int]
    target_probs: Float[Tensor, "layer batch pos target"]
    target_ranks: Int[Tensor, "layer batch pos target"]  # 1 = the lens's top token
    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    vocab: dict[int, str]  # readable strings of every token id shown
    lens: str
    apply_ln: bool
    provenance: Provenance

    @property
    def agrees(self) -> Bool[Tensor, "layer batch pos"]:
        """Whether the lens's top-1 token is the model's top-1 token (False at padding)."""
        return (self.top_ids[..., 0] == self.final_top1) & self.attention_mask.bool()

    def token_str(self, token_id: int) -> str:
        """Readable string of a token id (`#id` when the tokenizer has none)."""
        return self.vocab.get(int(token_id), f"#{int(token_id)}")

    def values(self, metric: str) -> Float[Tensor, "layer batch pos"]:
        """One metric by name: kl, cross_entropy, entropy, top1_prob, prob[tok] or rank[tok].

            >>> logit_lens(interp.load("toy"), "x = x", target=" x").values("rank[ x]").shape
            torch.Size([3, 1, 3])
        """
        if metric in ("kl", "cross_entropy", "entropy"):
            return getattr(self, metric)
        if metric == "top1_prob":
            return self.top_probs[..., 0]
        names = [self.token_str(t) for t in self.target_ids]
        for kind, table in (("prob", self.target_probs), ("rank", self.target_ranks)):
            if metric.startswith(f"{kind}[") and metric[len(kind) + 1:-1] in names:
                return table[..., names.index(metric[len(kind) + 1:-1])].float()
        choices = [*METRICS, *[f"{k}[{n}]" for n in names for k in ("prob", "rank")]]
        raise InputError(f"metric={metric!r} is not one of {choices}; targets come from target=.")

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt, layer and real (unpadded) position; `position` counts from 0.

            >>> frame = logit_lens(interp.load("toy"), ["a", "b = 2"]).to_frame()
            >>> len(frame), list(frame.columns[:4])             # 3 layers x (1 + 3) real positions
            (12, ['prompt', 'layer', 'position', 'token'])
        """
        prompt, col = self.attention_mask.bool().nonzero(as_tuple=True)
        position = (self.attention_mask.cumsum(-1) - 1)[prompt, col]
        ids = self.tokens[prompt, col].tolist()
        nxt = _next_tokens(self.tokens, self.attention_mask)[prompt, col].tolist()
        base = {"prompt": prompt.tolist(), "position": position.tolist(),
                "token": [self.token_str(t) for t in ids],
                "next_token": [self.token_str(t) if t >= 0 else "" for t in nxt]}
        names = [self.token_str(t) for t in self.target_ids]
        frames = []
        for i, layer in enumerate(self.layers):
            top1 = self.top_ids[i, prompt, col, 0].tolist()
            frame = {**base, "layer": layer, "top1": [self.token_str(t) for t in top1],
                     "top1_prob": self.top_probs[i, prompt, col, 0].tolist(),
                     "agrees": self.agrees[i, prompt, col].tolist(),
                     **{m: getattr(self, m)[i, prompt, col].tolist() for m in METRICS[:3]}}
            for j, name in enumerate(names):
                frame[f"prob[{name}]"] = self.target_probs[i, prompt, col, j].tolist()
                frame[f"rank[{name}]"] = self.target_ranks[i, prompt, col, j].tolist()
            frames.append(pd.DataFrame(frame))
        columns = ["prompt", "layer", "position", "token", "next_token", "top1", "top1_prob",
                   "agrees", *METRICS[:3]]
        frame = pd.concat(frames, ignore_index=True)
        return frame[columns + [c for c in frame.columns if c not in columns]]

    def layer_means(self, per_prompt: bool = False) -> pd.DataFrame:
        """Means over real positions for each layer (and each prompt when asked).

            >>> means = logit_lens(interp.load("toy"), "def f(x): return x").layer_means()
            >>> bool(means["kl"].iloc[-1] < 1e-5)              # the last layer is the model
            True
        """
        frame = self.to_frame()
        keys = ["prompt", "layer"] if per_prompt else ["layer"]
        numeric = [c for c in frame.columns if c not in ("prompt", "layer", "position")
                   and pd.api.types.is_numeric_dtype(frame[c])]
        return frame.groupby(keys, as_index=False)[numeric].mean()

    def figure(self, metric: str = "kl", prompt: int = 0, max_pos: int = 64):
        """Input tokens down, layers across, coloured by `metric`; top-1 token in each cell, top-k on hover.

            >>> fig = logit_lens(interp.load("toy"), "a = 1").figure("entropy")
            >>> fig.layout.yaxis.title.text, fig.layout.xaxis.title.text
            ('input token', 'layer')

        Prompts longer than `max_pos` positions show their last `max_pos` (the title says so).
        """
        from analyses.lens.figures import lens_grid

        return lens_grid(self, metric, prompt, max_pos)

    def target_figure(self, prompt: int = 0, position: int = -1):
        """Probability and rank of each target token across layers at one real position.

            >>> fig = logit_lens(interp.load("toy"), "x = 1; y = x", target=" x").target_figure()
            >>> len(fig.data)                  # probability and rank of one target
            2
        """
        from analyses.lens.figures import target_lines

        return target_lines(self, prompt, position)


def logit_lens(model: interp.Model, x: Prompt | interp.Tokens | Tensor, *, lens: str | Translator = "logit",
               target: Target = None, apply_ln: bool = True, layers: Sequence[int] | None = None,
               top_k: int = 5, chunk: int = 128) -> LensResult:
    """Run the model once and decode every layer boundary through a lens.

        >>> result = logit_lens(interp.load("toy"), ["x = 1", "def f(x): return"], target=" x")
        >>> result.kl.shape                                    # (layer, batch, pos), left-padded
        torch.Size([3, 2, 6])
        >>> list(result.layer_means()["layer"])
        [0, 1, 2]

    `lens` is "logit" or a TunedLens; `apply_ln=False` skips the final LayerNorm; `layers`
    picks boundaries (default all, 0..n_layers); `chunk` is the number of positions decoded at
    once, which bounds memory to a few (chunk, d_vocab) tensors.
    """
    with torch.no_grad():  # the model follows the caller's grad mode; a lens needs no graph
        _, cache = model.run_with_cache(x, names=resid_names(model), stop_at_layer=model.n_layers)
    return lens_from_cache(model, cache, lens=lens, target=target, apply_ln=apply_ln, layers=layers,
                           top_k=top_k, chunk=chunk)


def lens_from_cache(model: interp.Model, cache: ActivationCache, *, lens: str | Translator = "logit",
                    target: Target = None, apply_ln: bool = True,
                    layers: Sequence[int] | None = None, top_k: int = 5,
                    chunk: int = 128) -> LensResult:
    """The same as `logit_lens`, from a cache holding `resid_names(model)`.

        >>> model = interp.load("toy")
        >>> _, cache = model.run_with_cache("Hello, I am", names=resid_names(model))
        >>> lens_from_cache(model, cache).kl.shape   # (layer, batch, pos)
        torch.Size([3, 1, 7])
    """
    if not 1 <= top_k <= model.d_vocab or chunk < 1:
        raise InputError(f"top_k={top_k} must be in 1..{model.d_vocab} and chunk={chunk} at least 1 position: "
                         "pass e.g. top_k=5, chunk=128.")
    translator, layers = as_translator(lens, model), _check_layers(layers, model.n_layers)
    targets = _target_ids(model, target)
    tokens = torch.tensor(cache.provenance.tokens)
    mask = torch.tensor(cache.provenance.attention_mask)
    rows, final_top1 = _chunked_metrics(model, cache, translator, layers, mask,
                                        _next_tokens(tokens, mask), apply_ln, targets, top_k, chunk)
    stats = {k: _scatter(v, mask, dim=1) for k, v in rows.items()}  # (layer, batch, pos, ...)
    return LensResult(
        layers=layers, kl=stats["kl"], cross_entropy=stats["cross_entropy"],
        entropy=stats["entropy"], top_ids=stats["top_ids"], top_probs=stats["top_probs"],
        final_top1=_scatter(final_top1, mask, dim=0), target_ids=targets,
        target_probs=stats["target_probs"], target_ranks=stats["target_ranks"], tokens=tokens,
        attention_mask=mask, lens=translator.name, apply_ln=apply_ln,
        vocab=_vocab(model, [tokens, stats["top_ids"], final_top1, torch.tensor(targets)]),
        provenance=cache.provenance)


def _chunked_metrics(model: interp.Model, cache: ActivationCache, translator: Translator,
                     layers: list[int], mask: Tensor, nxt: Tensor, apply_ln: bool,
                     targets: list[int], top_k: int,
                     chunk: int) -> tuple[dict[str, Tensor], Tensor]:
    """Metrics of every real position, `chunk` rows at a time: (layer, n, ...) each, and the
    model's own top-1 token (n,)."""
    # (batch * pos, d_model) views of each boundary read; the last one is always the reference
    resid = {L: boundary(cache, L).flatten(0, 1) for L in {*layers, model.n_layers}}
    rows = mask.flatten().nonzero()[:, 0].to(resid[model.n_layers].device)
    nxt = nxt.flatten()[rows.cpu()].to(model.device)
    final, view = Readout.of(model), Readout.of(model, apply_ln)

    def at(layer: int, idx: Tensor) -> Float[Tensor, "chunk d_model"]:
        """Rows of one boundary, where and as the model computes (a cache may live elsewhere)."""
        return resid[layer][idx].to(model.device, model.dtype)

    parts, top1 = [], []
    with torch.no_grad():
        for start in range(0, len(rows), chunk):
            idx = rows[start:start + chunk]
            ref = final(at(model.n_layers, idx))  # (chunk, d_vocab)
            per_layer = [_row_metrics(view(translator.translate(at(L, idx), L)), ref,
                                      nxt[start:start + chunk], targets, top_k) for L in layers]
            parts.append({k: torch.stack([m[k] for m in per_layer]) for k in per_layer[0]})
            top1.append(ref.argmax(-1))
    return {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}, torch.cat(top1)


def _row_metrics(logp: Float[Tensor, "n d_vocab"], ref: Float[Tensor, "n d_vocab"],
                 nxt: Int[Tensor, " n"], targets: list[int], top_k: int) -> dict[str, Tensor]:
    """Every metric of one layer for a chunk of rows; the leading axis of each value is n."""
    kl = torch.nn.functional.kl_div(logp, ref, log_target=True, reduction="none").sum(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    ce = -logp.gather(-1, nxt.clamp(min=0)[:, None])[:, 0]
    top = logp.topk(top_k, dim=-1)
    tlogp = logp[:, targets]  # (n, target)
    ranks = (logp[:, None, :] > tlogp[:, :, None]).sum(-1) + 1  # (n, target)
    return {"kl": kl, "cross_entropy": ce.masked_fill(nxt < 0, float("nan")), "entropy": entropy,
            "top_ids": top.indices, "top_probs": top.values.exp(),
            "target_probs": tlogp.exp(), "target_ranks": ranks}


def _scatter(values: Tensor, mask: Int[Tensor, "batch pos"], dim: int) -> Tensor:
    """Rows of real positions (axis `dim`) back to (batch, pos) there; padding is NaN or -1."""
    keep = mask.bool()
    shape = (*values.shape[:dim], *keep.shape, *values.shape[dim + 1:])
    out = torch.full(shape, float("nan") if values.is_floating_point() else -1, dtype=values.dtype)
    out[(slice(None),) * dim + (keep,)] = values.cpu()
    return out


def _next_tokens(tokens: Int[Tensor, "batch pos"],
                 mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """The token after each position (left padding: the next column), -1 where there is none."""
    nxt = torch.full_like(tokens, -1)
    nxt[:, :-1] = tokens[:, 1:].masked_fill(mask[:, 1:] == 0, -1)
    return nxt


def _check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Layer boundaries 0..n_layers (negative counts from the end); all when None."""
    if layers is None:
        return list(range(n_layers + 1))
    out = [int(L) + (n_layers + 1 if L < 0 else 0) for L in layers]
    bad = [L for L, o in zip(layers, out, strict=True) if not 0 <= o <= n_layers]
    if bad or not out:
        raise InputError(f"layers={list(layers)!r}: each must be in 0..{n_layers} (0 = embedding, "
                         f"L+1 = after block L) or negative from the end, and at least one given.")
    return sorted(set(out))


def _target_ids(model: interp.Model, target: Target) -> list[int]:
    """Token ids of the target(s): strings must be exactly one token, ids in the vocabulary."""
    if target is None:
        return []
    out = []
    for t in [target] if isinstance(target, (str, int)) else list(target):
        if isinstance(t, str):
            pieces = model.to_str_tokens(t)
            if len(pieces) != 1:
                raise InputError(f"target {t!r} is {len(pieces)} tokens {pieces}: pass one token, "
                                 f"e.g. {pieces[0]!r} (mind the leading space), or a token id.")
            t = int(model.to_tokens(t).ids[0, 0])
        if not 0 <= int(t) < model.d_vocab:
            raise InputError(f"target id {t} is outside the vocabulary 0..{model.d_vocab - 1}.")
        out.append(int(t))
    return out


def _vocab(model: interp.Model, id_tensors: list[Tensor]) -> dict[int, str]:
    """Readable strings of every id in the tensors (`#id` where the tokenizer has none)."""
    from interp.text import render_token

    ids = sorted({i for t in id_tensors for i in t.flatten().tolist() if i >= 0})
    if model.tokenizer is None:
        return {i: f"#{i}" for i in ids}
    pieces = model.tokenizer.convert_ids_to_tokens(ids)
    return {i: f"#{i}" if p is None else render_token(p) for i, p in zip(ids, pieces, strict=True)}

