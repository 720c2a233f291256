"""A local Hugging Face hub cache in the layout `hf download` writes, with tiny stand-in models under real repo ids.

    cache = build_hub_cache(tmp_path)          # every Pythia repo at main and step1000, GPT-2, special cases
    use_hub_cache(monkeypatch, cache.root)     # HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at it
    interp.load("pythia-1.4b", revision="step1000")

Layout per repo: `models--<org>--<name>/refs/<revision>` holds a commit hash; `snapshots/<hash>/<file>` are
symlinks into `blobs/`. Each snapshot has its own seeded weights, and its own tokenizer whose vocabulary holds a
marker word `<repo>@<revision>`, so a test can tell which snapshot the weights and the tokenizer came from.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from interp import suite

VOCAB = 80  # model rows; the stand-in tokenizers use words t0..t63 plus one marker word (id 64)
MARKER_ID = 64
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "t0", "bos_token": "t0",
                    "unk_token": "t1", "model_max_length": 32}
GPT2_REPOS = ("openai-community/gpt2", "openai-community/gpt2-medium", "openai-community/gpt2-large",
              "gpt2-xl", "distilbert/distilgpt2")  # gpt2-xl sits under its pre-2024 id, as in older caches
REVISIONS = ("main", "step1000")
NEOX_DISK_NAMES = {"lm_head.weight": "embed_out.weight"}  # transformers' name -> the name in Pythia's files
NO_TOKENIZER = ("EleutherAI/pythia-70m", "step2000")  # weights and config, but no tokenizer files
ABSENT = ("EleutherAI/pythia-70m", "step3000")  # a saved step that is not in the cache


@dataclass
class HubCache:
    """Where the cache is and what each snapshot holds."""

    root: Path
    weights: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    commits: dict[tuple[str, str], str] = field(default_factory=dict)


def commit_of(repo: str, revision: str) -> str:
    """A stable fake 40-hex commit hash per (repo, revision)."""
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


def tiny_config(kind: str):
    """A tiny config with the real architecture flags: "neox", "neox-wide" (Pythia's 50,304 rows) or "gpt2"."""
    if kind == "gpt2":
        return suite.gpt2_config(d_model=16, n_layers=1, n_heads=2, d_vocab=VOCAB, n_ctx=32)
    d_vocab = suite.SIZES["160m"].d_vocab if kind == "neox-wide" else VOCAB
    return suite.neox_config(d_model=16, n_layers=1, n_heads=2, d_vocab=d_vocab, n_ctx=32)


def build_hub_cache(root: Path) -> HubCache:
    """Write every Pythia repo at main and step1000, GPT-2 at main, and the special cases above."""
    cache = HubCache(root)
    for repo in suite.all_names():
        for revision in REVISIONS:
            add_snapshot(cache, repo, revision)
    for repo in GPT2_REPOS:
        add_snapshot(cache, repo, "main")
    add_snapshot(cache, *NO_TOKENIZER, tokenizer=False, kind="neox-wide")
    return cache


def add_snapshot(cache: HubCache, repo: str, revision: str, tokenizer: bool = True, kind: str | None = None,
                 marker: str | None = None) -> None:
    """One snapshot: config.json, model.safetensors and (optionally) tokenizer files, plus refs/<revision>.
    The tokenizer's marker word is `<repo>@<revision>` unless `marker` is given (snapshots may share one)."""
    kind = kind or ("neox" if repo.startswith("EleutherAI/") else "gpt2")
    commit = commit_of(repo, revision)
    weights = _random_weights(kind, seed=int(commit[:8], 16))
    files = {"config.json": _config_json(kind), "model.safetensors": _safetensors(weights)}
    if tokenizer:
        files["tokenizer.json"] = _tokenizer_json(marker or f"{repo}@{revision}").encode()
        files["tokenizer_config.json"] = json.dumps(TOKENIZER_CONFIG).encode()
    repo_dir = cache.root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    for name, data in files.items():
        _write_blob(repo_dir, commit, name, data)
    cache.weights[repo, revision] = weights
    cache.commits[repo, revision] = commit


def use_hub_cache(monkeypatch, root: Path) -> None:
    """Point huggingface_hub (and so transformers) at `root`, offline, for one test.

    huggingface_hub reads its environment once, at import; every reader of the cache path and of the
    offline flag then looks them up as `huggingface_hub.constants.<NAME>` at call time, so patching the
    constants (and the environment, for anything started later) is enough.
    """
    import huggingface_hub.constants as constants

    for var, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root), "HF_HOME": str(root.parent)}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))


def _random_weights(kind: str, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights for every tensor the HF class saves (tied GPT-2 heads are saved once)."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) * 0.1 for name, shape in _shapes(kind).items()}


@functools.cache
def _config_json(kind: str) -> bytes:
    return tiny_config(kind).to_json_string().encode()


@functools.cache
def _shapes(kind: str) -> dict[str, torch.Size]:
    from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM

    config = tiny_config(kind)
    cls = GPT2LMHeadModel if kind == "gpt2" else GPTNeoXForCausalLM
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in cls(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight")
    return {NEOX_DISK_NAMES.get(k, k) if kind != "gpt2" else k: v for k, v in shapes.items()}


def disk_state(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A loaded model's tensors under the names its checkpoint files use (Pythia's head is `embed_out`;
    GPT-2's tied head is not saved)."""
    renames = NEOX_DISK_NAMES if hf.config.model_type == "gpt_neox" else {}
    state = {renames.get(k, k): v for k, v in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        head = state.pop("lm_head.weight")
        assert head.data_ptr() == hf.get_input_embeddings().weight.data_ptr(), "the head is not tied"
    return state


def _safetensors(weights: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(weights, metadata={"format": "pt"})


def _tokenizer_json(marker: str) -> str:
    vocab = {f"t{i}": i for i in range(MARKER_ID)} | {marker: MARKER_ID}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok.to_str()


def _write_blob(repo_dir: Path, commit: str, name: str, data: bytes) -> None:
    """Store `data` in blobs/<sha256> and link snapshots/<commit>/<name> to it, as the hub cache does."""
    digest = hashlib.sha256(data).hexdigest()
    blob = repo_dir / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        blob.write_bytes(data)
    link = repo_dir / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("..", "..", "blobs", digest))

