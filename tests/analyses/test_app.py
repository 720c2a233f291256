"""The explorer without a browser: model list, HF cache, directories, LRU, bad input, and every
view's numbers against the analyses (and HF's own attentions) through the real callback endpoint."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("dash")

import interp  # noqa: E402
from analyses.app import compute, views  # noqa: E402
from analyses.app.cache import LRU, ModelPool, parameter_bytes  # noqa: E402
from analyses.app.catalog import DEMO_NAMES, GPT2_NAMES, Catalog  # noqa: E402
from analyses.app.client import Client, array  # noqa: E402
from analyses.app.explorer import MAX_PROMPT_CHARS, Explorer, Request  # noqa: E402
from analyses.app.server import compare_default, create_app, has_checkpoints  # noqa: E402

try:  # the analyses' own functions, wherever they live
    from analyses.attention import detect_heads, head_scores, patterns
    from analyses.lens import logit_lens
except ModuleNotFoundError:
    from analyses.attention_maps import detect_heads, head_scores, patterns
    from analyses.logit_lens import logit_lens
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


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache with a loadable pythia-14m at step1000, a 70m without weights, and gpt2."""
    root = tmp_path_factory.mktemp("hub")
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


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A save_pretrained folder, a folder of step<N>/ checkpoints, and a GPT-2 of the same shape."""
    root = tmp_path_factory.mktemp("dirs")
    save_tiny(root / "plain")
    for step, seed in (("step2", 1), ("step10", 2), ("step0", 3)):
        save_tiny(root / "run" / step, seed=seed)
    tiny_gpt2(seed=4).save_pretrained(root / "gpt2")
    word_tokenizer().save_pretrained(root / "gpt2")
    return [root / "plain", root / "run", root / "gpt2"]


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


# ---- bad input: a message in the page, the server keeps running ------------------------------------


@pytest.mark.parametrize("prompt, says", [("", "empty"), ("   \n", "empty"), ("x" * (MAX_PROMPT_CHARS + 1), "at most"),
                                          ("the cat " * 200, "longer than this model's context"), (None, "empty")])
def test_bad_prompts_show_a_message(client, prompt, says):
    status = client.call("msg-a.children", {"prompt-store.data": prompt, "rev-a.value": 15})
    assert says in status["msg-a.children"]
    figs = client.call("head-a.figure", {"prompt-store.data": prompt, "rev-a.value": 15})
    assert says in annotation(figs["head-a.figure"]) and says in annotation(figs["grid-a.figure"])
    ok = client.call("head-a.figure", {"prompt-store.data": PROMPT, "rev-a.value": 15})
    assert ok["head-a.figure"]["data"], "a good prompt after a bad one should draw again"


def test_bad_controls_show_a_message(client):
    figs = client.call("head-a.figure", {"rev-a.value": 99})
    assert "no checkpoint" in annotation(figs["head-a.figure"])
    figs = client.call("head-a.figure", {"rev-a.value": 15, "layer.value": 7})
    assert "L7H0 is not a head of toy-2l@step3600" in annotation(figs["head-a.figure"])
    fig = client.call("scores-a.figure", {"tabs.value": "detectors", "rev-a.value": 15, "detector.value": "nope"})
    assert "'nope' is not one of" in annotation(fig)


# ---- the numbers each view shows equal the analyses' --------------------------------------------


@pytest.mark.parametrize("index, layer, head", [(15, 1, 0), (15, 0, 1), (8, 1, 2)])
def test_attention_figures_equal_the_analysis_and_hf(client, index, layer, head):
    from transformers import GPTNeoXForCausalLM

    revision = REVS[index]
    figs = client.call("head-a.figure", {"rev-a.value": index, "layer.value": layer, "head.value": head})
    pats = patterns(toy_model(revision), PROMPT)
    want = pats.row(0)[0]  # (layer, head, q, k)
    q, k = np.tril_indices(want.shape[-1])
    shown = z_of(figs["head-a.figure"])
    np.testing.assert_array_equal(shown[q, k], want[layer, head].numpy()[q, k])
    assert np.isnan(shown[np.triu_indices(want.shape[-1], 1)]).all(), "keys after the query must stay blank"
    hf = GPTNeoXForCausalLM.from_pretrained(toy.checkpoint_path("toy-2l", revision), attn_implementation="eager",
                                            dtype=torch.float32)
    ids = torch.tensor(pats.provenance.tokens)
    with torch.no_grad():
        eager = hf(ids, output_attentions=True).attentions[layer][0, head]
    np.testing.assert_allclose(shown[q, k], eager.numpy()[q, k], atol=1e-6, err_msg="not HF's own attention")
    grid = figs["grid-a.figure"]
    for L in range(2):
        for h in range(3):
            np.testing.assert_array_equal(z_of(grid, 3 * L + h)[q, k], want[L, h].numpy()[q, k])


def test_token_view_colours_are_the_hovered_query_row(client):
    pats = patterns(toy_model("step3600"), PROMPT)
    want = pats.row(0)[0]
    for query in (None, 4, 13):
        values = {"rev-a.value": 15, "layer.value": 1, "head.value": 1, "query.data": query}
        q = want.shape[-1] - 1 if query is None else query
        colours = z_of(client.call("strip-a.figure", values)).reshape(-1)[: want.shape[-1]]
        np.testing.assert_allclose(colours[: q + 1], want[1, 1, q, : q + 1].numpy(), rtol=1e-7)
        assert np.isnan(colours[q + 1:]).all()
        rows = z_of(client.call("tokens-a.figure", values))  # a row per head: what query q attends to
        np.testing.assert_allclose(rows, want[:, :, q, : q + 1].reshape(6, -1).numpy(), rtol=1e-7)


def test_hovering_a_token_sets_the_query(client):
    hover = {"points": [{"customdata": 5, "curveNumber": 0}]}
    assert client.call("query.data", {"strip-a.hoverData": hover}, changed=["strip-a.hoverData"]) == 5
    assert client.call("query.data", {"strip-a.hoverData": hover}, changed=["prompt-store.data"]) is None


@pytest.mark.parametrize("on", ["random", "prompt"])
def test_head_scores_equal_the_detectors(client, on):
    for index in (8, 15):
        fig = client.call("scores-a.figure", {"tabs.value": "detectors", "rev-a.value": index,
                                              "detector.value": "induction", "scores-on.value": on})
        model = toy_model(REVS[index])
        want = detect_heads(model, seq_len=50) if on == "random" else head_scores(patterns(model, PROMPT))
        np.testing.assert_array_equal(z_of(fig), want.scores["induction"].double().numpy())


def test_lens_figures_equal_logit_lens(client):
    figs = client.call("lens-a.figure", {"tabs.value": "lens", "rev-a.value": 15, "metric.value": "entropy",
                                         "target.value": " the"})
    want = logit_lens(toy_model("step3600"), PROMPT, target=" the")
    entropy, shown = want.entropy[:, 0].numpy(), z_of(figs["lens-a.figure"])  # (layer, pos)
    np.testing.assert_allclose(shown if shown.shape == entropy.shape else shown.T, entropy, rtol=1e-6)
    probs = [array(t["y"]) for t in figs["lens-target-a.figure"]["data"][:1]]
    np.testing.assert_allclose(probs[0], want.target_probs[:, 0, -1, 0].numpy(), rtol=1e-6)


# ---- compare mode ------------------------------------------------------------------------------


def compare(**values):
    return {"compare.value": ["on"], "model-b.value": "toy-2l", **values}


def test_checkpoint_difference_of_head_scores(client):
    fig = client.call("diff-detectors.figure", compare(**{"tabs.value": "detectors", "rev-a.value": 8,
                                                          "rev-b.value": 15, "detector.value": "prev_token"}))
    early, late = (detect_heads(toy_model(r), seq_len=50).scores["prev_token"].double()
                   for r in ("step450", "step3600"))
    np.testing.assert_allclose(z_of(fig), (late - early).numpy(), atol=1e-12)
    assert np.abs(z_of(fig)).max() > 0.3, "the previous-token head forms between these checkpoints"


def test_pattern_difference_between_models_with_the_same_tokens(client):
    values = compare(**{"model-b.value": "toy-4l", "rev-a.value": 15, "rev-b.value": 15, "layer.value": 1,
                        "head.value": 1})
    fig = client.call("diff-attention.figure", values)
    a = patterns(toy_model("step3600"), PROMPT).row(0)[0][1, 1].double()
    b = patterns(interp.load("toy-4l"), PROMPT).row(0)[0][1, 1].double()
    q, k = np.tril_indices(a.shape[-1])
    np.testing.assert_allclose(z_of(fig)[q, k], (b - a).numpy()[q, k], atol=1e-12)
    scores = client.call("diff-detectors.figure", {**values, "tabs.value": "detectors"})
    assert "no head-by-head difference" in annotation(scores), "2x3 and 4x2 heads cannot be subtracted"
    lens = client.call("diff-lens.figure", {**values, "tabs.value": "lens", "metric.value": "kl"})
    assert [len(t["x"]) for t in lens["data"]] == [3, 5]
    assert lens["data"][0]["y"][-1] == 0 and lens["data"][1]["y"][-1] == 0, "the last boundary is the model itself"


def test_pythia_beside_gpt2(client, model_dirs):
    from transformers import GPT2LMHeadModel

    neox, gpt2 = (str(p.resolve()) for p in (model_dirs[0], model_dirs[2]))
    values = compare(**{"model-a.value": neox, "model-b.value": gpt2, "rev-a.value": 0, "rev-b.value": 0,
                        "prompt-store.data": WORDS, "layer.value": 2, "head.value": 1})
    info = client.call("info-b.children", values)["info-b.children"]
    assert info.startswith("gpt2: 3 layers × 2 heads") and "learned positions, sequential residual" in info
    shown = z_of(client.call("head-b.figure", values)["head-b.figure"])
    hf = GPT2LMHeadModel.from_pretrained(model_dirs[2], attn_implementation="eager")
    ids = torch.tensor([word_tokenizer()(WORDS, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        eager = hf(ids, output_attentions=True).attentions[2][0, 1].numpy()
    q, k = np.tril_indices(ids.shape[1])
    np.testing.assert_allclose(shown[q, k], eager[q, k], atol=1e-6, err_msg="GPT-2's pane is not HF's attention")
    diff = client.call("diff-detectors.figure", {**values, "tabs.value": "detectors", "scores-on.value": "prompt",
                                                 "detector.value": "prev_token"})
    a, b = (head_scores(patterns(interp.load(p), WORDS)).scores["prev_token"].double() for p in model_dirs[::2])
    np.testing.assert_allclose(z_of(diff), (b - a).numpy(), atol=1e-12)


def test_compare_defaults_to_toy_gpt2_or_says_why_not():
    other, note = compare_default("toy-2l")
    if has_checkpoints("toy-gpt2"):
        assert (other, note) == ("toy-gpt2", "")
    else:
        assert other == "toy-4l" and "toy-gpt2" in note


def test_a_toy_model_without_checkpoints_says_how_to_make_them(client, monkeypatch, tmp_path):
    monkeypatch.setattr(toy, "MODELS_DIR", tmp_path)  # an install without the toy weights
    status = client.call("msg-a.children", {"model-a.value": "toy-2l", "rev-a.value": 15})
    assert "No checkpoints" in status["msg-a.children"] and "toy_training" in status["msg-a.children"]
    assert client.call("rev-a.disabled", {"model-a.value": "toy-2l"})["rev-a.disabled"] is True
    assert compare_default("toy-2l")[0] == "toy-4l", "no toy-gpt2 weights: compare with toy-4l"


def test_pane_b_is_idle_until_compare_is_on(client):
    assert not client.call("head-b.figure", {"compare.value": []}), "pane B computed while hidden"
    assert client.call("main.className", {"compare.value": ["on"]}) == "compare"


# ---- clicks, the slider, optional views, the command -------------------------------------------------


def test_a_head_click_does_not_resend_the_grid(client):
    values = {"rev-a.value": 15, "layer.value": 1, "head.value": 2}
    assert "grid-a.figure" in client.call("head-a.figure", values, changed=["prompt-store.data"])
    assert "grid-a.figure" not in client.call("head-a.figure", values, changed=["head.value"])


def test_clicks_on_the_grid_and_scores_pick_the_head(client):
    point = {"points": [{"curveNumber": 4, "x": 0, "y": 0}]}  # toy-2l's grid: L0H0..L0H2, L1H0..L1H2
    got = client.call("layer.value", {"rev-a.value": 15, "grid-a.clickData": point}, changed=["grid-a.clickData"])
    assert (got["layer.value"], got["head.value"]) == (1, 1)
    point = {"points": [{"curveNumber": 0, "x": 2, "y": 1}]}
    got = client.call("layer.value", {"rev-a.value": 15, "scores-a.clickData": point}, changed=["scores-a.clickData"])
    assert (got["layer.value"], got["head.value"]) == (1, 2)
    assert views.grid_click(12, 12, layer=5, curve=7) == (5, 7), "big models: the grid holds one layer"


def test_slider_covers_every_checkpoint(client):
    got = client.call("rev-a.max", {"model-a.value": "toy-2l"})
    assert got["rev-a.max"] == len(REVS) - 1 and got["rev-a.value"] == len(REVS) - 1
    assert set(got["rev-a.marks"].values()) == {r.removeprefix("step") for r in REVS}
    got = client.call("rev-a.max", {"model-a.value": "EleutherAI/pythia-14m"})
    assert got["rev-a.max"] == 153 and got["rev-a.value"] == interp.suite.revisions("14m").index("step1000")


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
        figs = client.call("rope-0-a.figure", {"tabs.value": "rope", "rev-a.value": 15, "prompt-store.data": prompt})
        assert figs["rope-0-a.figure"]["data"][0]["y"] == [1, 2]
        assert figs["rope-1-a.figure"]["data"] == [], "a slot with no figure stays empty"
    assert calls == ["one prompt"], "a view that ignores the prompt runs once per checkpoint"


def test_rope_view_shows_the_probe_of_the_prompt(client):
    rope = pytest.importorskip("analyses.rope")
    values = {"tabs.value": "rope", "rev-a.value": 15}
    figs = client.call("rope-0-a.figure", values)
    table = rope.probe(toy_model("step3600"), PROMPT).to_frame()
    want = table.pivot(index="layer", columns="head", values="rotary_share").to_numpy()
    np.testing.assert_allclose(z_of(figs["rope-0-a.figure"]), want, rtol=1e-6)
    assert len(figs) == compute.EXTRAS["rope"].n_figures and all(f["data"] for f in figs.values())


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
