"""The Pythia suite and the GPT-2 family as data: sizes, exact configs, name aliases, the 154-step schedule.

    >>> from interp import suite
    >>> suite.resolve("pythia-160m-deduped").hf_id
    'EleutherAI/pythia-160m-deduped'
    >>> suite.resolve("pythia-1.3b").hf_id, suite.resolve("gpt2-medium").hf_id  # old names; GPT-2 beside Pythia
    ('EleutherAI/pythia-1.4b', 'openai-community/gpt2-medium')
    >>> suite.revisions("160m")[:4], len(suite.revisions("160m"))
    (['step0', 'step1', 'step2', 'step4'], 154)
    >>> suite.loaded_revision("160m", "main"), suite.loaded_revision("toy", None)  # what `main` is
    ('step143000', 'step3600')
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from transformers import GPT2Config, GPTNeoXConfig

from interp.errors import UnknownModelError, UnknownRevisionError


@dataclass(frozen=True)
class Size:
    """Hyperparameters of one Pythia size (as in its HF `config.json`)."""

    d_model: int
    n_layers: int
    n_heads: int
    d_vocab: int = 50304  # the embedding rows; the tokenizer itself has 50277 ids

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


SIZES: dict[str, Size] = {
    "14m": Size(128, 6, 4),
    "31m": Size(256, 6, 8),
    "70m": Size(512, 6, 8),
    "160m": Size(768, 12, 12),
    "410m": Size(1024, 24, 16),
    "1b": Size(2048, 16, 8),
    "1.4b": Size(2048, 24, 16),
    "2.8b": Size(2560, 32, 32),
    "6.9b": Size(4096, 32, 32, d_vocab=50432),
    "12b": Size(5120, 36, 40, d_vocab=50688),
}

# Names the suite had before its 2023 renaming (the parameter counts then excluded embeddings).
OLD_NAMES = {
    "19m": "70m", "125m": "160m", "350m": "410m", "800m": "1b",
    "1.3b": "1.4b", "2.7b": "2.8b", "6.7b": "6.9b", "13b": "12b",
}
NO_V0 = {"14m", "31m"}  # released after the v0 suite

TOKENIZER_VOCAB = 50277
EOS_TOKEN_ID = 0
FINAL_STEP = 143000  # on the hub, every Pythia repo's `main` is this step
_NAME = re.compile(r"^(?:eleutherai/)?(?:pythia-)?([0-9.]+[mb])(-deduped)?(-v0)?$")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelName:
    """A resolved suite name: `EleutherAI/pythia-<size>[-deduped][-v0]`."""

    size: str
    deduped: bool = False
    v0: bool = False
    family = "pythia"

    @property
    def hf_id(self) -> str:
        return f"EleutherAI/pythia-{self.size}{'-deduped' * self.deduped}{'-v0' * self.v0}"

    @property
    def hub_ids(self) -> tuple[str, ...]:
        """Repo ids to look for in a local cache, preferred first."""
        return (self.hf_id,)


@dataclass(frozen=True)
class GPT2Size:
    """One GPT-2 model: its hub id, the id older caches stored it under, and its shape."""

    hf_id: str
    legacy_id: str
    d_model: int
    n_layers: int
    n_heads: int


GPT2: dict[str, GPT2Size] = {
    "gpt2": GPT2Size("openai-community/gpt2", "gpt2", 768, 12, 12),
    "gpt2-medium": GPT2Size("openai-community/gpt2-medium", "gpt2-medium", 1024, 24, 16),
    "gpt2-large": GPT2Size("openai-community/gpt2-large", "gpt2-large", 1280, 36, 20),
    "gpt2-xl": GPT2Size("openai-community/gpt2-xl", "gpt2-xl", 1600, 48, 25),
    "distilgpt2": GPT2Size("distilbert/distilgpt2", "distilgpt2", 768, 6, 12),
}
GPT2_VOCAB, GPT2_CTX, GPT2_EOS = 50257, 1024, 50256
_GPT2_ALIASES = {"gpt2-small": "gpt2"} | {s.hf_id.lower(): k for k, s in GPT2.items()}


@dataclass(frozen=True)
class GPT2Name:
    """A resolved GPT-2 name, e.g. `gpt2-medium` -> `openai-community/gpt2-medium`."""

    key: str
    family = "gpt2"

    @property
    def hf_id(self) -> str:
        return GPT2[self.key].hf_id

    @property
    def hub_ids(self) -> tuple[str, ...]:
        """The current id, then the bare one that caches filled before the hub moved GPT-2."""
        return (self.hf_id, GPT2[self.key].legacy_id)


def find(name: str) -> ModelName | GPT2Name | None:
    """The suite or GPT-2 model a string names, or None when it names none (it may be a path)."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    key = _GPT2_ALIASES.get(key, key)
    if key in GPT2:
        return GPT2Name(key)
    match = _NAME.match(key)
    size = match and OLD_NAMES.get(match.group(1), match.group(1))
    if not match or size not in SIZES:
        return None
    if match.group(3) and size in NO_V0:
        raise UnknownModelError(f"{name!r}: pythia-{size} has no -v0 variant; drop the '-v0'.")
    return ModelName(size, deduped=bool(match.group(2)), v0=bool(match.group(3)))


