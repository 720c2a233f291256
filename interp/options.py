"""Options shared by every entry point: floating dtypes and devices, validated before any work.

    >>> from interp.options import dtype_of, device_of, dtype_name
    >>> dtype_of("bf16"), device_of("cpu"), dtype_name(torch.bfloat16)
    (torch.bfloat16, device(type='cpu'), 'bfloat16')
"""

from __future__ import annotations

import torch

from interp.errors import InvalidOptionError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def dtype_of(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A floating dtype from a torch dtype or a string such as "bf16"; None stays None."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    key = dtype.lower().removeprefix("torch.") if isinstance(dtype, str) else None
    if key in DTYPES:
        return DTYPES[key]
    raise InvalidOptionError(
        f"dtype={dtype!r} is not supported: use torch.float32, torch.bfloat16 or torch.float16, or one of the"
        f" strings {sorted(DTYPES)}."
    )


def dtype_name(dtype: torch.dtype) -> str:
    """How records spell a dtype: "bfloat16", as `dtype_of` reads it back."""
    return str(dtype).removeprefix("torch.")


def device_of(device: str | torch.device | None) -> torch.device | None:
    """Parse and check a device before any weight is read."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is not None and _available(parsed):
        return parsed
    here = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count())), *(["mps"] if _mps() else [])]
    raise InvalidOptionError(
        f"device={device!r} is not a device this machine has: use one of {here} (e.g. device='cuda' or 'cpu')."
    )


def _available(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "mps":
        return _mps()
    backend = getattr(torch, device.type, None) if device.type != "meta" else None
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return False
    return device.index is None or device.index < backend.device_count()


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
