"""Sweepable analyses by name, with the parameters that enter the results store's key.

    >>> analysis("attention").defaults["seq_len"], sorted(ANALYSES)[:2]
    (50, ['attention', 'circuit'])
    >>> import interp
    >>> frame = analysis("attention").run(interp.load("toy"))
    >>> frame.columns.tolist()[:4]
    ['layer', 'head', 'name', 'prev_token']

Each analysis is `run(model, **params) -> DataFrame`. The ones that live in other subpackages are
imported only when used; if that subpackage is missing, asking for them raises an
`AnalysisUnavailableError` naming the ones that work. Any callable sweeps too (`Analysis.of`):
it is keyed by its qualified name and a hash of its code, so editing it invalidates old results;
pass whatever it depends on through `params=` so that enters the key as well.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from analyses.sweep.store import Key, data_hash
from interp.errors import InputError, InterpError

DEFAULT_PROMPTS = (
    "The return value of the function is the value of the last expression. The return value of the function is",
    "A list is a mutable sequence of items. A tuple is an immutable sequence of items.",
    "import os\nimport sys\n\n\ndef main():\n    return 0\n",
)


class AnalysisUnavailableError(InterpError, ImportError):
    """A registered analysis whose subpackage is not installed (yet)."""


@dataclass(frozen=True)
class Analysis:
    """A sweepable analysis: `run(model, **params)` returns a DataFrame (one checkpoint's rows)."""

    name: str
    run: Callable[..., pd.DataFrame]
    defaults: Mapping[str, object] = field(default_factory=dict)
    version: str = "1"
    data: tuple[str, ...] = ()  # parameters that are data (prompts): hashed into the key, not spelled in it
    figures: Callable | None = None  # figures(sweep) -> list of plotly figures for sweep.html
    description: str = ""
    open_params: bool = False  # accept any parameter (callables)

    @classmethod
    def of(cls, fn: Callable) -> Analysis:
        """Wrap a callable `fn(model, **params)`; keyed by its qualified name and a hash of its code."""
        if isinstance(fn, Analysis):
            return fn
        name = f"{getattr(fn, '__module__', None) or 'callable'}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        return cls(name.replace("<", "").replace(">", ""), _framed(fn), version=_code_hash(fn), open_params=True)

    def bind(self, params: Mapping[str, object] | None) -> dict:
        """Defaults overlaid with `params`; an unknown parameter names the valid ones."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown and not self.open_params:
            raise InputError(
                f"analysis {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are {', '.join(self.defaults) or '(none)'}."
            )
        return {**self.defaults, **params}

    def key(self, params: Mapping[str, object], dtype: str) -> Key:
        """The store key of this analysis with bound `params` on weights loaded as `dtype`."""
        spelled = {k: _plain(v) for k, v in params.items() if k not in self.data}
        data = {k: _plain(params[k]) for k in self.data if k in params}
        return Key(self.name, {**spelled, "dtype": dtype}, data_hash(data) if data else "none", self.version)


@dataclass(frozen=True)
class Lazy:
    """A registered analysis built from another subpackage, imported on first use."""

    name: str
    requires: tuple[str, ...]  # the subpackage it needs (any one of these module names)
    build: str  # "module:function" returning the Analysis
    description: str

    def load(self) -> Analysis:
        """Build the Analysis, or say which subpackage is missing and what works now."""
        if not any(_importable(m) for m in self.requires):
            ready = ", ".join(n for n, a in ANALYSES.items() if isinstance(a, Analysis))
            raise AnalysisUnavailableError(
                f"analysis {self.name!r} needs {' or '.join(self.requires)}, which this installation does not "
                f"have; analyses available now: {ready}."
            )
        module, function = self.build.split(":")
        return getattr(importlib.import_module(module), function)()


ANALYSES: dict[str, Analysis | Lazy] = {}


def register(entry: Analysis | Lazy) -> Analysis | Lazy:
    """Add an analysis to the registry under its name (replacing one of the same name).

    >>> entry = register(Analysis("n_layers", lambda model: pd.DataFrame({"n_layers": [model.n_layers]})))
    >>> analysis("n_layers").defaults, ANALYSES.pop("n_layers").name
    ({}, 'n_layers')
    """
    ANALYSES[entry.name] = entry
    return entry


def analysis(name_or_fn: str | Callable | Analysis) -> Analysis:
    """The Analysis a name, a callable or an Analysis means."""
    if isinstance(name_or_fn, Analysis):
        return name_or_fn
    if callable(name_or_fn):
        return Analysis.of(name_or_fn)
    entry = ANALYSES.get(name_or_fn)
    if entry is None:
        raise InputError(
            f"No analysis {name_or_fn!r}; choose one of {', '.join(ANALYSES)}, or pass a function model -> DataFrame."
        )
    return entry.load() if isinstance(entry, Lazy) else entry


def available(name: str) -> bool:
    """Whether a registered analysis can run here (its subpackage, if any, is installed).

    >>> available("attention"), available("no-such-analysis")
    (True, False)
    """
    entry = ANALYSES.get(name)
    return isinstance(entry, Analysis) or isinstance(entry, Lazy) and any(_importable(m) for m in entry.requires)


def as_frame(out) -> pd.DataFrame:
    """An analysis output as a DataFrame: a frame, a result with `.to_frame()`, or a dict of scalars."""
    if isinstance(out, pd.DataFrame):
        return out.reset_index(drop=True)
    if hasattr(out, "to_frame"):
        return out.to_frame().reset_index(drop=True)
    if isinstance(out, Mapping):
        return pd.DataFrame([dict(out)])
    raise InputError(f"an analysis returned {type(out).__name__}; return a DataFrame, a result or a dict.")


def _framed(fn: Callable) -> Callable[..., pd.DataFrame]:
    """fn with its output turned into a DataFrame (kept importable by name for pickling when it is)."""
    return _Framed(fn)


@dataclass(frozen=True)
class _Framed:
    fn: Callable

    def __call__(self, model, **params) -> pd.DataFrame:
        return as_frame(self.fn(model, **params))


def _code_hash(fn: Callable) -> str:
    """12 hex digits over a function's bytecode, constants and names (its closure is not seen)."""
    code = getattr(fn, "__code__", None) or getattr(vars(type(fn)).get("__call__"), "__code__", None)
    if code is None:
        return "1"
    text = repr((code.co_code, _consts(code), code.co_names))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _consts(code) -> tuple:
    """Constants of a code object, nested code objects replaced by their own bytecode."""
    return tuple((c.co_code, _consts(c)) if hasattr(c, "co_code") else repr(c) for c in code.co_consts)


def _plain(value):
    """JSON-able form of a parameter value (tuples as lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _attention(model, *, prompts=None, seq_len=50, batch=4, seed=0, exclude_first=False, exclude_current=False,
               error_measure="mul") -> pd.DataFrame:
    """Head detector scores, one row per (layer, head); on repeated random tokens unless `prompts` are given."""
    from analyses.attention import detect_heads

    x = None if prompts is None else list(prompts)
    return detect_heads(model, x, seq_len=seq_len, batch=batch, seed=seed, exclude_first=exclude_first,
                        exclude_current=exclude_current, error_measure=error_measure).to_frame()


def _lens(model, *, prompts=DEFAULT_PROMPTS, apply_ln=True) -> pd.DataFrame:
    """Logit lens, one row per layer boundary: means over the prompts' real positions."""
    from analyses.lens import logit_lens

    return logit_lens(model, list(prompts), apply_ln=apply_ln).layer_means()


def figures_from(kind: str, module: str = "analyses.sweep.figures") -> Callable:
    """`figures(sweep)` calling `<module>.<kind>` (imported only when drawing)."""

    def figures(result) -> list:
        return getattr(importlib.import_module(module), kind)(result)

    return figures


register(Analysis("attention", _attention, {
    "prompts": None, "seq_len": 50, "batch": 4, "seed": 0, "exclude_first": False, "exclude_current": False,
    "error_measure": "mul"}, data=("prompts",), figures=figures_from("attention_figures"),
    description="head detector scores per layer and head (prev_token, duplicate_token, induction, ...)"))
register(Analysis("lens", _lens, {"prompts": DEFAULT_PROMPTS, "apply_ln": True}, data=("prompts",),
                  figures=figures_from("lens_figures"),
                  description="logit lens per layer: KL to the model, cross-entropy, entropy, top-1 agreement"))
register(Lazy("rope", ("analyses.rope",), "analyses.sweep.rope:rope",
              "RoPE use per head: rotary share, kernel argmax offset, dominant band, label"))
register(Lazy("patch", ("analyses.patching",), "analyses.sweep.circuits:patch",
              "activation patching per head on the induction task"))
register(Lazy("circuit", ("analyses.patching",), "analyses.sweep.circuits:circuit",
              "EAP-IG circuit per checkpoint: edge scores, circuit size at 80% faithfulness"))
