"""The suite as data: names, exact configs, the 154-step schedule, and errors that suggest."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXForCausalLM

from interp import suite
from interp.errors import UnknownModelError, UnknownRevisionError


@pytest.mark.parametrize("name", ["160m", "pythia-160m", "EleutherAI/pythia-160m", "eleutherai/Pythia-160M",
                                  "pythia-125m"])
def test_name_aliases(name):
    assert suite.resolve(name).hf_id == "EleutherAI/pythia-160m"


def test_deduped_and_v0_variants():
    assert suite.resolve("pythia-1.4b-deduped").hf_id == "EleutherAI/pythia-1.4b-deduped"
    assert suite.resolve("EleutherAI/pythia-410m-deduped-v0").hf_id == "EleutherAI/pythia-410m-deduped-v0"
    with pytest.raises(UnknownModelError, match="no -v0"):
        suite.resolve("pythia-14m-v0")
    assert len(suite.all_names()) == 10 * 2 + 8 * 2


def test_unknown_size_names_the_nearest():
    with pytest.raises(UnknownModelError, match="pythia-160m"):
        suite.resolve("pythia-16m")
    with pytest.raises(UnknownModelError, match="14m, 31m, 70m"):
        suite.resolve("gpt2")


@pytest.mark.parametrize("size,d_model,layers,heads,vocab", [
    ("14m", 128, 6, 4, 50304), ("70m", 512, 6, 8, 50304), ("160m", 768, 12, 12, 50304),
    ("1b", 2048, 16, 8, 50304), ("6.9b", 4096, 32, 32, 50432), ("12b", 5120, 36, 40, 50688),
])
def test_configs(size, d_model, layers, heads, vocab):
    cfg = suite.config(size)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (
        d_model, layers, heads, vocab)
    assert cfg.intermediate_size == 4 * d_model and not cfg.tie_word_embeddings and cfg.use_parallel_residual
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.25 and cfg.rope_parameters["rope_theta"] == 10000
    assert cfg.vocab_size >= suite.TOKENIZER_VOCAB


def test_config_builds_the_real_parameter_count_on_meta():
    with torch.device("meta"):
        hf = GPTNeoXForCausalLM(suite.config("160m"))
    assert sum(p.numel() for p in hf.parameters()) == 162_322_944  # pythia-160m's published count


def test_revisions_schedule():
    revs = suite.revisions("pythia-70m-deduped")
    assert len(revs) == 154 and revs[0] == "step0" and revs[-1] == "step143000"
    assert revs[1:12] == [f"step{2**i}" for i in range(10)] + ["step1000"]
    assert "step2000" in revs and "step1500" not in revs


def test_bad_revision_names_the_nearest_steps():
    with pytest.raises(UnknownRevisionError, match="step1000, step2000"):
        suite.check_revision("160m", "step1500")
    with pytest.raises(UnknownRevisionError, match="step0 ... step143000"):
        suite.check_revision("160m", "latest")
    assert suite.check_revision("160m", "main") == "main" and suite.check_revision("160m", "step64") == "step64"
