"""A checkpoint's weight files: which files hold the weights, and reading them into tensors.

    >>> from interp import files, toy
    >>> found = files.weight_files(toy.checkpoint_path("toy-2l", "step0"))
    >>> [p.name for p in found]
    ['model.safetensors']
    >>> files.read_tensors(found)["embed_out.weight"].dtype   # as stored: the model's dtype comes later
    torch.float16

The names are `from_pretrained`'s, in its order of preference: `model.safetensors`, the shards
of `model.safetensors.index.json`, then `pytorch_model.bin` (or the shards of its index). One
more is this project's: `model.safetensors.xz`, the standard xz compression of a
`model.safetensors` file (`xz -d` gives back a Hugging Face directory), in which the toy suite
ships the checkpoints that would not fit its size budget otherwise.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

SAFETENSORS, PACKED = "model.safetensors", "model.safetensors.xz"
SAFETENSORS_INDEX, BIN, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_NAMES = (SAFETENSORS, SAFETENSORS_INDEX, PACKED, BIN, BIN_INDEX)  # the first one present holds the weights

Resolve = Callable[[str], "Path | None"]  # a file name -> its local path, or None when absent


def weight_files(where: Path | Resolve) -> tuple[Path, ...]:
    """The local files holding a checkpoint's weights: a folder's, or those `where(name)` finds; () if none
    (or a shard is missing)."""
    resolve = in_folder(where) if isinstance(where, Path) else where
    for name in WEIGHT_NAMES:
        path = resolve(name)
        if path is None:
            continue
        if not name.endswith(".index.json"):
            return (path,)
        shards = [resolve(shard) for shard in sorted(set(json.loads(path.read_text())["weight_map"].values()))]
        return tuple(shards) if all(p is not None for p in shards) else ()
    return ()


_SHA256 = re.compile(r"[0-9a-f]{64}")  # a hub-cache blob named by its sha256


def read_tensors(paths: Sequence[Path]) -> dict[str, Tensor]:
    """Every tensor of these files (shards of one checkpoint), in the dtype stored, on the CPU."""
    state: dict[str, Tensor] = {}
    for path in paths:
        state.update(_read(Path(path)))
    return state


def file_sha256(path: Path) -> str:
    """sha256 of a file (of the file inside, for .xz); a hub-cache symlink into blobs/ already names it, so it
    is not re-read."""
    if path.is_symlink():
        target = path.resolve()
        if target.parent.name == "blobs" and _SHA256.fullmatch(target.name):
            return target.name
    digest = hashlib.sha256()
    with (lzma.open if is_packed(path) else open)(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_ahead(path: Path) -> None:
    """Ask the OS to read a file into its page cache now, in the background (where it can; else do nothing)."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def unpacked_bytes(path: Path) -> bytes:
    """The `model.safetensors` bytes of a `model.safetensors.xz` file (what `xz -d` writes)."""
    return lzma.decompress(Path(path).read_bytes())


def is_packed(path: Path) -> bool:
    """Whether a weight file is xz-compressed safetensors."""
    return Path(path).name.endswith(".safetensors.xz")


def _read(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load, load_file

    if is_packed(path):
        return load(unpacked_bytes(path))
    if path.name.endswith(".safetensors"):
        return load_file(path)  # mapped: pages are read when a tensor is first touched
    return torch.load(path, map_location="cpu", weights_only=True)


def in_folder(folder: Path) -> Resolve:
    """File name -> its path in `folder`, or None where there is no such file."""
    def resolve(name: str) -> Path | None:
        path = folder / name
        return path if path.is_file() else None

    return resolve
