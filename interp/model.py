"""Model: the real HF GPT-NeoX model plus its tokenizer, with tokens, caching and interventions.

    >>> model = interp.load("toy")
    >>> logits, cache = model.run_with_cache("Hello, I am", names=["blocks.0.attn.hook_pattern"])
    >>> with model.hooks(fwd={"blocks.1.attn.hook_z": zero_head_3}):
    ...     ablated = model("Hello, I am")

The wrapped `model.hf` is never modified: hooks exist only inside `hooks()` / `run_with_cache`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import GPTNeoXForCausalLM

from interp.cache import ActivationCache, Provenance
from interp.errors import InputError, UnsupportedModelError
from interp.hooks import HookFn, hooked
from interp.sites import Site, Sites
from interp.text import render_token
from interp.weights import WeightViews

Prompt = str | Sequence[str]
SiteKey = str | Callable[[str], bool]


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


class _Stop(Exception):
    """Raised by a pre-hook to end the forward pass early (stop_at_layer)."""

    def __init__(self, resid: Tensor):
        self.resid = resid


class Model(WeightViews):
    """A Pythia (GPT-NeoX) model you can see inside. Build with `interp.load` or `Model(hf, tokenizer)`."""

    def __init__(self, hf: GPTNeoXForCausalLM, tokenizer=None, *, name: str | None = None,
                 revision: str | None = None):
        if not isinstance(hf, GPTNeoXForCausalLM):
            raise UnsupportedModelError(
                f"{type(hf).__name__} is not supported: pythia-interp hooks GPTNeoXForCausalLM models "
                "(Pythia, GPT-NeoX-20B and other `model_type: gpt_neox` checkpoints)."
            )
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name or hf.config.name_or_path or "gpt_neox"
        self.revision = revision
        cfg = hf.config
        self.n_layers, self.n_heads, self.d_model = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size
        self.d_head, self.d_mlp, self.d_vocab = self.d_model // self.n_heads, cfg.intermediate_size, cfg.vocab_size
        self.rotary_dim = int(self.d_head * cfg.rope_parameters.get("partial_rotary_factor", 1.0))
        self.rotary_base = float(cfg.rope_parameters["rope_theta"])
        self.sites = Sites(self.n_layers, self.n_heads, cfg.use_parallel_residual)

    def __repr__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return (f"Model({self.name}{rev}: {self.n_layers} layers, {self.n_heads} heads x {self.d_head}, "
                f"d_model {self.d_model}, {self.dtype}, {self.device})")

    @property
    def device(self) -> torch.device:
        return self.hf.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.dtype

    # ---- tokens ---------------------------------------------------------------------------

    def to_tokens(self, text: Prompt, prepend_bos: bool = False) -> Tokens:
        """Tokenize one prompt or a batch (left-padded); no BOS unless asked, as Pythia was trained."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not t for t in texts):
            raise InputError(f"Empty prompt in {texts!r}: give at least one non-empty string.")
        tok = self._require_tokenizer()
        rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        if prepend_bos:
            rows = [[self._bos_id()] + r for r in rows]
        return self._pad(rows)

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
        """Coerce text, a batch of ids or Tokens to validated Tokens on the model's device."""
        if isinstance(x, Tokens):
            tokens = x
        elif isinstance(x, Tensor):
            ids = x[None] if x.ndim == 1 else x
            tokens = Tokens(ids.long(), torch.ones_like(ids, dtype=torch.long))
        elif isinstance(x, (list, tuple)) and x and isinstance(x[0], int):
            return self.tokens(torch.tensor(x))
        else:
            tokens = self.to_tokens(x)
        self._check(tokens)
        return tokens.to(self.device)

    def _check(self, tokens: Tokens) -> None:
        """Refuse input the model cannot run, before anything is attached."""
        if tokens.ids.ndim != 2 or tokens.ids.shape[1] == 0:
            raise InputError(f"Token ids must be (batch, pos) with pos >= 1; got shape {tuple(tokens.ids.shape)}.")
        n_ctx = self.hf.config.max_position_embeddings
        if tokens.ids.shape[1] > n_ctx:
            raise InputError(
                f"Sequence of {tokens.ids.shape[1]} tokens is longer than this model's context "
                f"(max_position_embeddings={n_ctx}); truncate or split it."
            )
        bad = tokens.ids[(tokens.ids < 0) | (tokens.ids >= self.d_vocab)]
        if bad.numel():
            raise InputError(f"Token id {bad[0].item()} is outside the vocabulary 0..{self.d_vocab - 1}.")

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
        tok = self.tokenizer
        return next(i for i in (tok.pad_token_id, tok.eos_token_id, self.hf.config.eos_token_id, 0) if i is not None)

    # ---- running --------------------------------------------------------------------------

    def __call__(self, x: Prompt | Tokens | Tensor) -> Float[Tensor, "batch pos d_vocab"]:
        return self.forward(x)

    def forward(self, x: Prompt | Tokens | Tensor) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of the unmodified HF forward (plus any hooks of an enclosing `hooks()`)."""
        tokens = self.tokens(x)
        with torch.no_grad():
            return self.hf(**tokens.hf_inputs(), use_cache=False).logits

    def run_with_cache(
        self,
        x: Prompt | Tokens | Tensor,
        names: None | str | Iterable[str] | Callable[[str], bool] = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        stop_at_layer: int | None = None,
    ) -> tuple[Tensor, ActivationCache]:
        """Forward once and cache the named sites (all standard sites when `names` is None).

        With `stop_at_layer=L` only blocks 0..L-1 run, and the first value returned is the
        residual stream entering block L instead of the logits.
        """
        tokens, sites = self.tokens(x), self.sites.select(names)
        if stop_at_layer is not None and not 0 <= stop_at_layer <= self.n_layers:
            raise InputError(f"stop_at_layer={stop_at_layer} must be in 0..{self.n_layers}.")
        store: dict[str, Tensor] = {}

        def save(t: Tensor, hook: Site) -> None:
            store[hook.name] = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else None)

        with torch.no_grad(), self._hooked([(s, save) for s in sites]), ExitStack() as stack:
            if stop_at_layer is not None:
                stack.enter_context(self._stop_before(stop_at_layer))
            try:
                out = self.hf(**tokens.hf_inputs(), use_cache=False).logits
            except _Stop as stop:
                out = stop.resid
        dtype_name = str(dtype or self.dtype).removeprefix("torch.")
        return out, ActivationCache(_compact(store), self._provenance(tokens, dtype_name))

    @contextmanager
    def hooks(self, fwd: dict[SiteKey, HookFn | list[HookFn]]):
        """Attach hooks for the duration of the block; nestable; all removed on any exit.

            >>> with model.hooks(fwd={"blocks.0.hook_mlp_out": lambda x, hook: x * 0}):
            ...     logits = model("Hello")
        """
        pairs = []
        for key, fns in fwd.items():
            targets = self.sites.select(key) if callable(key) else [self.sites.resolve(key)]
            for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
                pairs += [(site, fn) for site in targets]
        with self._hooked(pairs):
            yield self

    def generate(self, x: Prompt | Tokens, max_new_tokens: int = 20, **kwargs) -> Tokens:
        """Continue prompts with HF `generate` (greedy unless told); works inside `hooks()`."""
        tokens = self.tokens(x)
        kwargs = {"do_sample": False, "pad_token_id": self._pad_id(), **kwargs}
        with torch.no_grad():
            ids = self.hf.generate(input_ids=tokens.ids, attention_mask=tokens.attention_mask,
                                   max_new_tokens=max_new_tokens, **kwargs)
        new = torch.ones_like(ids[:, tokens.ids.shape[1]:])
        return Tokens(ids, torch.cat([tokens.attention_mask, new], dim=1))

    def _hooked(self, pairs: list[tuple[Site, HookFn]]):
        return hooked(self.hf, pairs)

    @contextmanager
    def _stop_before(self, layer: int):
        module = self.hf.gpt_neox.layers[layer] if layer < self.n_layers else self.hf.gpt_neox.final_layer_norm

        def stop(m, args):
            raise _Stop(args[0].detach())

        handle = module.register_forward_pre_hook(stop, prepend=True)
        try:
            yield
        finally:
            handle.remove()

    def _provenance(self, tokens: Tokens, dtype: str) -> Provenance:
        return Provenance(
            model=self.name, revision=self.revision, dtype=dtype, n_layers=self.n_layers, n_heads=self.n_heads,
            parallel_residual=self.hf.config.use_parallel_residual,
            tokens=tokens.ids.tolist(), attention_mask=tokens.attention_mask.tolist(),
        )


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
