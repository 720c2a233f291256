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


@pytest.mark.parametrize("size", list(suite.SIZES))
@pytest.mark.parametrize("prefix", ["", "pythia-", "EleutherAI/pythia-"])
@pytest.mark.parametrize("variant", ["", "-deduped"])
def test_every_size_resolves_with_every_prefix(size, prefix, variant):
    """Sizes with a decimal point (1.4b, 2.8b, 6.9b) are names, not file suffixes."""
    assert suite.resolve(f"{prefix}{size}{variant}").hf_id == f"EleutherAI/pythia-{size}{variant}"


@pytest.mark.parametrize("old,new", list(suite.OLD_NAMES.items()))
def test_old_names(old, new):
    assert suite.resolve(f"pythia-{old}-deduped").hf_id == f"EleutherAI/pythia-{new}-deduped"
    assert suite.resolve(f"EleutherAI/pythia-{old}-v0").hf_id == f"EleutherAI/pythia-{new}-v0"


def test_unknown_size_names_the_nearest():
    with pytest.raises(UnknownModelError, match="pythia-160m"):
        suite.resolve("pythia-16m")
    with pytest.raises(UnknownModelError, match="gpt2-xl"):
        suite.resolve("gtp2-xl")
    assert suite.find("./pythia-1.4b") is None and suite.find("my/model") is None and suite.find(3) is None


@pytest.mark.parametrize("name,hf_id", [
    ("gpt2", "openai-community/gpt2"), ("GPT2-small", "openai-community/gpt2"),
    ("openai-community/gpt2-medium", "openai-community/gpt2-medium"), ("gpt2-large", "openai-community/gpt2-large"),
    ("gpt2-xl", "openai-community/gpt2-xl"), ("distilgpt2", "distilbert/distilgpt2"),
    ("distilbert/distilgpt2", "distilbert/distilgpt2"),
])
def test_gpt2_names(name, hf_id):
    found = suite.resolve(name)
    assert found.family == "gpt2" and found.hf_id == hf_id and found.hub_ids[0] == hf_id
    assert found.hub_ids[1] == hf_id.split("/")[1], "older caches hold GPT-2 under its bare id"


@pytest.mark.parametrize("name,params", [  # the published parameter counts (tied head counted once)
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200), ("distilgpt2", 81_912_576),
])
def test_gpt2_configs_build_the_real_models_on_meta(name, params):
    from transformers import GPT2LMHeadModel

    cfg = suite.config(name)
    assert cfg.model_type == "gpt2" and cfg.vocab_size == 50257 and cfg.n_positions == 1024
    assert cfg.tie_word_embeddings and cfg.activation_function == "gelu_new" and cfg.eos_token_id == 50256
    with torch.device("meta"):
        hf = GPT2LMHeadModel(cfg)
    assert sum(p.numel() for p in hf.parameters()) == params


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


def test_revision_types_commits_and_what_main_is():
    with pytest.raises(UnknownRevisionError, match=r"revision=1000 is not a string.*'step1000'"):
        suite.check_revision("160m", 1000)
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert suite.check_revision("pythia-160m", commit) == commit and suite.check_revision("gpt2", commit) == commit
    with pytest.raises(UnknownRevisionError):
        suite.check_revision("toy", commit)  # the toy suite has steps, not commits
    assert suite.revisions("gpt2-xl") == ["main"]
    with pytest.raises(UnknownRevisionError, match="one, 'main'"):
        suite.check_revision("gpt2", "step1000")
    assert suite.loaded_revision("pythia-1.4b-deduped-v0", "main") == "step143000"
    assert suite.loaded_revision("70m", None) == "step143000" and suite.loaded_revision("70m", "step8") == "step8"
    assert suite.loaded_revision("toy-4l", "main") == suite.revisions("toy-4l")[-1]
    assert suite.loaded_revision("gpt2", None) == "main"


def test_bad_revision_names_the_nearest_steps():
    with pytest.raises(UnknownRevisionError, match="step1000, step2000"):
        suite.check_revision("160m", "step1500")
    with pytest.raises(UnknownRevisionError, match="step4, step8"):
        suite.check_revision("160m", "step5")
    with pytest.raises(UnknownRevisionError, match="step0 ... step143000"):
        suite.check_revision("160m", "latest")
    assert suite.check_revision("160m", "main") == "main" and suite.check_revision("160m", "step64") == "step64"