def resolve(name: str) -> ModelName | GPT2Name:
    """Parse `160m`, `pythia-160m`, `EleutherAI/pythia-160m-deduped`, `pythia-125m-v0`, `gpt2-xl`, ..."""
    found = find(name)
    if found is None:
        raise UnknownModelError(
            f"{name!r} is not a Pythia or GPT-2 model. Pythia sizes: {', '.join(SIZES)} (each also -deduped);"
            f" GPT-2: {', '.join(GPT2)}; closest names: {close_names(name) or list(SIZES)}. A local directory"
            " written by save_pretrained, or 'toy', also loads."
        )
    return found


def close_names(name: object, n: int = 5) -> list[str]:
    """Known names (suite, GPT-2, toy) that look like `name`, closest first."""
    from interp import toy

    short = [n.removeprefix("EleutherAI/") for n in all_names()]
    known = [*all_names(), *short, *GPT2, *(s.hf_id for s in GPT2.values()), *toy.ALIASES, *toy.NAMES]
    by_lower = {k.lower(): k for k in known}
    hits = difflib.get_close_matches(str(name).strip().lower(), list(by_lower), n=n, cutoff=0.5)
    return [by_lower[h] for h in hits]


def all_names() -> list[str]:
    """Every canonical HF id of the Pythia suite."""
    return [
        ModelName(size, deduped, v0).hf_id
        for size in SIZES
        for deduped in (False, True)
        for v0 in (False, True)
        if not (v0 and size in NO_V0)
    ]


def config(name: str) -> GPTNeoXConfig | GPT2Config:
    """The exact HF config of a suite or GPT-2 model, so it can be built offline (e.g. on `meta`)."""
    found = resolve(name)
    if isinstance(found, GPT2Name):
        g = GPT2[found.key]
        return gpt2_config(g.d_model, g.n_layers, g.n_heads)
    size = SIZES[found.size]
    return neox_config(size.d_model, size.n_layers, size.n_heads, size.d_vocab)


def neox_config(d_model: int, n_layers: int, n_heads: int, d_vocab: int, n_ctx: int = 2048) -> GPTNeoXConfig:
    """Pythia's architecture at any size: parallel residual, rotary on 25% of dims, untied, GELU."""
    return GPTNeoXConfig(
        vocab_size=d_vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=4 * d_model,
        hidden_act="gelu",
        rotary_pct=0.25,
        rotary_emb_base=10000,
        max_position_embeddings=n_ctx,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_bias=True,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=EOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        use_cache=True,
        architectures=["GPTNeoXForCausalLM"],
    )


def gpt2_config(d_model: int, n_layers: int, n_heads: int, d_vocab: int = GPT2_VOCAB,
                n_ctx: int = GPT2_CTX) -> GPT2Config:
    """GPT-2's architecture at any size: sequential residual, learned positions, tied embeddings, GELU (tanh)."""
    return GPT2Config(
        vocab_size=d_vocab,
        n_positions=n_ctx,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=GPT2_EOS if d_vocab > GPT2_EOS else None,
        eos_token_id=GPT2_EOS if d_vocab > GPT2_EOS else None,
        architectures=["GPT2LMHeadModel"],
    )


def pythia_steps() -> list[int]:
    """The 154 saved steps: 0, 1, 2, 4, ..., 512, then 1000 to 143000 every 1000."""
    return [0] + [2**i for i in range(10)] + list(range(1000, FINAL_STEP + 1, 1000))


def revisions(name: str) -> list[str]:
    """Every checkpoint of a model as a revision name, in training order (GPT-2 has one: `main`)."""
    from interp import toy

    toy_name = toy.resolve(name)
    if toy_name is not None:
        return toy.revisions(toy_name)
    if isinstance(resolve(name), GPT2Name):
        return ["main"]
    return [f"step{step}" for step in pythia_steps()]


def check_revision(name: str, revision: str | None) -> str | None:
    """Validate a revision: a saved step, `main`/None, or (hub models) a 40-hex commit; raise with nearest steps."""
    check_revision_type(revision)
    if revision is None or revision == "main":
        return revision
    valid = revisions(name)
    if revision in valid or (_COMMIT.fullmatch(revision) and find(name) is not None):
        return revision
    if valid == ["main"]:
        raise UnknownRevisionError(f"{revision!r} is not a checkpoint of {name!r}: it has one, 'main' (or a commit).")
    raise UnknownRevisionError(f"{revision!r} is not a checkpoint of {name!r}. {_nearest(revision, valid)}")


def check_revision_type(revision: object) -> None:
    """Refuse a revision that is not a string or None (`1000` -> use 'step1000')."""
    if revision is not None and not isinstance(revision, str):
        raise UnknownRevisionError(f"revision={revision!r} is not a string. {_as_string(revision)}")


def loaded_revision(name: str, revision: str | None) -> str | None:
    """The checkpoint a revision names: `main` and None are the final step (GPT-2: `main`)."""
    revision = check_revision(name, revision)
    if revision is None or revision == "main":
        return revisions(name)[-1]
    return revision


def _as_string(revision: object) -> str:
    """The fix for a revision of the wrong type."""
    if isinstance(revision, int) and not isinstance(revision, bool):
        return f"Revisions are strings: pass revision='step{revision}'."
    return "Revisions are strings like 'step1000' or 'main'."


def _nearest(revision: str, valid: list[str]) -> str:
    """Name the saved steps nearest to a requested one."""
    match = re.fullmatch(r"(?:step)?(\d+)", revision.strip())
    if not match:
        return f"Revisions look like 'step1000' or 'main'; this model has {valid[0]} ... {valid[-1]}."
    step = int(match.group(1))
    below = [r for r in valid if int(r[4:]) < step][-1:]
    above = [r for r in valid if int(r[4:]) > step][:1]
    return f"Nearest saved steps: {', '.join(below + above)}."
