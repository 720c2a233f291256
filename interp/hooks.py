"""The hook manager: one dispatcher per model, one torch hook per module in use, every entry removed on exit.

    >>> import interp
    >>> model = interp.load("toy")
    >>> def ablate(z, hook):
    ...     z[:, :, 0] = 0.0
    ...     return z
    >>> with model.hooks(fwd={"blocks.1.attn.hook_z": ablate}):
    ...     logits = model("Hello, I am")

A hook is `fn(tensor, hook) -> tensor | None`, as in TransformerLens: `hook` is the `Site`. None
leaves the activation as it is (in-place edits count), a tensor of the same shape replaces it.
Backward hooks take the gradient at the site the same way. Each `attach()` adds an entry owned by
its thread; torch hooks live only while some entry needs them, and fire only the entries of the
thread that is running, in the model's computation order, so contexts nest, exit in any order and
threads do not see each other's hooks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import einops
import torch
from torch import Tensor, nn

from interp import attention
from interp.arch import Architecture
from interp.errors import HookShapeError, InputError
from interp.sites import Site, Tap
from interp.weights import out_weight, qkv_bias, qkv_weight

HookFn = Callable[[Tensor, Site], Tensor | None]


# Which torch hooks each kind of site needs: (module role, "pre" | "fwd").
NEEDS: dict[Tap, tuple[tuple[str | None, str], ...]] = {
    Tap.OUTPUT: ((None, "fwd"),),
    Tap.INPUT: ((None, "pre"),),
    Tap.QKV_INPUT: (("ln1", "pre"), ("qkv", "fwd")),
    Tap.LN: ((None, "pre"), (None, "fwd")),
    Tap.QKV: (("qkv", "fwd"),),
    Tap.INSIDE: (("attn", "pre"), ("qkv", "fwd"), ("out", "pre")),
    Tap.RESULT: (("out", "fwd"),),
    Tap.RESID_MID: (("ln2", "pre"), ("layer", "fwd")),
    Tap.MLP_IN: (("ln2", "pre"),),
}


@dataclass
class Entry:
    """One context's hooks: forward and backward functions per site, owned by one thread."""

    fwd: dict[Site, list[HookFn]]
    bwd: dict[Site, list[HookFn]]
    fp32_scores: bool = False
    thread: int = field(default_factory=threading.get_ident)
    index: dict[tuple[str, int | None], list[Site]] = field(default_factory=dict)

    def __post_init__(self):
        for site in sorted(self.sites(), key=lambda s: s.order):
            self.index.setdefault((site.spec.role, site.layer), []).append(site)

    def sites(self) -> set[Site]:
        return {*self.fwd, *self.bwd}


@dataclass
class Dims:
    """What the dispatcher needs to know of the model."""

    arch: Architecture
    n_heads: int


