"""interp.load from a local Hugging Face hub cache, offline, through the real `from_pretrained` path.

Every name form of every suite model, at `main` and `step1000`: the right repo, the right snapshot's weights,
the tokenizer of the same snapshot, and provenance that says so.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import interp
from interp import suite
from interp.errors import TokenizerWarning
from interp.loading import SHIPPED
from tests.hub_cache import (
    ABSENT,
    MARKER_ID,
    NO_TOKENIZER,
    HubCache,
    add_snapshot,
    build_hub_cache,
    disk_state,
    use_hub_cache,
)


def _name_forms() -> list[tuple[str, str]]:
    """(name as a user types it, the repo it must load): sizes x deduped x v0 x prefix, and the old names."""
    old = {new: old for old, new in suite.OLD_NAMES.items()}
    forms = []
    for repo in suite.all_names():
        short = repo.removeprefix("EleutherAI/")
        forms += [(short, repo), (repo, repo)]
        size = suite.resolve(repo).size
        if size in old:
            forms.append((short.replace(f"-{size}", f"-{old[size]}", 1), repo))
    return forms


NAME_FORMS = _name_forms()
GPT2_FORMS = [
    ("gpt2", "openai-community/gpt2"), ("openai-community/gpt2", "openai-community/gpt2"),
    ("gpt2-small", "openai-community/gpt2"), ("gpt2-medium", "openai-community/gpt2-medium"),
    ("openai-community/gpt2-large", "openai-community/gpt2-large"),
    ("gpt2-xl", "gpt2-xl"), ("openai-community/gpt2-xl", "gpt2-xl"),  # found under the id older caches used
    ("distilgpt2", "distilbert/distilgpt2"),
]


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory) -> HubCache:
    return build_hub_cache(tmp_path_factory.mktemp("hf") / "hub")


@pytest.fixture
def hub(hub_cache, monkeypatch) -> HubCache:
    use_hub_cache(monkeypatch, hub_cache.root)
    return hub_cache


def assert_loaded(model: interp.Model, hub: HubCache, repo: str, revision: str) -> None:
    """Weights, tokenizer and provenance all come from the snapshot of `repo` at `revision`."""
    state = disk_state(model.hf)
    assert set(state) == set(hub.weights[repo, revision])
    for name, expected in hub.weights[repo, revision].items():
        assert torch.equal(state[name], expected), f"{name} is not {repo}@{revision}'s: wrong repo or revision?"
    assert model.tokenizer.convert_tokens_to_ids(f"{repo}@{revision}") == MARKER_ID, "tokenizer from another snapshot"
    assert model.tokenizer_source == f"{repo}@{revision}"
    assert model.origin.name == model.name == repo and model.origin.kind == "hub"
    assert model.origin.commit == hub.commits[repo, revision]


def test_the_name_forms_cover_the_suite():
    assert len({repo for _, repo in NAME_FORMS}) == len(suite.all_names()) == 36
    assert ("pythia-1.3b-deduped", "EleutherAI/pythia-1.4b-deduped") in NAME_FORMS
    assert ("pythia-6.7b-v0", "EleutherAI/pythia-6.9b-v0") in NAME_FORMS


@pytest.mark.parametrize("revision", ["main", "step1000"])
@pytest.mark.parametrize("name,repo", NAME_FORMS)
def test_every_suite_name_loads_from_the_cache(hub, name, repo, revision):
    model = interp.load(name, revision=revision)
    assert_loaded(model, hub, repo, revision)
    assert model.origin.requested_revision == revision
    assert model.revision == ("step143000" if revision == "main" else revision), "main is the final step"


@pytest.mark.parametrize("name,repo", GPT2_FORMS)
def test_gpt2_names_load_from_the_cache(hub, name, repo):
    model = interp.load(name)
    assert_loaded(model, hub, repo, "main")
    assert model.revision == "main" and model.origin.requested_revision is None
    assert type(model.hf).__name__ == "GPT2LMHeadModel"


def test_no_revision_means_main_and_a_commit_hash_pins_a_snapshot(hub):
    repo = "EleutherAI/pythia-160m"
    assert_loaded(interp.load("pythia-160m"), hub, repo, "main")
    commit = hub.commits[repo, "step1000"]
    model = interp.load("pythia-160m", revision=commit)
    for name, expected in hub.weights[repo, "step1000"].items():
        assert torch.equal(disk_state(model.hf)[name], expected), name
    assert model.tokenizer.convert_tokens_to_ids(f"{repo}@step1000") == MARKER_ID
    assert model.revision == commit and model.origin.commit == commit
    assert model.tokenizer_source == f"{repo}@{commit}"


def test_provenance_reaches_the_cache(hub):
    model = interp.load("EleutherAI/pythia-1.4b-deduped", revision="step1000")
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]), names=["blocks.0.hook_resid_post"])
    assert (cache.provenance.model, cache.provenance.revision) == ("EleutherAI/pythia-1.4b-deduped", "step1000")
    logits = model(torch.tensor([[1, 2, 3]]))
    assert torch.equal(logits, model.hf(torch.tensor([[1, 2, 3]])).logits)


def test_a_revision_without_tokenizer_files_falls_back_to_the_shipped_tokenizer(hub):
    repo, revision = NO_TOKENIZER
    with pytest.warns(TokenizerWarning, match=rf"No tokenizer for {repo}.*{revision}.*GPT-NeoX-20B"):
        model = interp.load("pythia-70m", revision=revision)
    assert model.tokenizer_source == model.origin.tokenizer == SHIPPED
    assert len(model.tokenizer) == suite.TOKENIZER_VOCAB, "not the 2-token tokenizer built from config.json"
    assert model.to_tokens("Hello, I am").ids.tolist() == [[12092, 13, 309, 717]]
    assert model("Hello, I am").shape == (1, 4, suite.SIZES["70m"].d_vocab)


def test_only_a_step_cached_still_gets_its_own_tokenizer(tmp_path, monkeypatch):
    cache = HubCache(tmp_path / "hub")
    add_snapshot(cache, "EleutherAI/pythia-160m", "step1000")
    use_hub_cache(monkeypatch, cache.root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenizerWarning)
        model = interp.load("pythia-160m", revision="step1000")
    assert_loaded(model, cache, "EleutherAI/pythia-160m", "step1000")
    with pytest.raises(interp.WeightsNotFoundError, match="--revision main"):
        interp.load("pythia-160m")


def test_a_missing_revision_names_the_download_command(hub):
    repo, revision = ABSENT
    with pytest.raises(interp.WeightsNotFoundError, match=rf"`hf download {repo} --revision {revision}`") as err:
        interp.load("70m", revision=revision)
    assert "HF_HUB_OFFLINE" in str(err.value) and str(hub.root) in str(err.value)


def test_a_suite_name_wins_over_a_directory_of_that_name(hub, tmp_path, monkeypatch):
    from tests.conftest import tiny_hf, word_tokenizer

    monkeypatch.chdir(tmp_path)
    tiny_hf().save_pretrained(tmp_path / "pythia-160m")
    word_tokenizer().save_pretrained(tmp_path / "pythia-160m")
    with pytest.warns(UserWarning, match=r"also a directory here.*'./pythia-160m'"):
        assert interp.load("pythia-160m").origin.name == "EleutherAI/pythia-160m"
    for path in ("./pythia-160m", tmp_path / "pythia-160m"):
        model = interp.load(path)
        assert model.origin.kind == "directory" and model.hf.config.vocab_size == 128
    with pytest.raises(interp.UnknownModelError, match=r"no directory at './pythia-1.4b'.*write 'pythia-1.4b'"):
        interp.load("./pythia-1.4b")
