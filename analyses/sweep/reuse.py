"""One live model per model name: each later checkpoint is read as tensors and put into it in place.

    >>> import interp
    >>> model = interp.load("toy-2l", revision="step0")
    >>> staged = stage("toy-2l", "step450", Template.of(model))   # reads the file only: no model is built
    >>> swap_(model, staged).revision
    'step450'

Building a Hugging Face model (config, modules, `from_pretrained`'s bookkeeping, the tokenizer) is
Python work that holds the GIL, and a sweep that does it in a background thread slows the
analysis it should hide behind. So a sweep builds each model once and, for every later
checkpoint of it, `find` finds the files and checks that they fit (config, generation config and
tokenizer files the live model's), `fetch` reads and fingerprints the weights (a small file
whole, hashed from memory; large ones read ahead by the OS and mapped: I/O and hashing that
release the GIL, which a loading thread does), `fit` makes tensors under the model's names, and
`swap_` copies them into the live model's parameters, casting on the way (one pass over memory
already in place, with the analysis's threads): a model equal, tensor for tensor, to what
`interp.load` gives for that checkpoint. `stage` runs the first three in a row. Where equality
cannot be guaranteed (another config, generation config or tokenizer file, weights not on this
machine, a tensor that is not a plain renaming of one parameter), `find` or `fit` returns None and
the sweep loads the checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

import interp
from interp.files import file_sha256, is_packed, read_ahead, read_tensors, unpacked_bytes
from interp.loading import CheckpointFiles, checkpoint_files, tokenizer_label

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}  # safetensors' names of the dtypes read as views (others: safetensors.torch.load)
SMALL_FILE = 64 << 20  # bytes: a weight file this small is read whole (and hashed from memory), not mapped
Rename = Callable[[str], "str | None"]  # a name in the files -> the model's state-dict name (None: not a renaming)


@dataclass(frozen=True)
class Template:
    """What a live model accepts: the fingerprint of the files it came from, its tensors' names and shapes."""

    files: CheckpointFiles
    fingerprint: tuple
    tokenizer_at: int | None  # which of files.tokenizers gave its tokenizer (None: shipped or none)
    shapes: dict[str, tuple[int, ...]]  # state-dict name -> shape, each tensor once (not a tied copy)
    tied: frozenset[str]  # state-dict names of tied copies (GPT-2's lm_head.weight)
    rename: Rename

    @classmethod
    def of(cls, model: interp.Model) -> Template | None:
        """The template of a model `interp.load` gave for a toy or hub name; None for anything else."""
        origin, rename = getattr(model, "origin", None), _renamer(model.hf)
        if origin is None or origin.kind not in ("toy", "hub") or rename is None:
            return None
        files = checkpoint_files(origin.name, origin.revision)
        labels = [tokenizer_label(where, revision) for where, revision in files.tokenizers]
        at = labels.index(model.tokenizer_source) if model.tokenizer_source in labels else None
        every = dict(model.hf.named_parameters(remove_duplicate=False))
        tied = frozenset(every) - frozenset(dict(model.hf.named_parameters()))
        shapes = {k: tuple(v.shape) for k, v in model.hf.state_dict().items() if k not in tied}
        return cls(files, files.fingerprint(), at, shapes, tied, rename)

    def fit(self, tensors: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """The tensors under the model's names, or None unless they fill every tensor once with its shape."""
        fitted: dict[str, Tensor] = {}
        for key, tensor in tensors.items():
            name = self.rename(key)
            if name is None or name in self.tied or name in fitted:
                return None
            if name not in self.shapes:
                continue  # from_pretrained ignores a tensor the model does not have (old buffers, e.g.)
            if tuple(tensor.shape) != self.shapes[name]:
                return None
            fitted[name] = tensor
        return fitted if len(fitted) == len(self.shapes) else None


@dataclass
class Staged:
    """One checkpoint's tensors under the live model's names, and what to record about it."""

    files: CheckpointFiles
    tensors: dict[str, Tensor]
    tokenizer_at: int | None
    digests: dict[Path, str] = field(default_factory=dict)  # sha256 of the weight files, as `fetch` found them


@dataclass(frozen=True)
class Found:
    """A checkpoint whose files may fit a live model (its config and tokenizer files do), weights not yet read."""

    files: CheckpointFiles
    tokenizer_at: int | None
    whole: bool  # one small weight file: read whole and hashed from memory (else mapped)


@dataclass
class Fetched:
    """A found checkpoint's weights as read (a small file's safetensors bytes, or mapped tensors) and the sha256
    of its weight files."""

    found: Found
    digests: dict[Path, str]
    data: bytearray | None = None
    tensors: dict[str, Tensor] | None = None


def stage(name: str, revision: str, template: Template | None) -> Staged | None:
    """Read a checkpoint's tensors for a model of `template`; None when a full `interp.load` is needed.
    (`find`, `fetch` and `fit` in a row: a sweep runs `fetch` in its loading thread.)"""
    found = find(name, revision, template)
    return None if found is None else fit(fetch(found), template)


def find(name: str, revision: str, template: Template | None) -> Found | None:
    """The checkpoint's files if they may fit `template`'s model (the same model, config, generation config and
    tokenizer files), reading no weights; None when a full `interp.load` is needed."""
    if template is None:
        return None
    files = checkpoint_files(name, revision)
    known = template.files.origin
    if (files.origin.name, files.origin.kind) != (known.name, known.kind) or not files.weights:
        return None
    if not files.configs or files.configs[0].name != "config.json" or files.fingerprint() != template.fingerprint:
        return None
    return Found(files, template.tokenizer_at, len(files.weights) == 1 and _small_file(files.weights[0]))


def fetch(found: Found) -> Fetched:
    """Read the found weights and fingerprint their files: a small file whole, hashed from memory; large ones
    read ahead by the OS, hashed (free for a hub cache's blobs, whose names are their sha256) and mapped.
    Reading, unpacking and hashing release the GIL, so a loading thread does this beside an analysis at
    little cost to it."""
    if found.whole:
        path = found.files.weights[0]
        data = bytearray(unpacked_bytes(path)) if is_packed(path) else _read_bytes(path)
        return Fetched(found, {path: hashlib.sha256(data).hexdigest()}, data=data)
    for path in found.files.weights:
        read_ahead(path)  # into the page cache now
    digests = {path: file_sha256(path) for path in found.files.weights}
    return Fetched(found, digests, tensors=read_tensors(found.files.weights))


def fit(fetched: Fetched, template: Template) -> Staged | None:
    """The fetched tensors under the model's names, or None unless they fill every tensor of it once."""
    found = fetched.found
    fitted = template.fit(_tensors_of(fetched.data) if fetched.data is not None else fetched.tensors)
    return None if fitted is None else Staged(found.files, fitted, found.tokenizer_at, dict(fetched.digests))


def swap_(model: interp.Model, staged: Staged) -> interp.Model:
    """Copy the staged tensors into `model`'s own (cast to its dtypes, on its device) and relabel it."""
    try:
        targets = [_tensor_at(model.hf, name) for name in staged.tensors]
    except (KeyError, AttributeError):  # not a plain tree of modules: as the state dict names them
        state = model.hf.state_dict(keep_vars=True)
        targets = [state[name] for name in staged.tensors]
    with torch.no_grad():
        for target, tensor in zip(targets, staged.tensors.values(), strict=True):
            target.copy_(tensor)  # into memory already in place; bumps the version: weight stacks rebuild
    if model.hf.training:  # as interp.load returns it
        model.hf.eval()
    files = staged.files
    label = model.tokenizer_source
    if staged.tokenizer_at is not None:
        label = tokenizer_label(*files.tokenizers[staged.tokenizer_at])
    model.revision, model.tokenizer_source = files.origin.revision, label
    model.origin = dataclasses.replace(files.origin, tokenizer=label)
    model.hf.config._name_or_path = model.hf.name_or_path = files.name_or_path  # as from_pretrained sets it
    return model


def _tensor_at(root: torch.nn.Module, name: str) -> Tensor:
    """The parameter or buffer a state-dict name stands for, looked up in the module tree as it is now (an
    analysis may have replaced a module or parameter): a few dict lookups, where `state_dict` walks every
    module."""
    *path, leaf = name.split(".")
    module = root
    for part in path:
        module = module._modules[part]
    tensor = module._parameters.get(leaf)
    return tensor if tensor is not None else module._buffers[leaf]


def _small_file(path: Path) -> bool:
    """A safetensors file (plain or .xz) small enough to read whole, and not a hub blob (whose name is its
    sha256 already)."""
    small = path.name.endswith((".safetensors", ".safetensors.xz")) and path.stat().st_size <= SMALL_FILE
    return small and not path.is_symlink()


def _read_bytes(path: Path) -> bytearray:
    """A file's bytes, in a buffer that tensors may view."""
    data = bytearray(path.stat().st_size)
    with open(path, "rb", buffering=0) as f:
        view, done = memoryview(data), 0
        while done < len(data) and (n := f.readinto(view[done:])):
            done += n
    return data if done == len(data) else bytearray(path.read_bytes())  # the file changed size: read it again


def _tensors_of(data: bytearray) -> dict[str, Tensor]:
    """The tensors of safetensors bytes, as views of them (`safetensors.torch.load` copies each tensor's bytes
    twice); that function where the bytes hold anything but plain non-empty tensors, or on a big-endian machine."""
    from safetensors.torch import load

    tensors = _views(data) if sys.byteorder == "little" else None
    return tensors if tensors is not None else load(bytes(data))


def _views(data: bytearray) -> dict[str, Tensor] | None:
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        header = json.loads(bytes(data[8:8 + size])) if 0 <= size <= len(data) - 8 else None
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    tensors, start = {}, 8 + size
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, (begin, end), shape = _DTYPES.get(entry["dtype"]), entry["data_offsets"], entry["shape"]
            count = (end - begin) // dtype.itemsize if dtype is not None else 0
            fits = count > 0 and count * dtype.itemsize == end - begin and math.prod(shape) == count
        except (KeyError, TypeError, ValueError):
            return None
        if not fits or begin < 0 or start + end > len(data):
            return None
        tensors[name] = torch.frombuffer(data, dtype=dtype, count=count, offset=start + begin).view(shape)
    return tensors


def _renamer(hf: torch.nn.Module) -> Rename | None:
    """`from_pretrained`'s renaming of checkpoint names for this model, or None where it also converts tensors."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        return None
    transforms = get_model_conversion_mapping(hf)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    known, prefix = dict.fromkeys(hf.state_dict(), True), hf.base_model_prefix

    @functools.lru_cache(maxsize=4096)  # every checkpoint of a model has the same names
    def rename(key: str) -> str | None:
        name, converted = rename_source_key(key, renamings, converters, prefix, known)
        if name not in known and key in known:
            name, converted = rename_source_key(key, [], [], prefix, known)
        return None if converted is not None else name

    return rename