class Dispatcher:
    """Routes the real modules' torch hooks to the entries of the running thread, in computation order."""

    def __init__(self, hf: nn.Module, dims: Dims):
        self.hf, self.dims, self.arch = hf, dims, dims.arch
        self.entries: list[Entry] = []
        self._handles: dict[tuple[str, str], tuple[object, int]] = {}  # (path, kind) -> (handle, users)
        self._lock = threading.Lock()
        self._local = threading.local()

    # ---- attaching ------------------------------------------------------------------------

    @contextmanager
    def attach(self, fwd: list[tuple[Site, HookFn]], bwd: list[tuple[Site, HookFn]] = (), fp32_scores=False):
        """Add an entry for the block; its torch hooks are released on any exit, in any order."""
        if torch.is_inference_mode_enabled():
            raise _inference_mode()
        entry = Entry(_group(fwd), _group(bwd), fp32_scores)
        needs = sorted({need for site in entry.sites() for need in self._needs(site)})
        with self._lock:
            self.entries.append(entry)
            for need in needs:
                self._acquire(*need)
        self._state().clear()
        try:
            yield entry
        finally:
            with self._lock:
                self.entries.remove(entry)
                for need in needs:
                    self._release(*need)
            self._state().clear()

    def active(self) -> int:
        """Torch hooks this dispatcher holds on the model now (0 outside every context)."""
        return len(self._handles)

    def inside_layers(self) -> set[int]:
        """Layers whose attention internals the running thread taps."""
        return {s.layer for e in self._mine() for s in e.sites() if s.tap is Tap.INSIDE}

    def _needs(self, site: Site) -> list[tuple[str, str, str, int | None]]:
        out = []
        for role, kind in NEEDS[site.tap]:
            role = role or site.spec.role
            out.append((self.arch.path(role, site.layer), kind, role, site.layer))
        if site.spec.role == "pos_embed":  # the embedding's output says how many rows the batch has
            out.append((self.arch.path("embed"), "fwd", "embed", None))
        return out

    def _acquire(self, path: str, kind: str, role: str, layer: int | None) -> None:
        handle, users = self._handles.get((path, kind), (None, 0))
        if handle is None:
            module = self.hf.get_submodule(path)
            if kind == "pre":
                handle = module.register_forward_pre_hook(partial(self._pre, role, layer), with_kwargs=True)
            else:
                handle = module.register_forward_hook(partial(self._fwd, role, layer), with_kwargs=True)
        self._handles[(path, kind)] = (handle, users + 1)

    def _release(self, path: str, kind: str, role: str, layer: int | None) -> None:
        handle, users = self._handles[(path, kind)]
        if users > 1:
            self._handles[(path, kind)] = (handle, users - 1)
        else:
            handle.remove()
            del self._handles[(path, kind)]

    # ---- firing ---------------------------------------------------------------------------

    def _mine(self) -> list[Entry]:
        me = threading.get_ident()
        return [e for e in self.entries if e.thread == me]

    def _state(self) -> dict:
        if not hasattr(self._local, "state"):
            self._local.state = {}
        return self._local.state

    def _pairs(self, role: str, layer: int | None, taps: set[Tap]) -> list[tuple[Site, Entry]]:
        """(site, entry) for this thread's sites of one module role, in computation then context order."""
        pairs = [(s, i, e) for i, e in enumerate(self._mine()) for s in e.index.get((role, layer), ()) if s.tap in taps]
        return [(s, e) for s, _, e in sorted(pairs, key=lambda p: (p[0].order, p[1]))]

    def _fire(self, site: Site, entry: Entry, x: Tensor) -> tuple[Tensor, bool]:
        """Run one entry's forward hooks on a site; register its backward hooks. Returns (x, changed)."""
        if x.is_inference():  # the block opened outside torch.inference_mode(), the forward inside it
            raise _inference_mode()
        original, version = x, x._version
        for fn in entry.fwd.get(site, ()):
            new = apply_hook(fn, site, x)
            if new is not None:
                x = new
        if entry.bwd.get(site):
            if not torch.is_grad_enabled():
                raise InputError(
                    f"Backward hooks on {site.name} need gradients, but the forward ran under torch.no_grad(). "
                    "Run it with gradients enabled (model.run_with_cache_and_grads does)."
                )
            if x.requires_grad:
                x.register_hook(partial(self._backward, entry, site))
        return x, x is not original or original._version != version

    def _backward(self, entry: Entry, site: Site, grad: Tensor) -> Tensor | None:
        """A backward hook runs only while its context is open (a backward after the block sees none)."""
        if entry not in self.entries:
            return None
        for fn in entry.bwd[site]:
            new = apply_hook(fn, site, grad)
            if new is not None:
                grad = new
        return grad

    def _fire_all(self, pairs, x: Tensor) -> tuple[Tensor, bool]:
        changed = False
        for site, entry in pairs:
            x, c = self._fire(site, entry, x)
            changed |= c or bool(entry.bwd.get(site))
        return x, changed

    def _pre(self, role: str, layer: int | None, module: nn.Module, args: tuple, kwargs: dict):
        """Forward pre-hook of one module: inputs, LayerNorm internals, the attention tap."""
        if role == "attn":
            if self._pairs("attn", layer, {Tap.INSIDE}):
                captured = attention.Captured()
                attention.capture_kwargs(captured, kwargs)
                self._state()[("captured", layer)] = captured
            return None
        x = args[0] if args else kwargs["hidden_states"]
        new = self._pre_tensor(role, layer, module, x)
        if new is x:
            return None
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    def _pre_tensor(self, role: str, layer: int | None, module: nn.Module, x: Tensor) -> Tensor:
        if role == "out":
            if self._pairs("attn", layer, {Tap.INSIDE}):
                x = self._tap(layer, module)
            return self._per_head_input(layer, x)
        if role == "ln2":
            x = self._resid_mid(layer, x)
        if role == "ln1":
            self._qkv_inputs(layer, x)
        if role in ("ln1", "ln2", "ln_final"):
            self._layer_norm(role, layer, module, x)
        x, _ = self._fire_all(self._pairs(role, layer, {Tap.INPUT}), x)
        return x

    def _fwd(self, role: str, layer: int | None, module: nn.Module, args: tuple, kwargs: dict, out):
        """Forward hook of one module: outputs, q/k/v, per-head results, LayerNorm and resid_mid replacements."""
        tensor = out[0] if isinstance(out, tuple) else out
        if role == "embed":
            self._state()["batch"] = tensor.shape[0]
        if role == "pos_embed" and tensor.shape[0] != self._state().get("batch", tensor.shape[0]):
            tensor = tensor.expand(self._state()["batch"], *tensor.shape[1:]).clone()  # (batch, pos, d_model) as TL
        if role == "qkv":
            tensor = self._qkv(layer, tensor)
        elif role == "out":
            tensor = self._result(layer, module, args[0] if args else kwargs["input"], tensor)
        elif role in ("ln1", "ln2", "ln_final"):
            tensor = self._state().pop(("ln_out", role, layer), tensor)
        elif role == "layer" and ("delta", layer) in self._state():
            tensor = tensor + self._state().pop(("delta", layer))
        tensor, _ = self._fire_all(self._pairs(role, layer, {Tap.OUTPUT}), tensor)
        if isinstance(out, tuple):
            return (tensor, *out[1:])
        return tensor

    # ---- the special sites ----------------------------------------------------------------

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], self.dims.n_heads, -1)  # (..., head, d_head)

    def _per_head_input(self, layer: int, x: Tensor) -> Tensor:
        """z: the output projection's input shown per head."""
        pairs = self._pairs("out", layer, {Tap.INPUT})
        if not pairs:
            return x
        shown, _ = self._fire_all(pairs, self._heads(x))
        return shown.reshape(x.shape).contiguous()  # GPT-2's Conv1D views its input

    def _tap(self, layer: int, module: nn.Module) -> Tensor:
        """Recompute this layer's attention as HF eager does, firing the inner sites; return its z."""
        captured = self._state().pop(("captured", layer))
        attn = self.arch.module(self.hf, "attn", layer)
        pairs = self._pairs("attn", layer, {Tap.INSIDE})
        fp32 = any(e.fp32_scores for _, e in pairs)

        def fire(kind: str, t: Tensor) -> Tensor:
            return self._fire_all([(s, e) for s, e in pairs if s.short == kind], t)[0]

        return attention.eager_z(self.arch, attn, captured, self.dims.n_heads, fire, fp32_scores=fp32)

    def _qkv(self, layer: int, fused: Tensor) -> Tensor:
        """q, k, v: recompute heads whose inputs were replaced, fire their hooks, keep the result for the tap."""
        pieces = [self.arch.split_qkv(fused, self.dims.n_heads, i) for i in range(3)]
        rebuild = False
        for i, replaced in self._state().pop(("qkv_in", layer), {}).items():
            pieces[i] = self._project_heads(layer, i, pieces[i], *replaced)
            rebuild = True
        for i, kind in enumerate("qkv"):
            pairs = [(s, e) for s, e in self._pairs("qkv", layer, {Tap.QKV}) if s.short == kind]
            pieces[i], changed = self._fire_all(pairs, pieces[i])
            rebuild |= changed
        if rebuild:
            fused = self.arch.merge_qkv(*pieces)
        if self._pairs("attn", layer, {Tap.INSIDE}):
            self._state()[("captured", layer)].fused = fused
        return fused

    def _qkv_inputs(self, layer: int, x: Tensor) -> None:
        """q/k/v inputs: each head's own copy of ln1's input; remember the heads that changed."""
        for i, kind in enumerate(("q_input", "k_input", "v_input")):
            pairs = [(s, e) for s, e in self._pairs("ln1", layer, {Tap.QKV_INPUT}) if s.short == kind]
            if not pairs:
                continue
            copies = x.unsqueeze(-2).expand(*x.shape[:-1], self.dims.n_heads, x.shape[-1]).contiguous()  # per head
            new, changed = self._fire_all(pairs, copies)
            if not changed:
                continue
            grads = any(e.bwd.get(s) for s, e in pairs) or (new.requires_grad and new is not copies)
            heads = None if grads else (new != x.unsqueeze(-2)).any(-1).flatten(0, 1).any(0)  # (head,)
            self._state().setdefault(("qkv_in", layer), {})[i] = (new, heads)

    def _project_heads(self, layer: int, which: int, piece: Tensor, inputs: Tensor, heads: Tensor | None) -> Tensor:
        """Each head's q, k or v from its own input: ln1 then that head's slice of the fused projection."""
        ln = self.arch.module(self.hf, "ln1", layer)
        qkv = self.arch.module(self.hf, "qkv", layer)
        normed = nn.functional.layer_norm(inputs, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        w = qkv_weight(self.arch, qkv, self.dims.n_heads, which)  # (head, d_model, d_head)
        projected = einops.einsum(normed, w, "b pos head d_model, head d_model d_head -> b pos head d_head")
        projected = projected + qkv_bias(self.arch, qkv, self.dims.n_heads, which)
        if heads is None:
            return projected.to(piece.dtype)
        merged = piece.clone()
        merged[..., heads, :] = projected[..., heads, :].to(piece.dtype)
        return merged

    def _layer_norm(self, role: str, layer: int | None, module: nn.Module, x: Tensor) -> None:
        """scale and normalized (TransformerLens's meaning); a change or a gradient rebuilds the output."""
        pairs = self._pairs(role, layer, {Tap.LN})
        if not pairs:
            return
        centered = x - x.mean(-1, keepdim=True)
        scale = (centered.pow(2).mean(-1, keepdim=True) + module.eps).sqrt()  # (batch, pos, 1)
        scale, changed = self._fire_all([(s, e) for s, e in pairs if s.short.endswith("_scale")], scale)
        normalized, changed_n = self._fire_all([(s, e) for s, e in pairs if s.short.endswith("_normalized")],
                                               centered / scale)
        if changed or changed_n:
            out = normalized * module.weight + module.bias if module.weight is not None else normalized
            self._state()[("ln_out", role, layer)] = out

    def _resid_mid(self, layer: int, x: Tensor) -> Tensor:
        """resid_mid (sequential models): a change reaches the MLP and, through the layer's output, the residual."""
        pairs = self._pairs("ln2", layer, {Tap.RESID_MID})
        if pairs:
            new, changed = self._fire_all(pairs, x)
            if new is not x:
                self._state()[("delta", layer)] = new - x
            x = new
        mlp_in = self._pairs("ln2", layer, {Tap.MLP_IN})
        if mlp_in:
            x, _ = self._fire_all(mlp_in, x.view_as(x))  # its own autograd node: the MLP's share of the gradient
        return x

    def _result(self, layer: int, module: nn.Module, z: Tensor, out: Tensor) -> Tensor:
        """Per-head results z_h W_O[h]; a change (or a gradient) makes the output their sum plus b_O."""
        pairs = self._pairs("out", layer, {Tap.RESULT})
        if not pairs:
            return out
        w_o = out_weight(self.arch, module, self.dims.n_heads)  # (head, d_head, d_model)
        result = einops.einsum(self._heads(z), w_o, "b pos head d_head, head d_head d_model -> b pos head d_model")
        result, changed = self._fire_all(pairs, result)
        if not changed:
            return out
        return result.sum(dim=-2) + (module.bias if module.bias is not None else 0)


def _group(pairs) -> dict[Site, list[HookFn]]:
    grouped: dict[Site, list[HookFn]] = {}
    for site, fn in pairs:
        grouped.setdefault(site, []).append(fn)
    return grouped




def apply_hook(fn: HookFn, site: Site, x: Tensor) -> Tensor | None:
    """Call a user hook; check that a replacement has the activation's shape."""
    new = fn(x, site)
    if new is None or new is x:
        return new
    if not isinstance(new, Tensor) or new.shape != x.shape:
        got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
        raise HookShapeError(
            f"The hook on {site.name} returned {got}; expected a tensor of shape {tuple(x.shape)} "
            f"({site.spec.axes}). Return None to leave it unchanged, or a tensor of that shape."
        )
    return new.to(dtype=x.dtype, device=x.device)


def _inference_mode() -> InputError:
    return InputError("Hooks cannot run under torch.inference_mode(): its tensors keep no version counter, so an "
                      "edit a hook makes in place would go unseen. Run the model under torch.no_grad() instead.")
