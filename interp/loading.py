"""`interp.load`: a suite name (+ revision), GPT-2, a toy model, or a `save_pretrained` directory -> Model.

    >>> import interp
    >>> model = interp.load("toy")                  # the embedded suite, offline; `main` is its final step
    >>> model.revision, model.origin.requested_revision
    ('step3600', None)
    >>> model = interp.load("pythia-1.4b-deduped", revision="step1000")  # doctest: +SKIP
    >>> model = interp.load("./my-checkpoint", dtype="bf16")              # doctest: +SKIP

Names come before paths: a string that names a suite model ("pythia-1.4b", "EleutherAI/pythia-6.9b-deduped",
"pythia-1.3b", "gpt2-xl") means that hub model, even where a directory of the same name exists here. Write
"./pythia-1.4b" or pass a `pathlib.Path` to load such a directory.

The tokenizer comes from the weights' own repo and revision (or directory). Where there is none there (not
cached, or no tokenizer files at that revision), a GPT-NeoX model gets the GPT-NeoX-20B tokenizer that every
Pythia model uses, shipped in `interp/data/` (Apache-2.0, EleutherAI), with a `TokenizerWarning`;
`model.tokenizer_source` says which one was used.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from interp import files, suite, toy
from interp.errors import (
    InvalidOptionError,
    TokenizerWarning,
    UnknownModelError,
    UnknownRevisionError,
    UnsupportedModelError,
    WeightsNotFoundError,
)
from interp.model import Model
from interp.options import device_of as _device
from interp.options import dtype_of

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
ARCHITECTURES = {"gpt_neox": "GPTNeoXForCausalLM", "gpt2": "GPT2LMHeadModel"}  # config.model_type -> HF class
SHIPPED_TOKENIZER = Path(__file__).resolve().parent / "data" / "gpt-neox-20b-tokenizer.json"
SHIPPED = "gpt-neox-20b (shipped with pythia-interp)"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_TOKENIZER_INPUTS = (*_TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json", "merges.txt")
_EOT = "<|endoftext|>"


@dataclass(frozen=True)
class Origin:
    """Where a loaded model came from: enough to load it again with `interp.load(name, revision)`."""

    name: str  # hub repo id, toy name, or the directory's absolute path (model.name is only its last part)
    kind: str  # "hub", "toy" or "directory"
    requested_revision: str | None  # as asked
    revision: str | None  # the checkpoint loaded: `main` resolved to the final step where known; None for a directory
    commit: str | None = None  # the hub snapshot's commit hash, when the weights came from the HF cache
    tokenizer: str | None = None  # "repo@revision", a directory, SHIPPED, or None


@dataclass(frozen=True)
class _Source:
    """What to read, decided before any file is read."""

    name: str
    kind: str
    weights: str
    revision: str | None  # passed to from_pretrained (hub names only)
    requested: str | None
    loaded: str | None
    tokenizers: tuple[tuple[str, str | None], ...]  # (repo or directory, revision), tried in order


def load(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> Model:
    """Load a Pythia (GPT-NeoX) or GPT-2 model in eval mode, fp32 unless `dtype` says otherwise.

        >>> import interp
        >>> interp.load("toy", revision="step0", dtype="bf16").dtype
        torch.bfloat16
    """
    torch_dtype, torch_device = dtype_of(dtype) or torch.float32, _device(device)
    _check_attn(attn_implementation)
    source = locate(name_or_path, revision)
    config = _config(source)
    hf = _weights(source, config, torch_dtype, attn_implementation)
    if torch_device is not None:
        hf.to(torch_device)
    tokenizer, tokenizer_source = _tokenizer(source, config)
    label = Path(source.name).name if source.kind == "directory" else source.name
    model = Model(hf, tokenizer, name=label, revision=source.loaded, tokenizer_source=tokenizer_source)
    model.origin = Origin(source.name, source.kind, source.requested, source.loaded, _commit(source), tokenizer_source)
    return model


def load_hf(folder: str | os.PathLike, dtype: torch.dtype | str | None = None, attn_implementation: str = "sdpa"):
    """The plain Hugging Face model saved in a folder, in eval mode: `from_pretrained(folder)`, and the same for a
    folder whose weights are a `model.safetensors.xz` (as some toy checkpoints are).

        >>> from interp import toy
        >>> type(load_hf(toy.checkpoint_path("toy-gpt2", "step0"), attn_implementation="eager")).__name__
        'GPT2LMHeadModel'
    """
    _check_attn(attn_implementation)
    source = _directory(Path(folder).expanduser(), None)
    return _weights(source, _config(source), dtype_of(dtype) or torch.float32, attn_implementation)


@dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint's local files as `load` would read them, found without reading any (see `checkpoint_files`)."""

    origin: Origin  # what `load` records, but `tokenizer`, which depends on the tokenizer that loads
    name_or_path: str  # what `from_pretrained` is given: a hub repo id or a folder
    configs: tuple[Path, ...]  # config.json (absent: not local), generation_config.json where there is one
    weights: tuple[Path, ...]  # () when they are not all on this machine
    tokenizers: tuple[tuple[str, str | None], ...]  # where `load` looks for a tokenizer, in order

    def fingerprint(self) -> tuple:
        """sha256 of every file `load` reads besides the weights: configs, and tokenizer files where it looks."""
        configs = tuple((p.name, _sha256(p)) for p in self.configs)
        return configs, tuple(tuple((name, _sha256(path)) for name, path in _tokenizer_inputs(where, revision))
                              for where, revision in self.tokenizers)


