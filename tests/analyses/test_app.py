"""The explorer without a browser: model list, HF cache, directories, memory, bad input, optional
tabs and the serve command. (Each view's numbers: test_app_views.py; in Chromium: test_app_browser.py.)"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("dash")

import interp  # noqa: E402
from analyses.app import compute  # noqa: E402
from analyses.app.cache import LRU, ModelPool, parameter_bytes  # noqa: E402
from analyses.app.catalog import DEMO_NAMES, GPT2_NAMES, Catalog  # noqa: E402
from analyses.app.client import Client, array  # noqa: E402
from analyses.app.explorer import DEFAULT_BUDGET, MAX_PROMPT_CHARS, Explorer, Request  # noqa: E402
from analyses.app.server import create_app  # noqa: E402
from interp import toy  # noqa: E402
from interp.errors import InterpError, UnknownModelError  # noqa: E402
from tests.conftest import tiny_gpt2, tiny_hf, word_tokenizer  # noqa: E402

PROMPT = "The cat sat on the mat. The cat sat on the mat."
WORDS = "t5 t6 t7 t8 t5 t6 t7"  # a prompt for the word tokenizer of the tiny models
SNAPSHOT = "a" * 40
REVS = toy.revisions("toy-2l")


def save_tiny(path, seed: int = 0) -> None:
    tiny_hf(seed=seed).save_pretrained(path)
    word_tokenizer().save_pretrained(path)


def make_hub_cache(root):
    """A Hugging Face cache with a loadable pythia-14m at step1000, a 70m without weights, and gpt2."""
    for repo, ref, weights in (("EleutherAI--pythia-14m", "step1000", True),
                               ("EleutherAI--pythia-70m", "main", False), ("gpt2", "main", False)):
        repo_dir = root / f"models--{repo}"
        (repo_dir / "refs").mkdir(parents=True)
        (repo_dir / "refs" / ref).write_text(SNAPSHOT)
        snapshot = repo_dir / "snapshots" / SNAPSHOT
        if weights:
            save_tiny(snapshot)
        else:
            snapshot.mkdir(parents=True)
            (snapshot / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    return root


def make_model_dirs(root):
    """A save_pretrained folder, a folder of step<N>/ checkpoints, and a GPT-2 of the same shape."""
    save_tiny(root / "plain")
    for step, seed in (("step2", 1), ("step10", 2), ("step0", 3)):
        save_tiny(root / "run" / step, seed=seed)
    tiny_gpt2(seed=4).save_pretrained(root / "gpt2")
    word_tokenizer().save_pretrained(root / "gpt2")
    return [root / "plain", root / "run", root / "gpt2"]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    return make_hub_cache(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return make_model_dirs(tmp_path_factory.mktemp("dirs"))


@pytest.fixture(scope="module")
def catalog(hub_cache, model_dirs):
    return Catalog(model_dirs, hub_cache=hub_cache)


@pytest.fixture(scope="module")
def client(catalog):
    return Client(create_app(Explorer(catalog)))


def toy_model(revision: str) -> interp.Model:
    return interp.load("toy-2l", revision=revision)


def z_of(figure, trace: int = 0) -> np.ndarray:
    return array(figure["data"][trace]["z"])


def annotation(figure) -> str:
    return figure["layout"]["annotations"][0]["text"].replace("<br>", " ")


# ---- the model list ----------------------------------------------------------------------------


def test_model_list_puts_pythia_demos_first_then_gpt2_toys_dirs_and_the_hf_cache(catalog, model_dirs, client):
    keys = [e.key for e in catalog.entries()]
    assert DEMO_NAMES == ("EleutherAI/pythia-160m", "EleutherAI/pythia-410m")
    want = [*DEMO_NAMES, *GPT2_NAMES, *toy.NAMES, *[str(p.resolve()) for p in model_dirs],
            "EleutherAI/pythia-14m", "EleutherAI/pythia-70m", "gpt2"]
    assert keys == want
    assert [o["value"] for o in client.defaults["model-a.options"]] == want, "the page lists another set"


def test_models_not_on_disk_say_how_to_get_them(catalog, client):
    msg = catalog.missing(catalog.lookup("EleutherAI/pythia-160m"), "step143000")
    assert "hf download EleutherAI/pythia-160m --revision step143000" in msg
    no_weights = catalog.missing(catalog.lookup("EleutherAI/pythia-70m"), "main")
    assert "hf download EleutherAI/pythia-70m`" in no_weights, "main needs no --revision flag"
    assert "hf download gpt2`" in catalog.missing(catalog.lookup("gpt2"), "main")
    page = client.call("msg-a.children", {"model-a.value": "EleutherAI/pythia-410m", "rev-a.value": 153})
    assert "hf download EleutherAI/pythia-410m --revision step143000" in page["msg-a.children"]
    figs = client.call("head-a.figure", {"model-a.value": "EleutherAI/pythia-410m", "rev-a.value": 153})
    assert "hf download" in annotation(figs["head-a.figure"])


def test_a_cached_hub_checkpoint_loads_from_its_snapshot(catalog, hub_cache):
    entry = catalog.lookup("pythia-14m")  # a suite spelling finds the repo
    assert entry.key == "EleutherAI/pythia-14m"
    assert len(catalog.revisions(entry)) == 154
    assert catalog.default_revision(entry) == "step1000", "the slider should start on the cached checkpoint"
    assert catalog.missing(entry, "step1000") is None and "hf download" in catalog.missing(entry, "step2000")
    model = catalog.load(entry, "step1000")
    assert (model.name, model.revision) == ("EleutherAI/pythia-14m", "step1000")
    reference = interp.Model(tiny_hf(seed=0), word_tokenizer())
    torch.testing.assert_close(model(WORDS), reference(WORDS), rtol=0, atol=0)


@pytest.mark.parametrize("key", ["/etc", "../secrets", "~/models", "a/b/c", "./toy-2l", "C:\\models", "", None, 3,
                                 "EleutherAI/../x"])
def test_the_page_cannot_name_a_path(catalog, client, key):
    with pytest.raises(UnknownModelError):
        catalog.lookup(key)
    status = client.call("msg-a.children", {"model-a.value": key})
    assert status["msg-a.children"], f"{key!r} gave no message in the page"
    assert client.call("head-a.figure", {"rev-a.value": 15})["head-a.figure"]["data"], "the server stopped answering"


def test_directories_from_the_command_line(catalog, model_dirs):
    plain, run = (catalog.lookup(str(p.resolve())) for p in model_dirs[:2])
    assert catalog.revisions(plain) == ["main"]
    assert catalog.revisions(run) == ["step0", "step2", "step10"], "steps sort by number"
    model = catalog.load(run, "step2")
    assert (model.name, model.revision) == ("run", "step2")
    reference = interp.Model(tiny_hf(seed=1), word_tokenizer())
    torch.testing.assert_close(model(WORDS), reference(WORDS), rtol=0, atol=0)
    with pytest.raises(UnknownModelError, match="not a model directory"):
        Catalog([model_dirs[0].parent / "missing"])


# ---- memory: models and results -------------------------------------------------------------------


def test_model_pool_evicts_least_recently_used_beyond_the_budget():
    loads = []
    pool = ModelPool(lambda k: loads.append(k) or bytearray(10), budget_bytes=25, size=len)
    for key in ("a", "b", "a", "c"):  # "b" is now the least recently used
        pool.get(key)
    assert pool.keys() == ["a", "c"] and loads == ["a", "b", "c"]
    lone = ModelPool(lambda k: bytearray(100), budget_bytes=25, size=len)
    lone.get("big")
    assert lone.keys() == ["big"], "the model asked for stays even alone above the budget"


def test_model_pool_budget_counts_real_parameter_bytes():
    small, other = toy_model("step0"), interp.load("toy-4l")
    budget = parameter_bytes(small) + parameter_bytes(other) - 1
    explorer = Explorer(Catalog(hub_cache="/nonexistent"), budget_bytes=budget)
    explorer.model("toy-2l", "step0")
    explorer.model("toy-4l", "step3600")
    assert explorer.models.keys() == [("toy-4l", "step3600")]
    assert explorer.models.used_bytes == parameter_bytes(other)


def test_results_are_computed_once_and_errors_are_not_cached():
    calls = []
    cache = LRU(max_items=2)
    for _ in range(3):
        assert cache.get("k", lambda: calls.append(1) or 42) == 42
    assert len(calls) == 1 and cache.hits == 2
    with pytest.raises(ValueError):
        cache.get("bad", lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert "bad" not in cache
    explorer = Explorer(Catalog(hub_cache="/nonexistent"))
    request = Request("toy-2l", "step900", PROMPT)
    assert explorer.patterns(request) is explorer.patterns(request)
    assert explorer.scores(request) is explorer.scores(Request("toy-2l", "step900", "other prompt"))


@pytest.mark.parametrize("budget, prefetched", [(DEFAULT_BUDGET, True), (1, False)])
def test_the_sliders_neighbours_are_computed_in_the_background_within_the_budget(budget, prefetched):
    explorer = Explorer(Catalog(hub_cache="/nonexistent"), budget_bytes=budget)
    client = Client(create_app(explorer))
    client.call("head-a.figure", {"rev-a.value": 8, "prompt.value": PROMPT})
    explorer.background.wait()
    for revision in ("step64", "step450", "step900"):  # the checkpoints beside step450 (slider position 8)
        key = ("toy-2l", revision, PROMPT, "patterns", ())
        assert (key in explorer.results) == (prefetched or revision == "step450"), revision
    assert len(explorer.models.keys()) == (3 if prefetched else 1), "a guess never evicts a model"


def test_a_failure_outside_the_views_shows_in_the_page(monkeypatch):
    explorer = Explorer(Catalog(hub_cache="/nonexistent"))
    client = Client(create_app(explorer))
    monkeypatch.setattr(explorer, "shape", lambda *a: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    got = client.call("head-a.figure", {"rev-a.value": 15})
    assert "RuntimeError: disk on fire" in got["msg-a.children"]
    monkeypatch.undo()
    assert client.call("head-a.figure", {"rev-a.value": 15})["head-a.figure"]["data"], "the server stopped answering"


# ---- bad input: a message in the page, the server keeps running ------------------------------------


@pytest.mark.parametrize("prompt, says", [("", "empty"), ("   \n", "empty"), ("x" * (MAX_PROMPT_CHARS + 1), "at most"),
                                          ("the cat " * 200, "longer than this model's context"), (None, "empty")])
def test_bad_prompts_show_a_message(client, prompt, says):
    status = client.call("msg-a.children", {"prompt.value": prompt, "rev-a.value": 15})
    assert says in status["msg-a.children"]
    figs = client.call("head-a.figure", {"prompt.value": prompt, "rev-a.value": 15})
    assert says in annotation(figs["head-a.figure"]) and says in annotation(figs["grid-a.figure"])
    ok = client.call("head-a.figure", {"prompt.value": PROMPT, "rev-a.value": 15})
    assert ok["head-a.figure"]["data"], "a good prompt after a bad one should draw again"


def test_bad_controls_show_a_message(client):
    figs = client.call("head-a.figure", {"rev-a.value": 99})
    assert "no checkpoint" in annotation(figs["head-a.figure"])
    figs = client.call("head-a.figure", {"rev-a.value": 15, "layer.value": 7})
    assert figs["layer.value"] == 0 and "L0H0" in figs["head-a.figure"]["layout"]["title"]["text"], \
        "the pickers offer only this model's heads"
    both = {"compare.value": ["on"], "model-b.value": "toy-4l", "rev-b.value": 15, "layer.value": 3}
    figs = client.call("head-a.figure", {"rev-a.value": 15, **both})  # the pickers span 4 layers
    assert "L3H0 is not a head of toy-2l@step3600" in annotation(figs["head-a.figure"])
    assert "L3H0" in figs["head-b.figure"]["layout"]["title"]["text"]
    figs = client.call("scores-a.figure", {"tabs.value": "detectors", "rev-a.value": 15, "detector.value": "nope"})
    assert "'nope' is not one of" in annotation(figs["scores-a.figure"])


# ---- clicks, the slider, optional views, the command -------------------------------------------------


def test_an_optional_analysis_gets_a_tab_once_it_exists(monkeypatch):
    app = create_app(Explorer(Catalog(hub_cache="/nonexistent")))
    for view in compute.EXTRAS:
        assert (f"{view}-0-a.figure" in str(app.callback_map)) == (compute.optional(view) is not None)

    calls = []

    class Result:
        def figures(self):
            return [{"data": [{"type": "bar", "y": [1, 2]}], "layout": {}}]

    fake = types.ModuleType("fake_rope")
    fake.probe = lambda model, prompt: calls.append(prompt) or Result()
    monkeypatch.setitem(sys.modules, "fake_rope", fake)
    extra = compute.Extra(("fake_rope",), "Fake", lambda m, model, prompt: m.probe(model, prompt),
                          lambda r: r.figures(), n_figures=2, uses_prompt=False)
    monkeypatch.setitem(compute.EXTRAS, "rope", extra)
    client = Client(create_app(Explorer(Catalog(hub_cache="/nonexistent"))))
    for prompt in ("one prompt", "another"):
        figs = client.call("rope-0-a.figure", {"tabs.value": "rope", "rev-a.value": 15, "prompt.value": prompt})
        assert figs["rope-0-a.figure"]["data"][0]["y"] == [1, 2]
        assert figs["rope-1-a.figure"]["data"] == [], "a slot with no figure stays empty"
    assert calls == ["one prompt"], "a view that ignores the prompt runs once per checkpoint"


def test_serve_command_binds_loopback_by_default():
    import argparse

    from analyses.app.command import add_parser

    top = argparse.ArgumentParser()
    add_parser(top.add_subparsers())
    args = top.parse_args(["serve", "d1", "d2"])
    assert (args.host, args.port, args.model, args.paths) == ("127.0.0.1", 8050, "toy", ["d1", "d2"])


def test_loopback_server_answers_only_requests_for_this_machine():
    from analyses.app.server import restrict_hosts

    app = create_app(Explorer(Catalog(hub_cache="/nonexistent")))
    restrict_hosts(app, 8123)
    http = app.server.test_client()
    for host, status in (("127.0.0.1:8123", 200), ("localhost:8123", 200), ("evil.example:8123", 403),
                         ("127.0.0.1:9999", 403)):
        assert http.get("/", headers={"Host": host}).status_code == status, host


@pytest.mark.parametrize("argv, says", [(["/no/such/dir"], "is not a model directory"),
                                         (["--model", "/etc"], "not a model this explorer knows")])
def test_serve_refuses_bad_arguments_before_serving(argv, says, capsys):
    from analyses.app.command import main

    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_explorer_errors_are_interp_errors():
    explorer = Explorer(Catalog(hub_cache="/nonexistent"))
    for bad in (Request("toy-2l", "step3600", ""), Request("nope/../x", "main", "hi"),
                Request("EleutherAI/pythia-160m", "step1", "hi")):
        with pytest.raises(InterpError):
            explorer.check(bad)
