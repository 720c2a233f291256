"""The explorer's views without a browser: every figure's numbers against the analyses (and HF's
own attentions) through the real callback endpoint; compare mode, clicks, the slider, RoPE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("dash")

import interp  # noqa: E402
from analyses.app import compute, views  # noqa: E402
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


def test_rope_view_shows_the_probe_of_the_prompt(client):
    rope = pytest.importorskip("analyses.rope")
    values = {"tabs.value": "rope", "rev-a.value": 15}
    figs = client.call("rope-0-a.figure", values)
    table = rope.probe(toy_model("step3600"), PROMPT).to_frame()
    want = table.pivot(index="layer", columns="head", values="rotary_share").to_numpy()
    np.testing.assert_allclose(z_of(figs["rope-0-a.figure"]), want, rtol=1e-6)
    assert len(figs) == compute.EXTRAS["rope"].n_figures and all(f["data"] for f in figs.values())