def checkpoint_files(name_or_path: str | os.PathLike, revision: str | None = None) -> CheckpointFiles:
    """Where `load(name_or_path, revision)` would read config, weights and tokenizer from (hub names: the local
    cache only).

        >>> found = checkpoint_files("toy-2l", "main")
        >>> found.origin.revision, [p.name for p in found.weights]
        ('step3600', ['model.safetensors'])
    """
    source = locate(name_or_path, revision)
    resolve = _resolver(source.weights, (source.revision or "main") if source.kind == "hub" else None)
    origin = Origin(source.name, source.kind, source.requested, source.loaded, _commit(source))
    configs = tuple(p for name in ("config.json", "generation_config.json") if (p := resolve(name)) is not None)
    return CheckpointFiles(origin, source.weights, configs, files.weight_files(resolve), source.tokenizers)


def tokenizer_label(where: str, revision: str | None) -> str:
    """How `model.tokenizer_source` names a tokenizer's repo (at a revision) or directory."""
    return where if revision is None else f"{where}@{revision}"


def shipped_tokenizer():
    """The GPT-NeoX-20B tokenizer (50,277 ids) that every Pythia model uses, from the copy in the package.

        >>> shipped_tokenizer()("Hello, I am")["input_ids"]
        [12092, 13, 309, 717]
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(SHIPPED_TOKENIZER), bos_token=_EOT, eos_token=_EOT,
                                   unk_token=_EOT)


# ---- names and paths ----------------------------------------------------------------------------


def locate(name_or_path: str | os.PathLike, revision: str | None) -> _Source:
    """Where a model name (or folder) and revision would load from, reading no weights: toy names, then
    suite and GPT-2 names, then existing directories, the revision checked first. Raises the same
    `InterpError` as `load` for an unknown name or revision."""
    suite.check_revision_type(revision)
    if isinstance(name_or_path, os.PathLike):
        return _directory(Path(name_or_path), revision)
    if not isinstance(name_or_path, str):
        raise UnknownModelError(
            f"name_or_path={name_or_path!r} is a {type(name_or_path).__name__}: pass a name such as 'pythia-160m'"
            " or 'toy', or a directory written by save_pretrained."
        )
    toy_name = toy.resolve(name_or_path)
    if toy_name is not None:
        return _toy(toy_name, revision)
    hub = None if _explicit_path(name_or_path) else suite.find(name_or_path)
    if hub is not None:
        _warn_if_shadowed(name_or_path)
        return _hub(name_or_path, hub, revision)
    return _directory(Path(name_or_path).expanduser(), revision, typed=name_or_path)


def _hub(name: str, hub: suite.ModelName | suite.GPT2Name, revision: str | None) -> _Source:
    requested = suite.check_revision(name, revision)
    repo = _cached_repo(hub.hub_ids, requested or "main")
    loaded = suite.loaded_revision(name, requested)
    return _Source(repo, "hub", repo, requested, requested, loaded, ((repo, requested or "main"),))


def _toy(name: str, revision: str | None) -> _Source:
    requested = suite.check_revision(name, revision)
    loaded = suite.loaded_revision(name, requested)
    path = str(toy.checkpoint_path(name, loaded))
    return _Source(name, "toy", path, None, requested, loaded, ((path, None), (str(toy.model_dir(name)), None)))


def _directory(path: Path, revision: str | None, typed: str | None = None) -> _Source:
    if not path.is_dir():
        raise _no_such_model(typed if typed is not None else str(path))
    if revision not in (None, "main"):
        raise UnknownRevisionError(
            f"revision={revision!r} applies to hub names, not the directory {str(path)!r}, which holds one"
            " checkpoint: drop revision=, or pass that checkpoint's own directory."
        )
    where = str(path.resolve())
    return _Source(where, "directory", where, None, revision, None, ((where, None), (str(path.resolve().parent), None)))


def _explicit_path(name: str) -> bool:
    """Written as a path ("./x", "../x", "/x", "~/x"), so never taken for a model name."""
    return name in (".", "..") or name.startswith(("./", "../", ".\\", "..\\", "~")) or os.path.isabs(name)


def _warn_if_shadowed(name: str) -> None:
    if Path(name).expanduser().is_dir():
        warnings.warn(
            f"{name!r} names a hub model and is also a directory here; loading the hub model. Write"
            f" './{name}' or pass pathlib.Path({name!r}) to load the directory.", UserWarning, stacklevel=4,
        )


def _no_such_model(name: str) -> UnknownModelError:
    """Neither a known name nor an existing directory: say which names are close."""
    hub = suite.find(Path(name).name) if _explicit_path(name) else None
    if hub is not None:
        return UnknownModelError(f"There is no directory at {name!r}. For the hub model, write {Path(name).name!r}.")
    return UnknownModelError(
        f"{name!r} is neither a model name nor an existing directory. Closest names: "
        f"{suite.close_names(name) or ['pythia-160m', 'gpt2', 'toy']}. Names: Pythia sizes {', '.join(suite.SIZES)}"
        f" (with -deduped, EleutherAI/, old names like pythia-1.3b), GPT-2 ({', '.join(suite.GPT2)}), or 'toy';"
        " or give a directory written by save_pretrained."
    )


# ---- reading ------------------------------------------------------------------------------------


def _cached_repo(repo_ids: tuple[str, ...], revision: str) -> str:
    """The first repo id whose config is in the local HF cache at `revision`, else the preferred one."""
    from huggingface_hub import try_to_load_from_cache

    for repo in repo_ids:
        if isinstance(try_to_load_from_cache(repo, "config.json", revision=revision), str):
            return repo
    return repo_ids[0]


def _resolver(where: str, revision: str | None) -> files.Resolve:
    """File name -> local path: in a hub repo's cached snapshot at `revision`, or in the directory `where`."""
    from huggingface_hub import try_to_load_from_cache

    if revision is None:
        return files.in_folder(Path(where))

    def resolve(name: str) -> Path | None:
        cached = try_to_load_from_cache(where, name, revision=revision)
        return Path(cached) if isinstance(cached, str) else None

    return resolve


