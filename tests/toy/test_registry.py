"""The toy registry (names, revisions, paths), the shipped files, configs and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interp import files, toy
from tests.toy.conftest import require_checkpoints, tokenizer, weights
from toy_training.spec import SPECS, VOCAB_SIZE, schedule

ROOT = Path(__file__).resolve().parents[2]
# fp16 bytes of all 16 checkpoints of each model: 420,480 / 331,136 / 346,752 parameters x 2 bytes x 16;
# toy-gpt2's are xz-compressed (toy.PACKED) to fit 10 MB
MAX_WEIGHT_BYTES = {"toy-2l": 13_600_000, "toy-4l": 10_700_000, "toy-gpt2": 10_000_000}
NEOX = [n for n in toy.NAMES if toy.ARCH[n] == "neox"]
GPT2 = [n for n in toy.NAMES if toy.ARCH[n] == "gpt2"]


def test_resolve_names_and_alias():
    assert toy.resolve("toy") == toy.DEFAULT == "toy-2l"
    assert [toy.resolve(n) for n in toy.NAMES] == list(toy.NAMES)
    assert toy.resolve("pythia-70m") is None, "real Pythia names must fall through to the core"
    assert toy.resolve("TOY") is None and toy.resolve(None) is None


@pytest.mark.parametrize("name", toy.NAMES)
def test_revisions_follow_the_schedule_in_training_order(name):
    require_checkpoints(name)
    saved = toy.revisions(name)
    assert saved == [f"step{s}" for s in schedule(SPECS[name])], "shipped steps differ from spec.schedule"
    assert saved[:4] == ["step0", "step1", "step2", "step4"], "Pythia-like log-spaced start"
    assert toy.revisions("toy") == toy.revisions(toy.DEFAULT)
    record = json.loads((toy.model_dir(name) / "training.json").read_text())
    assert [f"step{s}" for s in record["schedule"]] == saved


@pytest.mark.parametrize("name", toy.NAMES)
def test_checkpoint_path_main_and_none_mean_the_final_step(name):
    require_checkpoints(name)
    final = toy.revisions(name)[-1]
    assert toy.checkpoint_path(name) == toy.checkpoint_path(name, "main") == toy.model_dir(name) / final
    assert toy.checkpoint_path(name, "step0").name == "step0"
    stored = files.PACKED if name in toy.PACKED else files.SAFETENSORS
    assert [p.name for p in files.weight_files(toy.checkpoint_path(name, "step0"))] == [stored]


def test_unknown_revision_names_the_nearest_saved_steps():
    require_checkpoints("toy-2l")
    saved = toy.revisions("toy-2l")
    after, before = saved[-2], saved[-3]
    between = f"step{(int(before[4:]) + int(after[4:])) // 2}"
    with pytest.raises(ValueError, match=rf"nearest: {before}, {after}\b"):
        toy.checkpoint_path("toy-2l", between)
    with pytest.raises(ValueError, match="'main'"):
        toy.checkpoint_path("toy-2l", "latest")
    with pytest.raises(ValueError, match="not a toy model.*toy-4l"):
        toy.checkpoint_path("toy-9l")


@pytest.mark.parametrize("name", toy.NAMES)
def test_shipped_weights_fit_the_budget(name):
    require_checkpoints(name)
    total = sum(f.stat().st_size for rev in toy.revisions(name)
                for f in files.weight_files(toy.checkpoint_path(name, rev)))
    assert total <= MAX_WEIGHT_BYTES[name], f"{name} weights take {total / 1e6:.1f} MB"


@pytest.mark.parametrize("name", NEOX)
def test_config_has_pythias_architecture(name):
    require_checkpoints(name)
    from transformers import AutoConfig

    path = toy.checkpoint_path(name)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "gpt_neox" and config.use_parallel_residual
    assert config.rope_parameters["partial_rotary_factor"] == 0.25
    assert config.rope_parameters["rope_theta"] == 10000
    assert config.hidden_size // config.num_attention_heads == 32, "heads must have 32 dims (8 rotary)"
    assert config.intermediate_size == 4 * config.hidden_size and config.hidden_act == "gelu"
    assert not config.tie_word_embeddings and config.attention_bias and config.layer_norm_eps == 1e-5
    assert config.bos_token_id == config.eos_token_id == tokenizer(name).eos_token_id
    assert {t.dtype for t in weights(name).values()} == {torch.float16}


@pytest.mark.parametrize("name", toy.NAMES)
def test_tokenizer_is_neox_style_byte_level_bpe(name):
    require_checkpoints(name)
    tok = tokenizer(name)
    text = "def f(x):\n    return x  # café ünïcode"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text, "byte-level BPE must round-trip any text"
    assert ids[0] != tok.bos_token_id, "no BOS is prepended (Pythia convention)"
    assert tok.convert_ids_to_tokens(tok("a b")["input_ids"]) == ["a", "Ġb"], "no prefix space"
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert len(tok) <= VOCAB_SIZE, "every token id must have an embedding row"


@pytest.mark.parametrize("name", GPT2)
def test_gpt2_config_is_gpt2_at_the_size_of_toy_2l(name):
    require_checkpoints(name)
    from transformers import AutoConfig

    path = toy.checkpoint_path(name)
    config, twin = AutoConfig.from_pretrained(path), AutoConfig.from_pretrained(toy.checkpoint_path("toy-2l"))
    assert config.model_type == "gpt2" and config.architectures == ["GPT2LMHeadModel"]
    assert (config.n_embd, config.n_layer, config.n_head, config.n_positions, config.vocab_size) == (
        twin.hidden_size, twin.num_hidden_layers, twin.num_attention_heads, twin.max_position_embeddings,
        twin.vocab_size), "same d_model, layers, heads, context and vocabulary as toy-2l"
    assert config.tie_word_embeddings and config.activation_function == "gelu_new"
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    assert config.bos_token_id == config.eos_token_id == tokenizer(name).eos_token_id
    stored = weights(name)
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert "lm_head.weight" not in stored, "the unembedding is the tied token embedding"
    ours, theirs = (toy.model_dir(n) / "tokenizer.json" for n in (name, "toy-2l"))
    assert ours.read_text() == theirs.read_text(), "one tokenizer for the suite"


def test_the_package_needs_nothing_outside_it():
    """Nothing installed points at the training code or at files beside the repository."""
    from setuptools import find_packages

    packages = find_packages(ROOT, include=["interp*", "analyses*"])
    assert "toy_training" not in packages and not any(p.startswith("tests") for p in packages)
    for package in ("interp", "analyses"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert "from toy_training" not in text and "import toy_training" not in text, path
            assert '"shared"' not in text and "../shared" not in text, path


def test_model_dir_holds_the_tokenizer_next_to_the_steps():
    require_checkpoints("toy-2l")
    root = toy.model_dir("toy")
    assert (root / "tokenizer.json").is_file() and (root / "step0").is_dir()
    assert torch.equal(torch.tensor(tokenizer("toy-2l")("Hello")["input_ids"]),
                       torch.tensor(tokenizer("toy-4l")("Hello")["input_ids"])), "one tokenizer for the suite"
