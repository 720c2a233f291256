"""ActivationCache: site name -> tensor, with stacking helpers, provenance and safetensors I/O.

    >>> import interp
    >>> model = interp.load("toy")
    >>> logits, cache = model.run_with_cache("Hello, I am")
    >>> cache["resid_pre", 1].shape            # same as cache["blocks.1.hook_resid_pre"]
    torch.Size([1, 7, 96])
    >>> parts = cache.decompose_resid()        # embed, then each layer's attn_out and mlp_out
    >>> torch.allclose(parts.values.sum(0), cache["resid_post", -1], atol=1e-5)
    True

The cache stores; it never analyses beyond sums and stacks of what it holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from interp import arch as arch_table
from interp.errors import InputError, UnknownSiteError
from interp.sites import SHORT_ALIASES, TABLE, Sites

SHORT_KINDS = {spec.short for spec in TABLE} | set(SHORT_ALIASES)


@dataclass(frozen=True)
class Provenance:
    """Where activations came from: enough to reproduce them."""

    model: str
    revision: str | None
    dtype: str
    n_layers: int
    n_heads: int
    parallel_residual: bool = True
    tokens: list[list[int]] = field(default_factory=list)
    attention_mask: list[list[int]] = field(default_factory=list)
    arch: str = "neox"


@dataclass(frozen=True)
class Components:
    """A stack along a leading `component` axis, with a label per component."""

    values: Tensor
    labels: list[str]


class ActivationCache(Mapping[str, Tensor]):
    """Mapping from site name to tensor; `cache["z", 2]` is shorthand for `blocks.2.attn.hook_z`."""

    def __init__(self, store: dict[str, Tensor], provenance: Provenance, model=None):
        self._store = store
        self.provenance = provenance
        self.model = model  # for the helpers that need weights (W_O, W_U); None for a cache read from a file
        kind = {a.kind: a for a in arch_table.ARCHITECTURES.values()}[provenance.arch]
        self.sites = Sites(kind, provenance.n_layers, provenance.n_heads, provenance.parallel_residual)

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._name(key)
        if name not in self._store:
            raise UnknownSiteError(
                f"{name!r} was not cached. Cached: {len(self._store)} sites, e.g. {list(self._store)[:4]}. "
                f"Ask for it with run_with_cache(..., names=[{name!r}, ...])."
            )
        return self._store[name]

    def _name(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            return self.sites.short(*key).name
        if key in self._store:
            return key
        return self.sites.short(key).name if key in SHORT_KINDS else self.sites.resolve(key).name

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} sites, {self.nbytes() / 2**20:.1f} MiB, model={self.provenance.model!r})"

    @property
    def n_layers(self) -> int:
        return self.provenance.n_layers

    def nbytes(self) -> int:
        """Bytes held, counting shared storage once."""
        seen: dict[int, int] = {}
        for t in self._store.values():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())

    def stack(self, short: str) -> Components:
        """One site kind over all layers: `stack("resid_post").values` is (layer, batch, pos, d_model)."""
        layers = range(self.n_layers)
        return Components(torch.stack([self[short, L] for L in layers]), [f"{L}_{short}" for L in layers])

    def accumulated_resid(self) -> Components:
        """Residual stream at each layer boundary: entering block 0, then each block's resid_post."""
        posts = self.stack("resid_post")
        values = torch.cat([self._resid_in()[None], posts.values])  # (layer+1, batch, pos, d_model)
        return Components(values, ["embed", *posts.labels])

    def decompose_resid(self) -> Components:
        """The embedding(s) plus each layer's attn_out and mlp_out; they sum to the final residual."""
        parts, labels = [self["embed"]], ["embed"]
        if self.provenance.arch == "gpt2":
            parts, labels = parts + [self["pos_embed"].expand_as(self["embed"])], labels + ["pos_embed"]
        for L in range(self.n_layers):
            parts += [self["attn_out", L], self["mlp_out", L]]
            labels += [f"{L}_attn_out", f"{L}_mlp_out"]
        return Components(torch.stack(parts), labels)

    def stack_head_results(self, layer: int | None = None) -> Components:
        """Each head's output z_h W_O[h] for layers before `layer` (all by default): (component, batch, pos, d_model).

        Uses cached `hook_result` where present, else z through the model's W_O.
        """
        layers = range(self.n_layers if layer is None else layer % (self.n_layers + 1))
        values, labels = [], []
        for L in layers:
            name = f"blocks.{L}.attn.hook_result"
            if name in self._store:
                result = self._store[name]
            else:
                z = self["z", L]
                w_o = self._model("stack_head_results").W_O[L].to(device=z.device, dtype=z.dtype)
                result = torch.einsum("bphd,hdm->bphm", z, w_o)
            values.append(result.movedim(2, 0))  # (head, batch, pos, d_model)
            labels += [f"L{L}H{h}" for h in range(result.shape[2])]
        return Components(torch.cat(values), labels)

    def apply_ln_to_stack(self, stack: Components, layer: int | None = None, mlp_input: bool = False) -> Components:
        """Center and divide by the LayerNorm scale that reads the residual at `layer` (ln_final by default).

        As in TransformerLens: the stack's components are scaled as the sum was, so that they add up
        to the LayerNorm's normalized input; `mlp_input` uses ln2 instead of ln1.
        """
        if layer is None or layer == self.n_layers:
            scale = self["ln_final.hook_scale"]
        else:
            scale = self["scale", layer, "ln2" if mlp_input else "ln1"]
        values = stack.values - stack.values.mean(-1, keepdim=True)
        return Components(values / scale, stack.labels)

    def logit_attrs(self, stack: Components, tokens: Tensor | int, incorrect_tokens: Tensor | int | None = None,
                    pos: int = -1) -> Tensor:
        """Each component's direct contribution to the logit of `tokens` (minus `incorrect_tokens`) at `pos`.

        Give it a stack already through `apply_ln_to_stack`: (component, batch) comes back. The final
        LayerNorm's weight is folded into the unembedding (as TransformerLens's default `fold_ln` does), so
        the components plus the LayerNorm bias's term add up to the logit (difference).
        """
        model = self._model("logit_attrs")
        ln = model.module("ln_final.hook_out")
        w_u = model.W_U * (ln.weight.detach()[:, None] if ln.weight is not None else 1)  # (d_model, d_vocab)
        directions = w_u[:, torch.as_tensor(tokens)].movedim(0, -1)  # (batch, d_model) or (d_model,)
        if incorrect_tokens is not None:
            directions = directions - w_u[:, torch.as_tensor(incorrect_tokens)].movedim(0, -1)
        at = stack.values[:, :, pos]  # (component, batch, d_model)
        return (at * directions.to(device=at.device, dtype=at.dtype)).sum(-1)

    def _resid_in(self) -> Tensor:
        name = "blocks.0.hook_resid_pre"
        if name in self._store:
            return self._store[name]
        return self["embed"] + self["pos_embed"] if self.provenance.arch == "gpt2" else self["embed"]

    def _model(self, what: str):
        if self.model is None:
            raise InputError(f"cache.{what} needs the model's weights, and this cache has no model (it was read "
                             "from a file): cache hook_result / use a cache from model.run_with_cache.")
        return self.model

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ActivationCache:
        """A copy on another device and/or floating dtype (integer tensors keep theirs)."""
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        prov = self.provenance
        if dtype is not None:
            prov = Provenance(**{**asdict(prov), "dtype": str(dtype).removeprefix("torch.")})
        return ActivationCache({k: move(v) for k, v in self._store.items()}, prov, self.model)

    def save(self, path: str | Path) -> None:
        """Write to a safetensors file (never pickle), provenance in its metadata."""
        tensors = {k: v.detach().contiguous() for k, v in self._store.items()}
        unique = _unshare(tensors)
        save_file(unique, str(path), metadata={"provenance": json.dumps(asdict(self.provenance))})

    @classmethod
    def load(cls, path: str | Path) -> ActivationCache:
        """Read a cache written by `save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["provenance"])
        return cls(load_file(str(path)), Provenance(**meta))


def _unshare(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors that share memory; give each its own copy where they do."""
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out