def _tokenizer_inputs(where: str, revision: str | None) -> list[tuple[str, Path]]:
    """The tokenizer files a repo (at a revision) or directory holds locally."""
    if revision is not None:
        resolve = _resolver(where, revision)
        return [(name, path) for name in _TOKENIZER_INPUTS if (path := resolve(name)) is not None]
    try:
        with os.scandir(where) as entries:
            present = {e.name for e in entries if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [(name, Path(where, name)) for name in _TOKENIZER_INPUTS if name in present]


def _sha256(path: Path) -> str:
    """sha256 of a file, remembered while the file (after links) keeps its identity, size and modification time."""
    stat = os.stat(path)
    return _sha256_of(str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, device: int, inode: int, size: int, mtime_ns: int) -> str:
    return files.file_sha256(Path(path))


def _commit(source: _Source) -> str | None:
    """The commit hash of the cached snapshot the weights came from (hub names only)."""
    if source.kind != "hub":
        return None
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(source.weights, "config.json", revision=source.revision or "main")
    return Path(path).parent.name if isinstance(path, str) else None


def _config(source: _Source):
    """Read config.json only, and refuse architectures other than GPT-NeoX and GPT-2 before any weight."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.weights, revision=source.revision)
    except (OSError, ValueError) as err:
        raise _not_found(source, err) from err
    if config.model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"{source.name} is a {config.model_type!r} model; pythia-interp supports GPT-NeoX (`model_type:"
            " gpt_neox`: the Pythia suite, GPT-NeoX-20B, models of that architecture) and GPT-2 (`model_type: gpt2`)."
        )
    return config


# transformers' from_pretrained swaps PreTrainedModel.tie_weights for a no-op while it builds a model (a class
# attribute, restored when it returns). Two loads at once in different threads (the explorer prefetches in one)
# can leave the no-op in place for good, and every tied model built after that (GPT-2's lm_head) stays untied.
# So this process builds one model at a time.
_BUILDING = threading.Lock()


def _weights(source: _Source, config, dtype: torch.dtype, attn_implementation: str):
    import transformers

    cls = getattr(transformers, ARCHITECTURES[config.model_type])
    try:
        packed = _packed(source)
        if packed is not None:
            return _from_packed(cls, packed, config, dtype, attn_implementation)
        with _BUILDING:
            hf = cls.from_pretrained(source.weights, revision=source.revision, config=config, dtype=dtype,
                                     attn_implementation=attn_implementation)
        return hf.eval()
    except OSError as err:
        raise _not_found(source, err) from err


def _packed(source: _Source) -> Path | None:
    """The `model.safetensors.xz` of a local checkpoint that holds its weights so, else None."""
    if source.kind == "hub":
        return None
    found = files.weight_files(Path(source.weights))
    return found[0] if len(found) == 1 and files.is_packed(found[0]) else None


def _from_packed(cls, path: Path, config, dtype: torch.dtype, attn_implementation: str):
    """`from_pretrained` on the tensors of a `model.safetensors.xz`, refusing any that do not fit (strict)."""
    from transformers import GenerationConfig

    tensors = files.read_tensors([path])
    with _BUILDING:
        hf, info = cls.from_pretrained(None, config=config, state_dict=tensors, dtype=dtype,
                                       attn_implementation=attn_implementation, output_loading_info=True)
    misfits = {kind: sorted(map(str, keys)) for kind, keys in info.items() if keys}
    if misfits:
        raise WeightsNotFoundError(
            f"{path} does not fit the {cls.__name__} of its config.json: {misfits}. Decompress it with `xz -dk` "
            "and check its tensors against the config."
        )
    folder = path.parent
    hf.config._name_or_path = hf.name_or_path = str(folder)
    if (folder / "generation_config.json").is_file():
        hf.generation_config = GenerationConfig.from_pretrained(folder)
    return hf.eval()


def _not_found(source: _Source, err: Exception) -> WeightsNotFoundError:
    if source.kind != "hub":
        return WeightsNotFoundError(f"Could not read a model from {source.weights}: {err}")
    from huggingface_hub import constants

    rev = source.revision or "main"
    offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
    return WeightsNotFoundError(
        f"{source.weights} at revision {rev!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
        f" and could not be downloaded{offline}: {type(err).__name__}. On a machine with network run "
        f"`hf download {source.weights} --revision {rev}` and copy the cache here, or pass a directory "
        "written by save_pretrained to interp.load()."
    )


# ---- tokenizer ----------------------------------------------------------------------------------


def _tokenizer(source: _Source, config):
    """(tokenizer, where it came from): the weights' own, else the shipped one for GPT-NeoX, else (None, None)."""
    for where, revision in source.tokenizers:
        tokenizer = _try_tokenizer(where, revision)
        if tokenizer is not None:
            return tokenizer, tokenizer_label(where, revision)
    looked = ", ".join(tokenizer_label(w, r) for w, r in source.tokenizers)
    if config.model_type == "gpt_neox" and config.vocab_size >= suite.TOKENIZER_VOCAB:
        warnings.warn(
            f"No tokenizer for {source.name} (looked in {looked}); using the GPT-NeoX-20B tokenizer shipped with"
            f" pythia-interp, which every Pythia model uses. model.tokenizer_source == {SHIPPED!r}.",
            TokenizerWarning, stacklevel=3,
        )
        return shipped_tokenizer(), SHIPPED
    warnings.warn(
        f"No tokenizer for {source.name} (looked in {looked}): the model takes token ids only. Pass one with"
        " interp.Model(hf_model, tokenizer).", TokenizerWarning, stacklevel=3,
    )
    return None, None


def _try_tokenizer(where: str, revision: str | None):
    """A tokenizer with a real vocabulary from a repo or directory, or None."""
    from transformers import AutoTokenizer

    if Path(where).is_dir() and not any((Path(where) / f).is_file() for f in _TOKENIZER_FILES):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, revision=revision)
    except (OSError, ValueError, TypeError):
        return None
    # From config.json alone, AutoTokenizer builds a tokenizer holding only its special tokens.
    return tokenizer if len(tokenizer) > len(set(tokenizer.all_special_ids)) else None


# ---- options ------------------------------------------------------------------------------------


def _check_attn(attn_implementation: str) -> None:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise InvalidOptionError(
            f"attn_implementation={attn_implementation!r} is not supported: use one of {list(ATTN_IMPLEMENTATIONS)}"
            " (default 'sdpa')."
        )
