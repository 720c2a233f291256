"""The Pythia suite as data: sizes, exact configs, name aliases and the 154-step schedule.

    >>> from interp import suite
    >>> suite.resolve("pythia-160m-deduped").hf_id
    'EleutherAI/pythia-160m-deduped'
    >>> suite.revisions("160m")[:4], len(suite.revisions("160m"))
    (['step0', 'step1', 'step2', 'step4'], 154)
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from transformers import GPTNeoXConfig

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
FINAL_STEP = 143000
_NAME = re.compile(r"^(?:eleutherai/)?(?:pythia-)?([0-9.]+[mb])(-deduped)?(-v0)?$")


@dataclass(frozen=True)
class ModelName:
    """A resolved suite name: `EleutherAI/pythia-<size>[-deduped][-v0]`."""

    size: str
    deduped: bool = False
    v0: bool = False

    @property
    def hf_id(self) -> str:
        return f"EleutherAI/pythia-{self.size}{'-deduped' * self.deduped}{'-v0' * self.v0}"


def resolve(name: str) -> ModelName:
    """Parse `160m`, `pythia-160m`, `EleutherAI/pythia-160m-deduped`, `pythia-125m-v0`, ..."""
    match = _NAME.match(name.strip().lower())
    size = match and OLD_NAMES.get(match.group(1), match.group(1))
    if not match or size not in SIZES:
        close = difflib.get_close_matches(name, all_names(), n=5, cutoff=0.5)
        raise UnknownModelError(
            f"{name!r} is not a Pythia model. Sizes: {', '.join(SIZES)} (each also -deduped);"
            f" closest names: {close or list(SIZES)}. A local directory written by"
            " save_pretrained, or 'toy', also loads."
        )
    if match.group(3) and size in NO_V0:
        raise UnknownModelError(f"{name!r}: pythia-{size} has no -v0 variant; drop the '-v0'.")
    return ModelName(size, deduped=bool(match.group(2)), v0=bool(match.group(3)))


def all_names() -> list[str]:
    """Every canonical HF id of the suite."""
    return [
        ModelName(size, deduped, v0).hf_id
        for size in SIZES
        for deduped in (False, True)
        for v0 in (False, True)
        if not (v0 and size in NO_V0)
    ]


def config(name: str) -> GPTNeoXConfig:
    """The exact `GPTNeoXConfig` of a suite model, so it can be built offline (e.g. on `meta`)."""
    size = SIZES[resolve(name).size]
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


def pythia_steps() -> list[int]:
    """The 154 saved steps: 0, 1, 2, 4, ..., 512, then 1000 to 143000 every 1000."""
    return [0] + [2**i for i in range(10)] + list(range(1000, FINAL_STEP + 1, 1000))


def revisions(name: str) -> list[str]:
    """Every checkpoint of a model as a revision name, in training order."""
    from interp import toy

    toy_name = toy.resolve(name)
    if toy_name is not None:
        return toy.revisions(toy_name)
    resolve(name)
    return [f"step{step}" for step in pythia_steps()]


def check_revision(name: str, revision: str | None) -> str | None:
    """Validate a revision against the schedule; `main` and None pass; raise with nearest steps."""
    if revision is None or revision == "main":
        return revision
    valid = revisions(name)
    if revision in valid:
        return revision
    raise UnknownRevisionError(f"{revision!r} is not a checkpoint of {name!r}. {_nearest(revision, valid)}")


def _nearest(revision: str, valid: list[str]) -> str:
    """Name the saved steps nearest to a requested one."""
    match = re.fullmatch(r"(?:step)?(\d+)", revision.strip())
    if not match:
        return f"Revisions look like 'step1000' or 'main'; this model has {valid[0]} ... {valid[-1]}."
    step = int(match.group(1))
    nearest = sorted(valid, key=lambda r: abs(int(r[4:]) - step))[:2]
    return f"Nearest saved steps: {', '.join(sorted(nearest, key=lambda r: int(r[4:])))}."
