"""The one table of hook sites: TransformerLens names, the module role each is read from, and how.

    >>> from interp.arch import NEOX
    >>> sites = Sites(NEOX, n_layers=6, n_heads=4, parallel_residual=True)
    >>> sites.resolve("gpt_neox.layers.3.mlp").name
    'blocks.3.hook_mlp_out'
    >>> [s.name for s in sites.select(lambda n: n.startswith("blocks.0.ln1"))]
    ['blocks.0.ln1.hook_scale', 'blocks.0.ln1.hook_normalized', 'blocks.0.ln1.hook_out']

Rows are in the model's computation order; module paths come from `interp.arch`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from interp.arch import Architecture
from interp.errors import SiteNotAvailableError, UnknownSiteError


class Tap(Enum):
    """How a site is read from the real module."""

    OUTPUT = "output"  # forward hook: the module's output
    INPUT = "input"  # forward pre-hook: the module's first input
    QKV_INPUT = "qkv_input"  # per-head copies of ln1's input, feeding that head's q, k or v only
    LN = "ln"  # LayerNorm internals (scale, normalized), from its input
    QKV = "qkv"  # a head's slice of the fused qkv output
    INSIDE = "inside"  # inside attention (rotated q/k, scores, pattern): the eager tap
    RESULT = "result"  # per-head output z_h W_O[h]
    RESID_MID = "resid_mid"  # ln2's input on sequential models; a change also reaches the residual
    MLP_IN = "mlp_in"  # ln2's input as the MLP alone reads it


@dataclass(frozen=True)
class SiteSpec:
    """One row; `{L}` in a name stands for the layer, `role` names a module in `interp.arch`."""

    name: str
    role: str
    tap: Tap
    axes: str
    short: str  # the key of `cache[short, L]`
    named_only: bool = False  # costly or redundant: cached only when named, never by a filter


def _spec(name, role, tap, axes, short, named_only=False) -> SiteSpec:
    return SiteSpec(name, role, tap, axes, short, named_only)


def _ln_rows(prefix: str, role: str, short: str) -> list[SiteSpec]:
    return [
        _spec(f"{prefix}.hook_scale", role, Tap.LN, "batch pos 1", f"{short}_scale"),
        _spec(f"{prefix}.hook_normalized", role, Tap.LN, "batch pos d_model", f"{short}_normalized"),
        _spec(f"{prefix}.hook_out", role, Tap.OUTPUT, "batch pos d_model", f"{short}_out"),
    ]


TABLE: tuple[SiteSpec, ...] = (
    _spec("hook_embed", "embed", Tap.OUTPUT, "batch pos d_model", "embed"),
    _spec("hook_pos_embed", "pos_embed", Tap.OUTPUT, "batch pos d_model", "pos_embed"),
    _spec("blocks.{L}.hook_resid_pre", "layer", Tap.INPUT, "batch pos d_model", "resid_pre"),
    _spec("blocks.{L}.attn.hook_q_input", "ln1", Tap.QKV_INPUT, "batch pos head d_model", "q_input", True),
    _spec("blocks.{L}.attn.hook_k_input", "ln1", Tap.QKV_INPUT, "batch pos head d_model", "k_input", True),
    _spec("blocks.{L}.attn.hook_v_input", "ln1", Tap.QKV_INPUT, "batch pos head d_model", "v_input", True),
    *_ln_rows("blocks.{L}.ln1", "ln1", "ln1"),
    _spec("blocks.{L}.attn.hook_q", "qkv", Tap.QKV, "batch pos head d_head", "q"),
    _spec("blocks.{L}.attn.hook_k", "qkv", Tap.QKV, "batch pos head d_head", "k"),
    _spec("blocks.{L}.attn.hook_v", "qkv", Tap.QKV, "batch pos head d_head", "v"),
    _spec("blocks.{L}.attn.hook_rot_q", "attn", Tap.INSIDE, "batch pos head d_head", "rot_q"),
    _spec("blocks.{L}.attn.hook_rot_k", "attn", Tap.INSIDE, "batch pos head d_head", "rot_k"),
    _spec("blocks.{L}.attn.hook_attn_scores", "attn", Tap.INSIDE, "batch head q_pos k_pos", "attn_scores"),
    _spec("blocks.{L}.attn.hook_pattern", "attn", Tap.INSIDE, "batch head q_pos k_pos", "pattern"),
    _spec("blocks.{L}.attn.hook_z", "out", Tap.INPUT, "batch pos head d_head", "z"),
    _spec("blocks.{L}.attn.hook_result", "out", Tap.RESULT, "batch pos head d_model", "result", True),
    _spec("blocks.{L}.hook_attn_out", "out", Tap.OUTPUT, "batch pos d_model", "attn_out"),
    _spec("blocks.{L}.hook_resid_mid", "ln2", Tap.RESID_MID, "batch pos d_model", "resid_mid"),
    _spec("blocks.{L}.hook_mlp_in", "ln2", Tap.MLP_IN, "batch pos d_model", "mlp_in", True),
    *_ln_rows("blocks.{L}.ln2", "ln2", "ln2"),
    _spec("blocks.{L}.mlp.hook_pre", "fc_in", Tap.OUTPUT, "batch pos d_mlp", "pre"),
    _spec("blocks.{L}.mlp.hook_post", "act", Tap.OUTPUT, "batch pos d_mlp", "post"),
    _spec("blocks.{L}.hook_mlp_out", "mlp", Tap.OUTPUT, "batch pos d_model", "mlp_out"),
    _spec("blocks.{L}.hook_resid_post", "layer", Tap.OUTPUT, "batch pos d_model", "resid_post"),
    *_ln_rows("ln_final", "ln_final", "ln_final"),
    _spec("hook_logits", "unembed", Tap.OUTPUT, "batch pos d_vocab", "logits", True),
)
ORDER = {spec.name: i for i, spec in enumerate(TABLE)}

# Module roles whose output is also an alias of a site (beyond each OUTPUT row's own module).
ROLE_ALIASES = {"attn": "blocks.{L}.hook_attn_out", "fc_out": "blocks.{L}.hook_mlp_out"}
SHORT_ALIASES = {
    "scores": "attn_scores", "mlp_pre": "pre", "mlp_post": "post",
    "ln1": "ln1_out", "ln2": "ln2_out", "ln_final": "ln_final_out", "normalized": "ln_final_normalized",
    "scale": "ln_final_scale",
}
INSIDE_ROTARY = {"rot_q", "rot_k"}


@dataclass(frozen=True)
class Site:
    """A concrete site, e.g. `blocks.3.attn.hook_z` at layer 3; passed to hook functions as `hook`."""

    name: str
    spec: SiteSpec
    layer: int | None
    module: str  # the HF path of the module it is read from
    n_heads: int = 1

    @property
    def tap(self) -> Tap:
        return self.spec.tap

    @property
    def short(self) -> str:
        return self.spec.short

    @property
    def order(self) -> tuple[int, int]:
        """Computation order: layer first (global sites before or after every layer), then the table row."""
        row = ORDER[self.spec.name]
        layer = self.layer if self.layer is not None else (-1 if self.spec.role in ("embed", "pos_embed") else 10**6)
        return layer, row


class Sites:
    """The sites of one model, with name resolution and error messages that suggest."""

    def __init__(self, arch: Architecture, n_layers: int, n_heads: int = 1, parallel_residual: bool = True):
        self.arch, self.n_layers, self.parallel_residual = arch, n_layers, parallel_residual
        self._by_name: dict[str, Site] = {}
        self._aliases: dict[str, str] = {}
        self._missing: dict[str, str] = {}  # name -> why it does not exist on this model
        for spec in TABLE:
            for layer in range(n_layers) if "{L}" in spec.name else [None]:
                name = _fill(spec.name, layer)
                why = self._why_absent(spec)
                if why:
                    self._missing[name] = why
                    continue
                site = Site(name, spec, layer, arch.path(spec.role, layer), n_heads)
                self._by_name[name] = site
                if spec.tap is Tap.OUTPUT:  # a module path means that module's output
                    self._aliases[site.module] = name
        for layer in range(n_layers):
            for role, name in ROLE_ALIASES.items():
                self._aliases[arch.path(role, layer)] = _fill(name, layer)
        self._aliases.update(dict(arch.aliases))

    def _why_absent(self, spec: SiteSpec) -> str | None:
        if spec.tap is Tap.RESID_MID and self.parallel_residual:
            return ("this model uses a parallel residual, x + attn(ln1(x)) + mlp(ln2(x)), so there is no residual "
                    "stream between attention and MLP. Use blocks.L.hook_resid_pre (what both read), "
                    "blocks.L.hook_attn_out, or blocks.L.hook_mlp_in (the MLP's input).")
        if spec.short in INSIDE_ROTARY and self.arch.positional != "rotary":
            return (f"{self.arch.kind} has learned position embeddings, not rotary ones, so q and k are not rotated. "
                    "Use blocks.L.attn.hook_q / hook_k (and hook_pos_embed for the positions).")
        if not self.arch.has(spec.role):
            return f"{self.arch.kind} has no {spec.role} module (e.g. no position embedding on rotary models)."
        return None

    def all(self) -> list[Site]:
        """Every site that exists on this model, in computation order."""
        return sorted(self._by_name.values(), key=lambda s: s.order)

    def standard(self) -> list[Site]:
        """The sites `names=None` caches: all but the named-only ones (costly or redundant; a filter or a name
        selects them)."""
        return [s for s in self.all() if not s.spec.named_only]

    def resolve(self, name: str) -> Site:
        """Site for a TL-style name or an HF module path; raise with close matches if unknown."""
        if not isinstance(name, str):
            raise UnknownSiteError(f"Site names are strings; got {name!r} ({type(name).__name__}).")
        key = self._aliases.get(name, name)
        site = self._by_name.get(key)
        if site is not None:
            return site
        if key in self._missing:
            raise SiteNotAvailableError(f"{name!r} does not exist on this model: {self._missing[key]}")
        close = difflib.get_close_matches(name, [*self._by_name, *self._aliases], n=5, cutoff=0.6)
        close += [s.name for s in self._by_name.values() if s.short == SHORT_ALIASES.get(name, name)][:2]
        raise UnknownSiteError(
            f"No hook site {name!r}. Closest valid names on this model: {close or ['blocks.0.hook_resid_pre']}. "
            "Sites use TransformerLens names (see interp.sites.TABLE) or HF module paths."
        )

    def short(self, short: str, layer: int | None = None, sub: str | None = None) -> Site:
        """Site for a short key: `("resid_pre", 3)`, or TL's `("scale", 3, "ln1")`."""
        if sub is not None:
            short = f"{sub}_{short}"
        elif layer is not None and short in ("scale", "normalized"):
            raise UnknownSiteError(f"cache[{short!r}, {layer}] is ambiguous: say which LayerNorm, "
                                   f"cache[{short!r}, {layer}, 'ln1'] or cache[{short!r}, {layer}, 'ln2'].")
        short = SHORT_ALIASES.get(short, short)
        spec = next((s for s in TABLE if s.short == short), None)
        if spec is None:
            kinds = sorted({s.short for s in TABLE})
            close = difflib.get_close_matches(short, kinds, n=5)
            raise UnknownSiteError(f"No site kind {short!r}; closest: {close}. Kinds: {kinds}")
        if ("{L}" in spec.name) != (layer is not None):
            raise UnknownSiteError(
                f"{short!r} {'needs a layer' if layer is None else 'has no layer'}: "
                f"use cache[{short!r}{', 3' if layer is None else ''}]."
            )
        if layer is not None and not -self.n_layers <= layer < self.n_layers:
            raise UnknownSiteError(f"Layer {layer} is out of range: this model has layers 0..{self.n_layers - 1}.")
        return self.resolve(_fill(spec.name, None if layer is None else layer % self.n_layers))

    def select(self, names: None | str | Iterable[str] | Callable[[str], bool]) -> list[Site]:
        """Sites for `None` (standard), a name, a list of names, or a filter over names; in computation order."""
        if names is None:
            return self.standard()
        if callable(names):  # a filter sees every site, the named-only ones too
            return [s for s in self.all() if names(s.name)]
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, Iterable):
            raise UnknownSiteError(f"names={names!r}: give None (standard sites), a site name, a list of names, or "
                                   "a filter such as lambda name: 'resid' in name.")
        return sorted(dict.fromkeys(self.resolve(n) for n in names), key=lambda s: s.order)


def _fill(template: str, layer: int | None) -> str:
    return template if layer is None else template.replace("{L}", str(layer))
