"""One live model per model name: each later checkpoint is read as tensors and put into it in place.

    >>> import interp
    >>> model = interp.load("toy-2l", revision="step0")
    >>> staged = stage("toy-2l", "step450", Template.of(model))   # reads the file only: no model is built
    >>> swap_(model, staged).revision
    'step450'

Building a Hugging Face model (config, modules, `from_pretrained`'s bookkeeping, the tokenizer) is
Python work that holds the GIL, and a sweep that does it in a background thread slows the
analysis it should hide behind. So a sweep builds each model once and, for every later
checkpoint of it, `stage` reads the tensors and casts them to the model's dtypes (file I/O and
one copy, in C++, in the loading thread) and `swap_` puts them into the live model's parameters
(no copy on the CPU): a model equal, tensor for tensor, to what `interp.load` gives for that
checkpoint. Where that cannot be guaranteed (another config, generation config or tokenizer
file, weights not on this machine, a tensor that is not a plain renaming of one parameter),
`stage` returns None and the sweep loads the checkpoint whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

import interp
from interp.files import read_tensors
from interp.loading import CheckpointFiles, checkpoint_files, tokenizer_label

Rename = Callable[[str], "str | None"]  # a name in the files -> the model's state-dict name (None: not a renaming)


@dataclass(frozen=True)
class Template:
    """What a live model accepts: the fingerprint of the files it came from, its tensors' names and shapes."""

    files: CheckpointFiles
    fingerprint: tuple
    tokenizer_at: int | None  # which of files.tokenizers gave its tokenizer (None: shipped or none)
    shapes: dict[str, tuple[int, ...]]  # state-dict name -> shape, each tensor once (not a tied copy)
    dtypes: dict[str, torch.dtype]  # state-dict name -> its dtype
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
        state = {k: v for k, v in model.hf.state_dict().items() if k not in tied}
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        dtypes = {k: v.dtype for k, v in state.items()}
        return cls(files, files.fingerprint(), at, shapes, dtypes, tied, rename)

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


def stage(name: str, revision: str, template: Template | None) -> Staged | None:
    """Read a checkpoint's tensors for a model of `template`; None when a full `interp.load` is needed."""
    if template is None:
        return None
    files = checkpoint_files(name, revision)
    known = template.files.origin
    if (files.origin.name, files.origin.kind) != (known.name, known.kind) or not files.weights:
        return None
    if not files.configs or files.configs[0].name != "config.json" or files.fingerprint() != template.fingerprint:
        return None
    fitted = template.fit(read_tensors(files.weights))
    if fitted is None:
        return None
    for name, dtype in template.dtypes.items():  # read and cast here, in the loading thread, into fresh tensors
        fitted[name] = fitted[name].to(dtype, copy=True)
    return Staged(files, fitted, template.tokenizer_at)


def swap_(model: interp.Model, staged: Staged) -> interp.Model:
    """Put the staged tensors into `model` in place (in its dtype, on its device) and relabel it."""
    targets = model.hf.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in staged.tensors.items():
            target = targets[name]
            if (tensor.dtype, tensor.device) == (target.dtype, target.device):
                target.data = tensor  # read and cast in the loading thread already: nothing to copy
                increment_version(target)  # a new version, so that cached weight stacks rebuild
            else:
                target.copy_(tensor)  # to the model's device (a GPU); bumps the version too
    model.hf.eval()
    files = staged.files
    label = model.tokenizer_source
    if staged.tokenizer_at is not None:
        label = tokenizer_label(*files.tokenizers[staged.tokenizer_at])
    model.revision, model.tokenizer_source = files.origin.revision, label
    model.origin = dataclasses.replace(files.origin, tokenizer=label)
    model.hf.config._name_or_path = model.hf.name_or_path = files.name_or_path  # as from_pretrained sets it
    return model


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

    def rename(key: str) -> str | None:
        name, converted = rename_source_key(key, renamings, converters, prefix, known)
        if name not in known and key in known:
            name, converted = rename_source_key(key, [], [], prefix, known)
        return None if converted is not None else name

    return rename
