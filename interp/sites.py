"""The one table of hook sites: TransformerLens-style names, their HF modules, shapes and how they fire.

    >>> from interp.sites import Sites
    >>> sites = Sites(n_layers=6, n_heads=4)
    >>> sites.resolve("gpt_neox.layers.3.mlp").name
    'blocks.3.hook_mlp_out'

Nothing else in the library spells an HF module path.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from interp.errors import SiteNotAvailableError, UnknownSiteError


class Tap(Enum):
    """How a site is read from the real module."""

    OUTPUT = "output"  # forward hook on the module: its output
    INPUT = "input"  # forward pre-hook on the module: its first input
    QKV = "qkv"  # a third of each head's slice of the fused query_key_value output
    INSIDE = "inside"  # inside the attention function (rotated q/k, scores, pattern)
    RESULT = "result"  # per-head output, computed from z and W_O only when asked


@dataclass(frozen=True)
class SiteSpec:
    """One row of the table; `{L}` in a name or module stands for the layer."""

    name: str
    module: str
    tap: Tap
    axes: str
    short: str  # the key of `cache["short", L]`


TABLE: tuple[SiteSpec, ...] = (
    SiteSpec("hook_embed", "gpt_neox.embed_in", Tap.OUTPUT, "batch pos d_model", "embed"),
    SiteSpec("blocks.{L}.hook_resid_pre", "gpt_neox.layers.{L}", Tap.INPUT, "batch pos d_model", "resid_pre"),
    SiteSpec("blocks.{L}.ln1.hook_normalized", "gpt_neox.layers.{L}.input_layernorm", Tap.OUTPUT,
             "batch pos d_model", "ln1"),
    SiteSpec("blocks.{L}.attn.hook_q", "gpt_neox.layers.{L}.attention.query_key_value", Tap.QKV,
             "batch pos head d_head", "q"),
    SiteSpec("blocks.{L}.attn.hook_k", "gpt_neox.layers.{L}.attention.query_key_value", Tap.QKV,
             "batch pos head d_head", "k"),
    SiteSpec("blocks.{L}.attn.hook_v", "gpt_neox.layers.{L}.attention.query_key_value", Tap.QKV,
             "batch pos head d_head", "v"),
    SiteSpec("blocks.{L}.attn.hook_rot_q", "gpt_neox.layers.{L}.attention", Tap.INSIDE,
             "batch pos head d_head", "rot_q"),
    SiteSpec("blocks.{L}.attn.hook_rot_k", "gpt_neox.layers.{L}.attention", Tap.INSIDE,
             "batch pos head d_head", "rot_k"),
    SiteSpec("blocks.{L}.attn.hook_attn_scores", "gpt_neox.layers.{L}.attention", Tap.INSIDE,
             "batch head q_pos k_pos", "attn_scores"),
    SiteSpec("blocks.{L}.attn.hook_pattern", "gpt_neox.layers.{L}.attention", Tap.INSIDE,
             "batch head q_pos k_pos", "pattern"),
    SiteSpec("blocks.{L}.attn.hook_z", "gpt_neox.layers.{L}.attention.dense", Tap.INPUT,
             "batch pos head d_head", "z"),
    SiteSpec("blocks.{L}.attn.hook_result", "gpt_neox.layers.{L}.attention.dense", Tap.RESULT,
             "batch pos head d_model", "result"),
    SiteSpec("blocks.{L}.hook_attn_out", "gpt_neox.layers.{L}.attention.dense", Tap.OUTPUT,
             "batch pos d_model", "attn_out"),
    SiteSpec("blocks.{L}.hook_resid_mid", "gpt_neox.layers.{L}.post_attention_layernorm", Tap.INPUT,
             "batch pos d_model", "resid_mid"),
    SiteSpec("blocks.{L}.ln2.hook_normalized", "gpt_neox.layers.{L}.post_attention_layernorm",
             Tap.OUTPUT, "batch pos d_model", "ln2"),
    SiteSpec("blocks.{L}.mlp.hook_pre", "gpt_neox.layers.{L}.mlp.dense_h_to_4h", Tap.OUTPUT,
             "batch pos d_mlp", "pre"),
    SiteSpec("blocks.{L}.mlp.hook_post", "gpt_neox.layers.{L}.mlp.act", Tap.OUTPUT, "batch pos d_mlp", "post"),
    SiteSpec("blocks.{L}.hook_mlp_out", "gpt_neox.layers.{L}.mlp", Tap.OUTPUT, "batch pos d_model", "mlp_out"),
    SiteSpec("blocks.{L}.hook_resid_post", "gpt_neox.layers.{L}", Tap.OUTPUT, "batch pos d_model", "resid_post"),
    SiteSpec("ln_final.hook_normalized", "gpt_neox.final_layer_norm", Tap.OUTPUT, "batch pos d_model",
             "ln_final"),
    SiteSpec("hook_logits", "lm_head", Tap.OUTPUT, "batch pos d_vocab", "logits"),
)

# HF module paths that are accepted as aliases of a site (beyond each row's own module).
MODULE_ALIASES = {
    "gpt_neox.layers.{L}.attention": "blocks.{L}.hook_attn_out",
    "gpt_neox.layers.{L}.mlp.dense_4h_to_h": "blocks.{L}.hook_mlp_out",
    "embed_out": "hook_logits",
}
SHORT_ALIASES = {"scores": "attn_scores", "normalized": "ln1", "mlp_pre": "pre", "mlp_post": "post"}
COSTLY = {"result"}  # computed only when named explicitly, never by a filter or `names=None`
PARALLEL_ONLY_ABSENT = {"resid_mid"}


@dataclass(frozen=True)
class Site:
    """A concrete site: `blocks.3.attn.hook_z` at layer 3; passed to hook functions as `hook`."""

    name: str
    spec: SiteSpec
    layer: int | None
    n_heads: int = 1

    @property
    def module(self) -> str:
        return self.spec.module.replace("{L}", str(self.layer))

    @property
    def tap(self) -> Tap:
        return self.spec.tap

    @property
    def short(self) -> str:
        return self.spec.short


class Sites:
    """The sites of one model, with name resolution and error messages that suggest."""

    def __init__(self, n_layers: int, n_heads: int = 1, parallel_residual: bool = True):
        self.n_layers = n_layers
        self.parallel_residual = parallel_residual
        self._by_name: dict[str, Site] = {}
        self._aliases: dict[str, str] = {}
        for spec in TABLE:
            for layer in (range(n_layers) if "{L}" in spec.name else [None]):
                site = Site(_fill(spec.name, layer), spec, layer, n_heads)
                self._by_name[site.name] = site
                if spec.tap is Tap.OUTPUT:  # a module path means that module's output
                    self._aliases[site.module] = site.name
        for layer in range(n_layers):
            for module, name in MODULE_ALIASES.items():
                self._aliases[_fill(module, layer)] = _fill(name, layer)

    def all(self) -> list[Site]:
        """Every site that exists on this model, in forward order."""
        return [s for s in self._by_name.values() if self._exists(s)]

    def standard(self) -> list[Site]:
        """The sites `names=None` caches: all except the costly per-head `hook_result`."""
        return [s for s in self.all() if s.short not in COSTLY]

    def resolve(self, name: str) -> Site:
        """Site for a TL-style name or an HF module path; raise with close matches if unknown."""
        site = self._by_name.get(self._aliases.get(name, name))
        if site is None:
            close = difflib.get_close_matches(name, [*self._by_name, *self._aliases], n=5, cutoff=0.6)
            raise UnknownSiteError(
                f"No hook site {name!r}. Closest valid names: {close or ['blocks.0.hook_resid_pre']}. "
                "Sites use TransformerLens names (see interp.sites.TABLE) or HF module paths."
            )
        if not self._exists(site):
            raise SiteNotAvailableError(
                f"{name!r} does not exist on this model: Pythia uses a parallel residual, "
                "x + attn(ln1(x)) + mlp(ln2(x)), so there is no residual stream between attention and "
                "MLP. Use blocks.L.hook_resid_pre (what both read) or blocks.L.hook_attn_out."
            )
        return site

    def short(self, short: str, layer: int | None = None) -> Site:
        """Site for a short key: `("resid_pre", 3)` -> `blocks.3.hook_resid_pre`."""
        short = SHORT_ALIASES.get(short, short)
        spec = next((s for s in TABLE if s.short == short), None)
        if spec is None:
            close = difflib.get_close_matches(short, [s.short for s in TABLE], n=5)
            raise UnknownSiteError(f"No site kind {short!r}; closest: {close}. Kinds: {[s.short for s in TABLE]}")
        if ("{L}" in spec.name) != (layer is not None):
            raise UnknownSiteError(
                f"{short!r} {'needs a layer' if layer is None else 'has no layer'}: "
                f"use cache[{short!r}{', 3' if layer is None else ''}]."
            )
        if layer is not None and not -self.n_layers <= layer < self.n_layers:
            raise UnknownSiteError(f"Layer {layer} is out of range: this model has layers 0..{self.n_layers - 1}.")
        return self.resolve(_fill(spec.name, None if layer is None else layer % self.n_layers))

    def select(self, names: None | str | Iterable[str] | Callable[[str], bool]) -> list[Site]:
        """Sites for `None` (standard), a name, a list of names, or a filter over names."""
        if names is None:
            return self.standard()
        if callable(names):
            return [s for s in self.standard() if names(s.name)]
        if isinstance(names, str):
            names = [names]
        return list(dict.fromkeys(self.resolve(n) for n in names))

    def _exists(self, site: Site) -> bool:
        return not (self.parallel_residual and site.short in PARALLEL_ONLY_ABSENT)


def _fill(template: str, layer: int | None) -> str:
    return template if layer is None else template.replace("{L}", str(layer))

