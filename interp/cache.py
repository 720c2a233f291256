"""ActivationCache: site name -> tensor, with stacking helpers, provenance and safetensors I/O.

    >>> logits, cache = model.run_with_cache("Hello, I am")
    >>> cache["resid_pre", 3].shape            # same as cache["blocks.3.hook_resid_pre"]
    torch.Size([1, 4, 768])
    >>> cache.decompose_resid().values.sum(0)  # == cache["resid_post", -1]

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

from interp.errors import UnknownSiteError
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


@dataclass(frozen=True)
class Components:
    """A stack along a leading `component` axis, with a label per component."""

    values: Tensor
    labels: list[str]


class ActivationCache(Mapping[str, Tensor]):
    """Mapping from site name to tensor; `cache["z", 2]` is shorthand for `blocks.2.attn.hook_z`."""

    def __init__(self, store: dict[str, Tensor], provenance: Provenance):
        self._store = store
        self.provenance = provenance
        self.sites = Sites(provenance.n_layers, provenance.n_heads, provenance.parallel_residual)

    def __getitem__(self, key: str | tuple[str, int]) -> Tensor:
        name = self._name(key)
        if name not in self._store:
            raise UnknownSiteError(
                f"{name!r} was not cached. Cached: {len(self._store)} sites, e.g. {list(self._store)[:4]}. "
                f"Ask for it with run_with_cache(..., names=[{name!r}, ...])."
            )
        return self._store[name]

    def _name(self, key: str | tuple[str, int]) -> str:
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
        """Residual stream at each layer boundary: embed, then each block's resid_post."""
        posts = self.stack("resid_post")
        values = torch.cat([self["embed"][None], posts.values])  # (layer+1, batch, pos, d_model)
        return Components(values, ["embed", *posts.labels])

    def decompose_resid(self) -> Components:
        """Embedding plus each layer's attn_out and mlp_out; they sum to the final residual."""
        parts, labels = [self["embed"]], ["embed"]
        for L in range(self.n_layers):
            parts += [self["attn_out", L], self["mlp_out", L]]
            labels += [f"{L}_attn_out", f"{L}_mlp_out"]
        return Components(torch.stack(parts), labels)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ActivationCache:
        """A copy on another device and/or floating dtype (integer tensors keep theirs)."""
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        prov = self.provenance
        if dtype is not None:
            prov = Provenance(**{**asdict(prov), "dtype": str(dtype).removeprefix("torch.")})
        return ActivationCache({k: move(v) for k, v in self._store.items()}, prov)

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

