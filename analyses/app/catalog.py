"""Which models the explorer offers, where their checkpoints are, and how to get a missing one.

    >>> from analyses.app.catalog import Catalog
    >>> catalog = Catalog(hub_cache="/nonexistent")
    >>> [e.key for e in catalog.entries()][:3]
    ['EleutherAI/pythia-160m', 'EleutherAI/pythia-410m', 'openai-community/gpt2']
    >>> catalog.revisions(catalog.lookup("toy-2l"))[-1]
    'step3600'

The page only ever sends a key; the catalog maps it to a toy model, a directory given on the
command line, or a hub name. A key it does not know is treated as a hub name if it looks like
one, and is refused otherwise: paths come from the command line, never from the page.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from interp import suite, toy
from interp.errors import UnknownModelError, WeightsNotFoundError

DEMO_NAMES = ("EleutherAI/pythia-160m", "EleutherAI/pythia-410m")  # listed first, as in Pythia's demos
GPT2_NAMES = ("openai-community/gpt2", "openai-community/gpt2-medium")  # their GPT-2 counterparts in size
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
_STEP = re.compile(r"step(\d+)")


@dataclass(frozen=True)
class Entry:
    """One model the page can choose: its key (the dropdown value), label and where it lives."""

    key: str
    label: str
    kind: Literal["toy", "dir", "hub"]
    target: str  # toy name, directory, or hub repo id


class Catalog:
    """The models on offer: demo names, the toy suite, command-line directories, the HF cache."""

    def __init__(self, paths: Sequence[str | os.PathLike] = (), hub_cache: str | os.PathLike | None = None,
                 dtype: str | None = None, device: str | None = None):
        self.hub_cache = Path(hub_cache) if hub_cache is not None else _default_hub_cache()
        self.load_options = {"dtype": dtype, "device": device}  # for interp.load: every model loads so
        self._dirs = {}
        for path in paths:
            entry = _dir_entry(Path(path))
            self._dirs[entry.key] = entry

    def entries(self) -> list[Entry]:
        """Every model to list, in order: Pythia's demo names and GPT-2 beside them, the toy suite,
        command-line directories, other cached hub names."""
        hub = [_hub_entry(n) for n in (*DEMO_NAMES, *GPT2_NAMES)]
        toys = [Entry(n, f"{n} (embedded toy)", "toy", n) for n in toy.NAMES]
        cached = [_hub_entry(n) for n in self.cached_repos() if n not in (*DEMO_NAMES, *GPT2_NAMES)]
        return [*hub, *toys, *self._dirs.values(), *cached]

    def lookup(self, key: str) -> Entry:
        """The entry of a dropdown value or a typed hub name; UnknownModelError for anything else."""
        if not isinstance(key, str) or not key.strip():
            raise UnknownModelError("No model chosen: pick one from the list.")
        key = key.strip()
        known = {e.key: e for e in self.entries()}
        if key in known:
            return known[key]
        if toy.resolve(key) is not None:
            return known[toy.resolve(key)]
        if HUB_NAME.fullmatch(key) and ".." not in key:
            return _hub_entry(_canonical_hub_name(key))
        raise UnknownModelError(
            f"{key[:80]!r} is not a model this explorer knows. Choose one of the list, type a hub name such as "
            "'EleutherAI/pythia-70m', or pass a directory on the command line: `pythia-interp serve PATH`."
        )

    def revisions(self, entry: Entry) -> list[str]:
        """The checkpoints of a model in training order (one, 'main', for a plain directory)."""
        if entry.kind == "toy":
            return toy.revisions(entry.target)
        if entry.kind == "dir":
            return _step_dirs(Path(entry.target)) or ["main"]
        try:
            return suite.revisions(entry.target)
        except UnknownModelError:
            return self._cached_refs(entry.target) or ["main"]

    def default_revision(self, entry: Entry) -> str:
        """The last checkpoint that is on disk (the last one when none is)."""
        revisions = self.revisions(entry)
        if entry.kind != "hub":
            return revisions[-1]
        cached = [r for r in self._cached_refs(entry.target) if r in revisions]
        return max(cached, key=revisions.index) if cached else revisions[-1]

    def missing(self, entry: Entry, revision: str) -> str | None:
        """None when the checkpoint is on disk; otherwise a message saying how to get it."""
        if revision != "main" and revision not in self.revisions(entry):
            return f"{entry.key} has no checkpoint {revision!r}; choose one with the slider."
        if entry.kind != "hub" or self._local_file(entry.target, revision, WEIGHT_FILES):
            return None
        flag = "" if revision == "main" else f" --revision {revision}"
        return (
            f"{entry.target} at {revision} is not in the local Hugging Face cache ({self.hub_cache}). "
            f"Get it with `hf download {entry.target}{flag}` (on a machine with network, then copy the cache "
            "here), and choose it again. Other checkpoints on disk: "
            f"{', '.join(self._cached_refs(entry.target)) or 'none'}."
        )

    def config(self, entry: Entry, revision: str) -> dict:
        """The checkpoint's config.json as a dict (read from disk, no weights loaded)."""
        if entry.kind == "hub":
            path = self._local_file(entry.target, revision, ("config.json",))
        else:
            path = self.location(entry, revision) / "config.json"
        return json.loads(Path(path).read_text())

    def location(self, entry: Entry, revision: str) -> Path:
        """Directory of a toy or command-line checkpoint."""
        if entry.kind == "toy":
            return toy.checkpoint_path(entry.target, revision)
        root = Path(entry.target)
        return root if revision == "main" and not _step_dirs(root) else root / revision

    def load(self, entry: Entry, revision: str):
        """Load a checkpoint that is on disk (hub names from their cached snapshot: no network, no cwd)."""
        import interp

        if entry.kind == "toy":
            model = interp.load(entry.target, revision=revision, **self.load_options)
        elif entry.kind == "dir":
            model = interp.load(self.location(entry, revision), **self.load_options)
        else:
            snapshot = self._local_file(entry.target, revision, WEIGHT_FILES)
            if snapshot is None:
                raise WeightsNotFoundError(self.missing(entry, revision))
            model = interp.load(snapshot.parent, **self.load_options)
        name = entry.target if entry.kind != "dir" else Path(entry.target).name
        model.name, model.revision = name, revision  # provenance names the model and checkpoint chosen
        return model

    def cached_repos(self) -> list[str]:
        """Model repo ids found in the local Hugging Face cache (models--ORG--NAME folders)."""
        if not self.hub_cache.is_dir():
            return []
        names = [p.name[len("models--"):].replace("--", "/") for p in self.hub_cache.glob("models--*") if p.is_dir()]
        return sorted(names, key=str.lower)

    def _repo_dir(self, repo: str) -> Path:
        return self.hub_cache / ("models--" + repo.replace("/", "--"))

    def _cached_refs(self, repo: str) -> list[str]:
        """Revisions of a repo that have a snapshot with weights, in step order."""
        refs = self._repo_dir(repo) / "refs"
        names = [p.name for p in refs.iterdir() if p.is_file()] if refs.is_dir() else []
        names = [n for n in names if self._local_file(repo, n, WEIGHT_FILES)]
        return sorted(names, key=lambda n: (int(m.group(1)) if (m := _STEP.fullmatch(n)) else 10**9, n))

    def _local_file(self, repo: str, revision: str, files: Sequence[str]) -> Path | None:
        """The first of `files` in the cached snapshot of `revision`, or None."""
        repo_dir = self._repo_dir(repo)
        ref = repo_dir / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        if not re.fullmatch(r"[\w.-]+", commit):
            return None
        snapshot = repo_dir / "snapshots" / commit
        return next((snapshot / f for f in files if (snapshot / f).is_file()), None)


def _default_hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_entry(repo: str) -> Entry:
    return Entry(repo, repo, "hub", repo)


def _canonical_hub_name(name: str) -> str:
    """Suite spellings ('160m', 'pythia-160m-deduped') become their repo id; others stay as typed."""
    try:
        return suite.resolve(name).hf_id
    except UnknownModelError:
        return name


def _dir_entry(path: Path) -> Entry:
    """A command-line directory: a save_pretrained folder, or a folder of step<N>/ checkpoints."""
    path = path.expanduser().resolve()
    if not path.is_dir() or not ((path / "config.json").is_file() or _step_dirs(path)):
        raise UnknownModelError(
            f"{path} is not a model directory: pass a folder written by save_pretrained (with config.json), "
            "or one holding step<N>/ checkpoint folders."
        )
    return Entry(str(path), f"{path.name} ({path})", "dir", str(path))


def _step_dirs(root: Path) -> list[str]:
    """step<N>/ checkpoint folders with a config.json, in step order."""
    steps = [(int(m.group(1)), p.name) for p in root.glob("step*")
             if (m := _STEP.fullmatch(p.name)) and (p / "config.json").is_file()]
    return [name for _, name in sorted(steps)]
