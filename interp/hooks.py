"""The hook manager: validate every site, register in `try`, remove everything in `finally`.

    >>> def ablate(z, hook):
    ...     z[:, :, 3] = 0.0
    ...     return z
    >>> with hooked(model.hf, model.sites, {"blocks.1.attn.hook_z": [ablate]}):
    ...     logits = model.hf(ids).logits

A hook is `fn(tensor, hook) -> tensor | None`, as in TransformerLens: `hook` is the `Site`
(with `.name` and `.layer`), returning None leaves the activation as it was, and returning a
tensor of the same shape replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from functools import partial

import einops
from torch import Tensor, nn

from interp.attention import attention_taps
from interp.errors import HookShapeError
from interp.sites import Site, Tap

HookFn = Callable[[Tensor, Site], Tensor | None]


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


@contextmanager
def hooked(hf_model: nn.Module, fwd: list[tuple[Site, HookFn]]):
    """Attach `(site, fn)` hooks to the real HF modules for the duration of the block."""
    inner: dict[int, dict[str, list]] = {}
    with ExitStack() as stack:
        for site, fn in fwd:
            if site.tap is Tap.INSIDE:
                inner.setdefault(site.layer, {}).setdefault(site.short, []).append(partial(apply_hook, fn, site))
            else:
                handle = _register(hf_model.get_submodule(site.module), site, fn)
                stack.callback(handle.remove)
        if inner:
            stack.enter_context(attention_taps(hf_model, inner))
        yield


def _register(module: nn.Module, site: Site, fn: HookFn):
    """Register the torch hook that taps one site of one module."""
    if site.tap is Tap.OUTPUT:
        return module.register_forward_hook(lambda m, args, out: apply_hook(fn, site, out))
    if site.tap is Tap.INPUT:
        return module.register_forward_pre_hook(partial(_input_hook, fn, site))
    if site.tap is Tap.QKV:
        return module.register_forward_hook(partial(_qkv_hook, fn, site))
    return module.register_forward_hook(partial(_result_hook, fn, site))


def _input_hook(fn: HookFn, site: Site, module: nn.Module, args: tuple):
    """First positional input; `z` is shown per head as (batch, pos, head, d_head)."""
    x = args[0]
    shown = _per_head(x, site) if site.short == "z" else x
    new = apply_hook(fn, site, shown)
    if new is None:
        return None
    return (new.reshape(x.shape), *args[1:])


def _qkv_hook(fn: HookFn, site: Site, module: nn.Module, args: tuple, out: Tensor):
    """q, k or v: each head's slice of the fused output is laid out `[q | k | v]`."""
    which = "qkv".index(site.short)
    fused = out.view(*out.shape[:-1], site.n_heads, 3, -1)  # (batch, pos, head, 3, d_head)
    new = apply_hook(fn, site, fused[..., which, :])
    if new is None:
        return None
    fused = fused.clone()
    fused[..., which, :] = new
    return fused.view(out.shape)


def _result_hook(fn: HookFn, site: Site, module: nn.Module, args: tuple, out: Tensor):
    """Per-head outputs z_h @ W_O[h]; a replacement is summed over heads plus b_O."""
    z = _per_head(args[0], site)  # (batch, pos, head, d_head)
    w_o = einops.rearrange(module.weight, "d_model (head d_head) -> head d_head d_model", head=z.shape[-2])
    result = einops.einsum(z, w_o, "batch pos head d_head, head d_head d_model -> batch pos head d_model")
    new = apply_hook(fn, site, result)
    if new is None:
        return None
    return new.sum(dim=-2) + (module.bias if module.bias is not None else 0)


def _per_head(x: Tensor, site: Site) -> Tensor:
    """(..., head * d_head) -> (..., head, d_head)."""
    return x.view(*x.shape[:-1], site.n_heads, -1)
