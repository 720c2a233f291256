"""Model: the real HF model (Pythia or GPT-2) plus its tokenizer, with caching, gradients and interventions.

    >>> import interp
    >>> model = interp.load("toy")
    >>> logits, cache = model.run_with_cache("Hello, I am", names=["blocks.0.attn.hook_pattern"])
    >>> with model.hooks(fwd={"blocks.1.attn.hook_z": lambda z, hook: z * 0}):
    ...     ablated = model("Hello, I am")
    >>> bool((ablated != logits).any())
    True

The wrapped `model.hf` is never modified: hooks exist only inside `hooks()`, `run_with_cache`
and `run_with_cache_and_grads`, and forwards follow the caller's grad mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from interp import arch as arch_table
from interp.cache import ActivationCache, Provenance
from interp.errors import InputError
from interp.hooks import Dims, Dispatcher, HookFn
from interp.options import device_of, dtype_of
from interp.sites import Site, Sites
from interp.tokens import Prompt, Tokenizing, Tokens
from interp.weights import WeightViews

__all__ = ["Model", "Prompt", "Tokens"]

Names = None | str | Iterable[str] | Callable[[str], bool]
SiteKey = str | Callable[[str], bool]
Hooks = dict[SiteKey, HookFn | list[HookFn]] | list[tuple[SiteKey, HookFn]]


class _Stop(Exception):
    """Raised by a pre-hook to end the forward pass early (stop_at_layer)."""

    def __init__(self, resid: Tensor):
        self.resid = resid


class Model(Tokenizing, WeightViews):
    """A Pythia (GPT-NeoX) or GPT-2 model you can see inside. Build with `interp.load` or `Model(hf, tokenizer)`."""

    def __init__(self, hf: nn.Module, tokenizer=None, *, name: str | None = None, revision: str | None = None,
                 tokenizer_source: str | None = None):
        self.arch = arch_table.of(hf)
        if tokenizer is not None and not callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
            raise InputError(f"tokenizer={tokenizer!r} is not a tokenizer: pass a transformers tokenizer, e.g. "
                             "AutoTokenizer.from_pretrained(...), or load the model with interp.load(name).")
        self.hf, self.tokenizer, self.tokenizer_source = hf, tokenizer, tokenizer_source
        self.name = name or getattr(hf.config, "name_or_path", None) or self.arch.kind
        self.revision = revision
        cfg = hf.config
        self.n_layers, self.n_heads, self.d_model = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size
        self.d_head, self.d_vocab = self.d_model // self.n_heads, cfg.vocab_size
        self.d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * self.d_model
        self.n_ctx = cfg.max_position_embeddings
        self.parallel_residual = self.arch.parallel_residual(cfg)
        rope = getattr(cfg, "rope_parameters", None) or {}
        rotary = self.arch.positional == "rotary"
        self.rotary_dim = int(self.d_head * rope.get("partial_rotary_factor", 1.0)) if rotary else 0
        self.rotary_base = float(rope.get("rope_theta", 10000.0)) if rotary else 0.0
        self.sites = Sites(self.arch, self.n_layers, self.n_heads, self.parallel_residual)
        self._hooks = Dispatcher(hf, Dims(self.arch, self.n_heads))
        if hf.training:
            warnings.warn(f"{type(hf).__name__} is in training mode, so dropout is active; call .eval() on it "
                          "for deterministic activations (interp.load returns eval models).", stacklevel=2)

    def __repr__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return (f"Model({self.name}{rev}: {self.arch.kind}, {self.n_layers} layers, {self.n_heads} heads x "
                f"{self.d_head}, d_model {self.d_model}, {self.dtype}, {self.device})")

    @property
    def device(self) -> torch.device:
        return self.hf.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.dtype

    def module(self, site: str) -> nn.Module:
        """The HF module a site is read from, by site name or HF path, e.g. `module("ln_final.hook_out")`."""
        return self.hf.get_submodule(self.sites.resolve(site).module)

    # ---- running --------------------------------------------------------------------------

    def __call__(self, x: Prompt | Tokens | Tensor) -> Float[Tensor, "batch pos d_vocab"]:
        return self.forward(x)

    def forward(self, x: Prompt | Tokens | Tensor) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of the real HF forward (plus the hooks of any enclosing `hooks()`), in the caller's grad mode."""
        return self._run(self.tokens(x))

    def loss(self, x: Prompt | Tokens | Tensor, per_token: bool = False) -> Tensor:
        """Next-token cross-entropy: the mean over real tokens, or (batch, pos - 1) with `per_token` (0 at padding)."""
        tokens = self.tokens(x)
        if tokens.ids.shape[1] < 2:
            raise InputError("The loss needs at least 2 tokens per prompt (it predicts token i+1 from 0..i).")
        logits = self._run(tokens)
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens.ids[:, 1:], reduction="none")
        real = tokens.attention_mask[:, :-1].bool() & tokens.attention_mask[:, 1:].bool()
        losses = losses * real
        return losses if per_token else losses.sum() / real.sum()

    def run_with_cache(
        self,
        x: Prompt | Tokens | Tensor,
        names: Names = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        stop_at_layer: int | None = None,
        fp32_scores: bool = False,
    ) -> tuple[Tensor, ActivationCache]:
        """Forward once and cache the named sites (every standard site when `names` is None).

        With `stop_at_layer=L` only blocks 0..L-1 run, and the first value returned is the residual
        stream entering block L. `fp32_scores=True` takes tapped attention scores in fp32 (HF eager
        takes them in the model's dtype, which is the default here too).

            >>> import interp
            >>> model = interp.load("toy")
            >>> logits, cache = model.run_with_cache("Hello, I am", names=lambda n: "resid" in n)
            >>> cache["resid_post", 1].shape
            torch.Size([1, 7, 96])
        """
        tokens, sites = self.tokens(x), self.sites.select(names)
        device, dtype = _check_target(device, dtype)
        stop_at_layer, sites = self._check_stop(stop_at_layer, sites, explicit=not (names is None or callable(names)))
        _check_flag("fp32_scores", fp32_scores)
        store: dict[str, Tensor] = {}

        def save(t: Tensor, hook: Site) -> None:
            store[hook.name] = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else None)

        with self._hooks.attach([(s, save) for s in sites], fp32_scores=fp32_scores):
            out = self._run(tokens, stop_at_layer)
        return out, self._cache(store, tokens, dtype)

    def run_with_cache_and_grads(
        self,
        x: Prompt | Tokens | Tensor,
        metric: Callable[[Tensor], Tensor],
        names: Names = None,
        device: str | torch.device | None = None,
    ) -> tuple[Tensor, ActivationCache, ActivationCache]:
        """Forward and backward once: `(metric value, activations, d metric / d activation)` at every named site.

        `metric(logits)` must return a scalar. No parameter gradient is computed or left on the model.

            >>> import interp
            >>> model = interp.load("toy")
            >>> value, cache, grads = model.run_with_cache_and_grads(
            ...     "Hello, I am", lambda logits: logits[0, -1].logsumexp(-1), names=lambda n: "resid" in n)
            >>> grads["resid_pre", 0].shape == cache["resid_pre", 0].shape
            True
        """
        tokens, sites = self.tokens(x), self.sites.select(names)
        device, _ = _check_target(device, None)
        acts: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}

        def save(t: Tensor, hook: Site) -> None:
            acts[hook.name] = t.detach().to(device)

        def save_grad(g: Tensor, hook: Site) -> None:
            grads[hook.name] = g.detach().to(device)

        leaf: list[Tensor] = []

        def graph_input(t: Tensor, hook: Site) -> Tensor:  # the embedding as a leaf: grads stop there
            leaf.append(t.detach().requires_grad_(True))
            return leaf[-1]

        inputs = [s for s in self.sites.all() if s.spec.role in ("embed", "pos_embed")]
        with torch.enable_grad(), self._hooks.attach([(s, graph_input) for s in inputs]), \
                self._hooks.attach([(s, save) for s in sites], [(s, save_grad) for s in sites]):
            value = metric(self._run(tokens))
            if not isinstance(value, Tensor) or value.numel() != 1 or not value.requires_grad:
                raise InputError(f"metric(logits) must return a scalar tensor computed from the logits; got "
                                 f"{_describe(value)}.")
            torch.autograd.grad(value.reshape(()), leaf, allow_unused=True)  # fires the site hooks, no weight grads
        return value.detach(), self._cache(acts, tokens, None), self._cache(grads, tokens, None)

    def run_with_hooks(self, x: Prompt | Tokens | Tensor, fwd_hooks=(), bwd_hooks=(), fp32_scores: bool = False):
        """TransformerLens's spelling: logits with `[(site, fn), ...]` hooks attached for one forward."""
        with self.hooks(fwd=list(fwd_hooks), bwd=list(bwd_hooks), fp32_scores=fp32_scores):
            return self.forward(x)

    @contextmanager
    def hooks(self, fwd: Hooks | None = None, bwd: Hooks | None = None, fp32_scores: bool = False):
        """Attach forward and backward hooks for the block; nestable; all removed on any exit, in any order.

            >>> import interp
            >>> model = interp.load("toy")
            >>> with model.hooks(fwd={"blocks.0.hook_mlp_out": lambda x, hook: x * 0}):
            ...     logits = model("Hello")
        """
        _check_flag("fp32_scores", fp32_scores)
        with self._hooks.attach(self._pairs(fwd or {}), self._pairs(bwd or {}), fp32_scores=fp32_scores):
            yield self

    def generate(self, x: Prompt | Tokens, max_new_tokens: int = 20, **kwargs) -> Tokens:
        """Continue prompts with HF `generate` (greedy unless told); works inside `hooks()`."""
        tokens = self.tokens(x)
        if tokens.ids.shape[1] + max_new_tokens > self.n_ctx:
            raise InputError(f"{tokens.ids.shape[1]} tokens + max_new_tokens={max_new_tokens} exceeds this model's "
                             f"context (n_ctx={self.n_ctx}); generate fewer tokens or shorten the prompt.")
        if self.tokenizer is None and "pad_token_id" not in kwargs:
            kwargs["pad_token_id"] = self.hf.config.eos_token_id or 0
        kwargs = {"do_sample": False, "pad_token_id": kwargs.get("pad_token_id") or self._pad_id(), **kwargs}
        if self._hooks.inside_layers():
            kwargs["use_cache"] = False  # the attention tap recomputes from the whole sequence
        with torch.no_grad():
            ids = self.hf.generate(input_ids=tokens.ids, attention_mask=tokens.attention_mask,
                                   max_new_tokens=max_new_tokens, **kwargs)
        new = torch.ones_like(ids[:, tokens.ids.shape[1]:])
        return Tokens(ids, torch.cat([tokens.attention_mask, new], dim=1))

    # ---- internals ------------------------------------------------------------------------

    def _pairs(self, hooks: Hooks) -> list[tuple[Site, HookFn]]:
        """Validate every key and function before anything is attached; a dict or TL's list of pairs."""
        items = hooks.items() if isinstance(hooks, dict) else hooks
        if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
            raise InputError(f"Hooks are {{site: fn}} or [(site, fn), ...]; got {hooks!r}.")
        pairs = []
        for key, fns in items:
            targets = self.sites.select(key) if callable(key) else [self.sites.resolve(key)]
            for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
                if not callable(fn):
                    raise InputError(f"The hook for {key!r} is {fn!r}, not a function fn(tensor, hook).")
                pairs += [(site, fn) for site in targets]
        return pairs

    def _run(self, tokens: Tokens, stop_at_layer: int | None = None) -> Tensor:
        with ExitStack() as stack:
            if stop_at_layer is not None:
                stack.enter_context(self._stop_before(stop_at_layer))
            try:
                return self.hf(**tokens.hf_inputs(), use_cache=False).logits
            except _Stop as stop:
                return stop.resid

    def _check_stop(self, stop_at_layer: int | None, sites: list[Site], explicit: bool) -> tuple[int | None, list]:
        """A valid stop (negative counts from the end, as in TL); named sites past it are refused, others dropped."""
        if stop_at_layer is None:
            return None, sites
        n = self.n_layers
        if isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int) or not -n <= stop_at_layer <= n:
            raise InputError(f"stop_at_layer={stop_at_layer!r} must be an int in {-n}..{n} (0 stops before block 0, "
                             f"{n} before the final LayerNorm, -1 before the last block).")
        stop = stop_at_layer % (n + 1) if stop_at_layer >= 0 else n + stop_at_layer
        late = [s for s in sites if (s.layer if s.layer is not None else (n if s.order[0] > 0 else -1)) >= stop]
        if late and explicit:
            raise InputError(f"{[s.name for s in late[:3]]} would never fire with stop_at_layer={stop_at_layer}: the "
                             f"forward stops before block {stop}. Drop them or stop later.")
        return stop, [s for s in sites if s not in late]

    @contextmanager
    def _stop_before(self, layer: int):
        role, index = ("layer", layer) if layer < self.n_layers else ("ln_final", None)
        module = self.arch.module(self.hf, role, index)

        def stop(m, args, kwargs):
            raise _Stop((args[0] if args else kwargs["hidden_states"]).detach())

        handle = module.register_forward_pre_hook(stop, prepend=True, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _cache(self, store: dict[str, Tensor], tokens: Tokens, dtype: torch.dtype | None) -> ActivationCache:
        dtype_name = str(dtype or self.dtype).removeprefix("torch.")
        return ActivationCache(_compact(store), self._provenance(tokens, dtype_name), self)

    def _provenance(self, tokens: Tokens, dtype: str) -> Provenance:
        return Provenance(
            model=self.name, revision=self.revision, dtype=dtype, n_layers=self.n_layers, n_heads=self.n_heads,
            parallel_residual=self.parallel_residual, tokens=tokens.ids.tolist(),
            attention_mask=tokens.attention_mask.tolist(), arch=self.arch.kind,
        )


def _check_target(device, dtype) -> tuple:
    """Validate where a cache goes (the same choices `interp.load` takes), before any work."""
    return device_of(device), dtype_of(dtype)


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise InputError(f"{name}={value!r} must be True or False.")


def _describe(value) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def _compact(store: dict[str, Tensor]) -> dict[str, Tensor]:
    """Copy views that would keep a larger tensor alive (q alone holds all of the fused qkv)."""
    users: dict[int, list[str]] = {}
    for name, t in store.items():
        users.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    for names in users.values():
        storage = store[names[0]].untyped_storage().nbytes()
        if sum(store[n].nbytes for n in names) < storage:
            for n in names:
                store[n] = store[n].clone()
    return store
