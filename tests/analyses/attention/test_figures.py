"""Attention figures: labels, hover, sliders, score heatmaps, token view, long prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.attention import (
    DETECTORS,
    AttentionPatterns,
    detect_heads,
    head_scores,
    patterns,
)
from tests.analyses.helpers import hand_made, tiny_model, uniform

N = 6


# ---- figures -----------------------------------------------------------------------------------


def test_head_figure_keeps_duplicate_tokens_apart_and_shows_them():
    tokens = ["The", " cat", "\n", " the", " cat", "\n"]
    pats = hand_made(uniform(), list(range(N)), tokens)
    fig = pats.figure(0, 0)
    trace = fig.data[0]
    assert list(trace.x) == list(range(N)) and list(trace.y) == list(range(N)), "one column per position"
    assert list(fig.layout.xaxis.ticktext) == ["The", "·cat", "↵", "·the", "·cat", "↵"]
    assert fig.layout.yaxis.autorange == "reversed", "queries read top to bottom"
    assert trace.customdata[4][1].tolist() == ["4 ·cat", "1 ·cat"], "hover names query and key tokens"
    assert "%{z" in trace.hovertemplate and "query" in trace.hovertemplate
    z = np.asarray(trace.z, dtype=float)
    assert np.isnan(z[0, 1]) and z[3, 0] == pytest.approx(0.25), "blank above the diagonal, weights below"


def test_token_labels_are_text_not_markup():
    tokens = ["<b>", " &", "\x00", "<br>"]
    fig = hand_made(uniform(4), [1, 2, 3, 4], tokens).figure(0, 0)
    assert list(fig.layout.xaxis.ticktext) == ["&lt;b&gt;", "·&amp;", "\\x00", "&lt;br&gt;"]


def test_grid_slider_steps_through_every_layer():
    model = tiny_model(seed=1)
    pats = patterns(model, "t5 t17 t3 t5 t17")
    fig = pats.figure()
    assert len(fig.data) == model.n_heads, "one small multiple per head"
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == [str(L) for L in range(model.n_layers)]
    layer2 = np.array(steps[2].args[0]["z"][1], dtype=float)
    np.testing.assert_allclose(np.nan_to_num(layer2), np.tril(pats.pattern[2, 0, 1].numpy()), atol=5e-4)
    assert steps[2].args[0]["meta"] == ["L2H0", "L2H1"], "hover names the head shown"
    static = pats.figure(slider=False)
    assert len(static.data) == model.n_layers * model.n_heads and not static.layout.sliders
    assert len(pats.figure(layer=1).data) == model.n_heads


def test_score_figure_names_each_head_and_switches_detector():
    model = tiny_model(seed=1)
    scores = detect_heads(model, seq_len=10, batch=2)
    fig = scores.figure()
    assert fig.data[0].customdata[1][0] == "L1H0"
    assert "L1H0" not in fig.data[0].hovertemplate and "%{customdata}" in fig.data[0].hovertemplate
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == list(DETECTORS)
    induction = np.array(buttons[2].args[0]["z"][0])
    np.testing.assert_allclose(induction, scores.scores["induction"].numpy(), atol=1e-4)
    assert len(scores.figure("first_token").layout.updatemenus) == 0


def test_token_view_is_one_query_row_of_every_head():
    model = tiny_model(seed=1)
    pats = patterns(model, "t5 t17 t3 t5 t17 t3")
    fig = pats.token_figure(query=3)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (model.n_layers * model.n_heads, 4), "a row per head, a column per key up to the query"
    np.testing.assert_allclose(z[3], pats.pattern[1, 0, 1, 3, :4].numpy(), atol=1e-6)
    assert list(fig.data[0].y)[3] == "L1H1" and "query 3 (t5)" in fig.layout.title.text


# ---- long prompts ------------------------------------------------------------------------------

LONG = 2048


@pytest.fixture(scope="module")
def long_patterns() -> AttentionPatterns:
    model = tiny_model(seed=3, max_position_embeddings=LONG, num_hidden_layers=2, num_attention_heads=4)
    ids = torch.randint(1, 128, (1, LONG), generator=torch.Generator().manual_seed(0))
    return patterns(model, ids)


def test_long_prompts_are_pooled_or_cropped_and_say_so(long_patterns):
    fig = long_patterns.figure(0, 1)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (256, 256) and "max-pooled in blocks of 8" in fig.layout.title.text
    block = long_patterns.pattern[0, 0, 1, 80:88, 16:24].max().item()
    assert z[10, 2] == pytest.approx(block), "a pooled cell is its block's largest weight"
    crop = long_patterns.figure(0, 1, long="crop", max_pos=100)
    assert list(crop.data[0].x) == list(range(LONG - 100, LONG)), "crop keeps the last positions"
    assert "cropped to the last 100 of 2048" in crop.layout.title.text
    view = long_patterns.token_figure()
    assert np.asarray(view.data[0].z).shape[1] <= 1024 and "max-pooled" in view.layout.title.text


def test_long_prompt_figures_stay_small(long_patterns):
    sizes = {
        kind: len(fig.to_json())
        for kind, fig in [
            ("head", long_patterns.figure(0, 1)),
            ("grid", long_patterns.figure()),
            ("static", long_patterns.figure(slider=False)),
            ("token", long_patterns.token_figure()),
            ("scores", head_scores(long_patterns).figure()),
        ]
    }
    assert max(sizes.values()) < 12e6, f"figure JSON sizes (bytes): {sizes}"


