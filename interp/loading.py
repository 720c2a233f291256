"""`interp.load`: a suite name (+ revision), a toy model, or a `save_pretrained` directory -> Model.

    >>> model = interp.load("pythia-160m", revision="step1000")   # from the HF cache or the hub
    >>> model = interp.load("toy", revision="step0")                # the embedded suite, offline
    >>> model = interp.load("/path/to/saved/model", dtype="bf16")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from interp import suite, toy
from interp.errors import UnknownModelError, UnsupportedModelError, WeightsNotFoundError
from interp.model import Model

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class Source:
    """Where weights and tokenizer come from."""

    weights: str
    revision: str | None
    tokenizer: tuple[str, ...]
    name: str
    hub: bool = False


def load(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> Model:
    """Load a Pythia-architecture model in eval mode (fp32 unless `dtype` says otherwise)."""
    from transformers import GPTNeoXForCausalLM

    source = _locate(str(name_or_path), revision)
    _check_architecture(source)
    try:
        hf = GPTNeoXForCausalLM.from_pretrained(
            source.weights, revision=source.revision, dtype=_dtype(dtype), attn_implementation=attn_implementation
        )
    except OSError as err:
        raise _not_found(source, err) from err
    if device is not None:
        hf.to(device)
    return Model(hf, _tokenizer(source), name=source.name, revision=source.revision or "main")


def _locate(name: str, revision: str | None) -> Source:
    """Resolve toy names, local directories and suite names, validating the revision first."""
    toy_name = toy.resolve(name)
    if toy_name is not None:
        path = toy.checkpoint_path(toy_name, suite.check_revision(toy_name, revision))
        return Source(str(path), None, (str(path), str(toy.model_dir(toy_name))), toy_name)
    path = Path(name).expanduser()
    if path.is_dir():
        if revision not in (None, "main"):
            raise UnknownModelError(f"revision={revision!r} applies to hub names, not the directory {name!r}.")
        return Source(str(path), None, (str(path), str(path.parent)), path.name)
    if path.suffix or os.sep in name and not name.lower().startswith("eleutherai/"):
        raise UnknownModelError(f"{name!r} looks like a path, but there is no directory there.")
    hf_id = suite.resolve(name).hf_id
    revision = suite.check_revision(name, revision)
    return Source(hf_id, revision, (hf_id,), hf_id, hub=True)


def _check_architecture(source: Source) -> None:
    """Refuse non-GPT-NeoX checkpoints before their weights are read."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.weights, revision=source.revision)
    except (OSError, ValueError) as err:
        raise _not_found(source, err) from err
    if config.model_type != "gpt_neox":
        raise UnsupportedModelError(
            f"{source.name} is a {config.model_type!r} model; pythia-interp supports GPT-NeoX "
            "(`model_type: gpt_neox`: the Pythia suite, GPT-NeoX-20B and models of that architecture)."
        )


def _tokenizer(source: Source):
    """The first tokenizer found among the candidate locations, or None."""
    from transformers import AutoTokenizer

    for where in source.tokenizer:
        if Path(where).is_dir() and not (Path(where) / "tokenizer_config.json").exists():
            continue  # AutoTokenizer would build an empty tokenizer from config.json alone
        try:
            return AutoTokenizer.from_pretrained(where)
        except (OSError, ValueError, TypeError):
            continue
    return None


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    key = dtype.lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}.")
    return DTYPES[key]


def _not_found(source: Source, err: Exception) -> Exception:
    if not source.hub:
        return WeightsNotFoundError(f"Could not read a model from {source.weights}: {err}")
    from huggingface_hub.constants import HF_HUB_CACHE

    rev = source.revision or "main"
    return WeightsNotFoundError(
        f"{source.weights} at revision {rev!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and "
        f"could not be downloaded ({type(err).__name__}). On a machine with network run "
        f"`hf download {source.weights} --revision {rev}` and copy the cache here, or pass a directory "
        "written by save_pretrained to interp.load()."
    )
