"""The explorer's views without a browser: every figure's numbers against the analyses (and HF's
own attentions) through the real callback endpoint; compare mode, clicks, the slider, RoPE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("dash")

import interp  # noqa: E402
from analyses.app import compute, figures  # noqa: E402
from analyses.app.catalog import Catalog  # noqa: E402
from analyses.app.client import Client, array  # noqa: E402
from analyses.app.explorer import Explorer  # noqa: E402
from analyses.app.server import compare_default, create_app, has_checkpoints  # noqa: E402
from interp import toy  # noqa: E402
from tests.analyses import test_app as shared  # noqa: E402
from tests.conftest import word_tokenizer  # noqa: E402

PROMPT, REVS, WORDS = shared.PROMPT, shared.REVS, shared.WORDS
annotation, toy_model, z_of = shared.annotation, shared.toy_model, shared.z_of

try:  # the analyses' own functions, wherever they live
    from analyses.attention import detect_heads, head_scores, patterns
    from analyses.lens import logit_lens
except ModuleNotFoundError:
    from analyses.attention_maps import detect_heads, head_scores, patterns
    from analyses.logit_lens import logit_lens


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return shared.make_model_dirs(tmp_path_factory.mktemp("dirs"))


@pytest.fixture(scope="module")
def client(model_dirs, tmp_path_factory):
    hub_cache = shared.make_hub_cache(tmp_path_factory.mktemp("hub"))
    return Client(create_app(Explorer(Catalog(model_dirs, hub_cache=hub_cache))))


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
    grid, n = z_of(figs["grid-a.figure"]), want.shape[-1]  # one heatmap: a tile per head, a blank line apart
    for L in range(2):
        for h in range(3):
            tile = grid[L * (n + 1):L * (n + 1) + n, h * (n + 1):h * (n + 1) + n]
            np.testing.assert_array_equal(tile[q, k], want[L, h].numpy()[q, k], err_msg=f"grid tile L{L}H{h}")
            assert np.isnan(tile[np.triu_indices(n, 1)]).all()
    assert np.isnan(grid[n]).all() and np.isnan(grid[:, n]).all(), "tiles should be a blank line apart"


def test_token_view_colours_are_the_hovered_query_row(client):
    pats = patterns(toy_model("step3600"), PROMPT)
    want = pats.row(0)[0]
    for query in (None, 4, 13):
        values = {"rev-a.value": 15, "layer.value": 1, "head.value": 1, "query.data": query}
        q = want.shape[-1] - 1 if query is None else query
        colours = z_of(client.call("strip-a.figure", values)["strip-a.figure"]).reshape(-1)[: want.shape[-1]]
        np.testing.assert_allclose(colours[: q + 1], want[1, 1, q, : q + 1].numpy(), rtol=1e-7)
        assert np.isnan(colours[q + 1:]).all()
        rows = z_of(client.call("tokens-a.figure", values)["tokens-a.figure"])  # a row per head: what q attends to
        np.testing.assert_allclose(rows, want[:, :, q, : q + 1].reshape(6, -1).numpy(), rtol=1e-7)


def test_hovering_a_token_sets_the_query(client):
    hover = {"points": [{"customdata": 5, "curveNumber": 0}]}
    got = client.call("query.data", {"strip-a.hoverData": hover}, changed=["strip-a.hoverData"])
    assert got["query.data"] == 5 and "L0H0" in got["strip-a.figure"]["layout"]["title"]["text"]
    assert "(position 5)" in got["strip-a.figure"]["layout"]["title"]["text"], "the strip follows the hover"
    shown = got["shown.data"]
    again = client.call("query.data", {"prompt.value": "A new prompt", "query.data": 5, "shown.data": shown},
                        changed=["run.n_clicks"])
    assert again["query.data"] is None, "a new prompt's query is its last token"
    assert again["prompt-store.data"] == "A new prompt"


@pytest.mark.parametrize("on", ["random", "prompt"])
def test_head_scores_equal_the_detectors(client, on):
    for index in (8, 15):
        fig = client.call("scores-a.figure", {"tabs.value": "detectors", "rev-a.value": index,
                                              "detector.value": "induction", "scores-on.value": on})["scores-a.figure"]
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
    fig = fig["diff-detectors.figure"]
    early, late = (detect_heads(toy_model(r), seq_len=50).scores["prev_token"].double()
                   for r in ("step450", "step3600"))
    np.testing.assert_allclose(z_of(fig), (late - early).numpy(), atol=1e-12)
    assert np.abs(z_of(fig)).max() > 0.3, "the previous-token head forms between these checkpoints"


def test_pattern_difference_between_models_with_the_same_tokens(client):
    values = compare(**{"model-b.value": "toy-4l", "rev-a.value": 15, "rev-b.value": 15, "layer.value": 1,
                        "head.value": 1})
    fig = client.call("diff-attention.figure", values)["diff-attention.figure"]
    a = patterns(toy_model("step3600"), PROMPT).row(0)[0][1, 1].double()
    b = patterns(interp.load("toy-4l"), PROMPT).row(0)[0][1, 1].double()
    q, k = np.tril_indices(a.shape[-1])
    np.testing.assert_allclose(z_of(fig)[q, k], (b - a).numpy()[q, k], atol=1e-12)
    scores = client.call("diff-detectors.figure", {**values, "tabs.value": "detectors"})["diff-detectors.figure"]
    assert "no head-by-head difference" in annotation(scores), "2x3 and 4x2 heads cannot be subtracted"
    lens = client.call("diff-lens.figure", {**values, "tabs.value": "lens", "metric.value": "kl"})["diff-lens.figure"]
    assert [len(t["x"]) for t in lens["data"]] == [3, 5]
    assert lens["data"][0]["y"][-1] == 0 and lens["data"][1]["y"][-1] == 0, "the last boundary is the model itself"


def test_pythia_beside_gpt2(client, model_dirs):
    from transformers import GPT2LMHeadModel

    neox, gpt2 = (str(p.resolve()) for p in (model_dirs[0], model_dirs[2]))
    values = compare(**{"model-a.value": neox, "model-b.value": gpt2, "rev-a.value": 0, "rev-b.value": 0,
                        "prompt.value": WORDS, "layer.value": 2, "head.value": 1})
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
                                                 "detector.value": "prev_token"})["diff-detectors.figure"]
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
    single = client.call("head-b.figure", {"compare.value": []})
    assert "head-a.figure" in single and not any(k.endswith("-b.figure") for k in single), "pane B computed hidden"
    both = client.call("main.className", {"compare.value": ["on"]})
    assert both["main.className"] == "compare" and "head-b.figure" in both and "diff-attention.figure" in both


# ---- one request per click: only what changed is drawn, only what is on screen --------------------------


def test_a_click_redraws_only_what_depends_on_it(client):
    values = {"rev-a.value": 15, "layer.value": 1, "head.value": 2}
    first = client.call("head-a.figure", values)
    assert {"head-a.figure", "grid-a.figure", "strip-a.figure", "tokens-a.figure"} <= set(first)
    assert not any(k.startswith(("scores-", "lens-")) for k in first), "hidden tabs are not computed"
    shown = {**values, "shown.data": first["shown.data"]}
    assert client.call("head-a.figure", shown, changed=["rev-a.value"]) == {}, "nothing changed: nothing sent"
    head = client.call("head-a.figure", {**shown, "head.value": 1}, changed=["head.value"])
    assert set(head) == {"head-a.figure", "strip-a.figure", "shown.data"}, "a head click redraws the head only"
    moved = client.call("head-a.figure", {**shown, "rev-a.value": 14}, changed=["rev-a.value"])
    assert {"head-a.figure", "grid-a.figure", "strip-a.figure", "tokens-a.figure", "revision-a.children"} <= set(moved)
    assert not any(k.startswith("layer.") for k in moved), "same shape: the pickers stay"
    tab = client.call("head-a.figure", {**shown, "tabs.value": "detectors"}, changed=["tabs.value"])
    assert "scores-a.figure" in tab and "head-a.figure" not in tab


def test_a_dropped_answer_leaves_nothing_stale(client):
    """Dash drops an answer that a newer click superseded; the next request redraws what it missed."""
    values = {"rev-a.value": 15, "layer.value": 1, "head.value": 2}
    shown = client.call("head-a.figure", values)["shown.data"]
    client.call("head-a.figure", {**values, "rev-a.value": 8, "shown.data": shown}, changed=["rev-a.value"])  # dropped
    late = client.call("head-a.figure", {**values, "rev-a.value": 8, "head.value": 0, "shown.data": shown},
                       changed=["head.value"])
    assert "toy-2l@step450" in late["grid-a.figure"]["layout"]["title"]["text"], "the grid kept the old checkpoint"
    assert late["revision-a.children"] == "step450"


def test_clicks_on_the_grid_and_scores_pick_the_head(client):
    n = len(patterns(toy_model("step3600"), PROMPT).str_tokens[0])  # toy-2l's grid: L0H0..L0H2 / L1H0..L1H2
    point = {"points": [{"curveNumber": 0, "x": (n + 1) + 2, "y": (n + 1) + 3}]}  # in the tile of L1H1
    got = client.call("layer.value", {"rev-a.value": 15, "grid-a.clickData": point}, changed=["grid-a.clickData"])
    assert (got["layer.value"], got["head.value"]) == (1, 1)
    assert "L1H1" in got["head-a.figure"]["layout"]["title"]["text"], "the click should open the head in one request"
    between = {"points": [{"curveNumber": 0, "x": n, "y": 2}]}  # the blank line between L0H0 and L0H1
    got = client.call("layer.value", {"rev-a.value": 15, "layer.value": 1, "head.value": 2,
                                      "grid-a.clickData": between}, changed=["grid-a.clickData"])
    assert "layer.value" not in got and "head.value" not in got, "a click between tiles picks nothing"
    point = {"points": [{"curveNumber": 0, "x": 2, "y": 1}]}
    got = client.call("layer.value", {"rev-a.value": 15, "scores-a.clickData": point}, changed=["scores-a.clickData"])
    assert (got["layer.value"], got["head.value"]) == (1, 2)
    assert figures.Tiles(n=16, size=5, cols=16).at(x=7 * 6 + 2, y=3) == 7, "big models: a row of one layer's heads"


def test_slider_covers_every_checkpoint(client):
    got = client.call("rev-a.max", {"model-a.value": "toy-2l"})
    assert got["rev-a.max"] == len(REVS) - 1 and got["rev-a.value"] == len(REVS) - 1
    assert set(got["rev-a.marks"].values()) == {r.removeprefix("step") for r in REVS}
    got = client.call("rev-a.max", {"model-a.value": "EleutherAI/pythia-14m"})
    assert got["rev-a.max"] == 153 and got["rev-a.value"] == interp.suite.revisions("14m").index("step1000")


def test_rope_view_shows_the_probe_of_the_prompt(client):
    rope = pytest.importorskip("analyses.rope")
    values = {"tabs.value": "rope", "rev-a.value": 15}
    figs = client.call("rope-0-a.figure", values)
    table = rope.probe(toy_model("step3600"), PROMPT).to_frame()
    want = table.pivot(index="layer", columns="head", values="rotary_share").to_numpy()
    np.testing.assert_allclose(z_of(figs["rope-0-a.figure"]), want, rtol=1e-6)
    rope_figs = [f for k, f in figs.items() if k.startswith("rope-") and k.endswith("-a.figure")]
    assert len(rope_figs) == compute.EXTRAS["rope"].n_figures and all(f["data"] for f in rope_figs)
