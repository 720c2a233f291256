"""Attention patterns and head detectors: exact scores on hand-made patterns, TransformerLens
parity, padding, figures (labels, hover, long prompts), the CLI, and the toy model card's heads."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from analyses.attention_maps import (
    DETECTORS,
    AttentionPatterns,
    detect_heads,
    detection_patterns,
    patterns,
    repeated_tokens,
)
from analyses.export import find_browser
from interp.errors import InputError
from tests.analyses.helpers_attention import REMOTE_REF, hand_made, pixel_std, tiny_model
from tests.conftest import assert_untouched, hook_state

N = 6


def identity(n: int = N) -> torch.Tensor:
    return torch.eye(n)[None, None]  # (layer, head, q_pos, k_pos)


def sub_diagonal(n: int = N) -> torch.Tensor:
    """Every query on the token before it; position 0 can only attend to itself."""
    a = torch.zeros(n, n)
    a[0, 0] = 1
    a[torch.arange(1, n), torch.arange(n - 1)] = 1
    return a[None, None]


def uniform(n: int = N) -> torch.Tensor:
    return (torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None])[None, None]


def scores_of(pattern: torch.Tensor, ids=None, **options) -> dict[str, float]:
    ids = list(range(10, 10 + pattern.shape[-1])) if ids is None else ids
    result = hand_made(pattern, ids).scores(**options)
    return {name: result.scores[name][0, 0].item() for name in DETECTORS}


# ---- exact scores on hand-made patterns -------------------------------------------------------


def test_identity_scores_are_the_formula_values():
    got = scores_of(identity())
    want = {
        "prev_token": 0,
        "duplicate_token": 0,
        "induction": 0,
        "first_token": 1 / N,
        "mean_distance": 0,
    }
    assert got == pytest.approx(want, abs=1e-7), "identity: only row 0 looks at position 0, from 0 tokens away"


def test_sub_diagonal_scores_are_the_formula_values():
    assert scores_of(sub_diagonal()) == pytest.approx(
        {
            "prev_token": (N - 1) / N,
            "duplicate_token": 0,
            "induction": 0,
            "first_token": 2 / N,
            "mean_distance": (N - 1) / N,
        },
        abs=1e-7,
    )
    # without self-attention, row 0 drops out: every remaining query is on its previous token
    assert scores_of(sub_diagonal(), exclude_current=True) == pytest.approx(
        {
            "prev_token": 1,
            "duplicate_token": 0,
            "induction": 0,
            "first_token": 1 / (N - 1),
            "mean_distance": 1,
        },
        abs=1e-7,
    )
    # without position 0, rows 0 and 1 drop out; first_token still counts position 0
    got = scores_of(sub_diagonal(), exclude_first=True)
    assert got["prev_token"] == pytest.approx(1) and got["mean_distance"] == pytest.approx(1)
    assert got["first_token"] == pytest.approx(2 / N), "exclude_first must not apply to first_token"


def test_uniform_scores_are_the_formula_values():
    harmonic = sum(1 / (q + 1) for q in range(N))
    assert scores_of(uniform()) == pytest.approx(
        {
            "prev_token": (harmonic - 1) / N,
            "duplicate_token": 0,
            "induction": 0,
            "first_token": harmonic / N,
            "mean_distance": (N - 1) / 4,
        },
        abs=1e-6,
    )
    kept = N - harmonic  # attention left once each row's weight on itself is dropped
    got = scores_of(uniform(), exclude_current=True)
    assert got["prev_token"] == pytest.approx((harmonic - 1) / kept, abs=1e-6)


def test_abs_measure_is_one_minus_the_mean_row_error():
    assert scores_of(sub_diagonal(), error_measure="abs")["prev_token"] == pytest.approx(1 - 1 / N)
    assert scores_of(identity(), error_measure="abs")["prev_token"] == pytest.approx(-1 + 1 / N)
    # first_token and mean_distance stay shares / means whatever the error measure
    assert scores_of(identity(), error_measure="abs")["first_token"] == pytest.approx(1 / N)


def test_repeats_score_as_induction_and_duplicate_heads():
    ids = [7, 8, 9, 7, 8, 9]
    marks = detection_patterns(torch.tensor(ids))
    for name in ("induction", "duplicate_token"):
        d = marks[name]
        a = d.clone()
        a[d.sum(1) == 0] = torch.eye(6)[d.sum(1) == 0]  # queries without a target look at themselves
        a = a / a.sum(1, keepdim=True)
        got = scores_of(a[None, None], ids)
        assert got[name] == pytest.approx(0.5), f"{name}: 3 of 6 queries have a target and attend to it"
    assert marks["induction"][3].nonzero().flatten().tolist() == [1], "after the earlier 7 comes position 1"
    assert marks["duplicate_token"][3].nonzero().flatten().tolist() == [0]


# ---- parity with TransformerLens's head detector ---------------------------------------------


@pytest.fixture(scope="module")
def rich_patterns() -> AttentionPatterns:
    model = tiny_model(seed=2, num_attention_heads=4)
    return patterns(model, torch.tensor([[5, 17, 3, 99, 5, 17, 3, 99, 42, 7, 5, 17, 17, 3]]))


def _tl_scores(pats: AttentionPatterns, tl_name: str, **options) -> torch.Tensor:
    """TL's detect_head fed our cached patterns through a stand-in model (nothing re-run)."""
    from transformer_lens import ActivationCache as TLCache
    from transformer_lens.head_detector import detect_head

    pattern, ids = pats.row(0)
    cfg = SimpleNamespace(device="cpu", dtype=torch.float32, n_ctx=10**6, n_layers=pats.n_layers, n_heads=pats.n_heads)
    stand_in = SimpleNamespace(cfg=cfg, to_tokens=lambda seq: torch.tensor([ids]))
    cache = TLCache(
        {f"blocks.{L}.attn.hook_pattern": pattern[i] for i, L in enumerate(pats.layers)},
        stand_in,
        has_batch_dim=False,
    )
    return detect_head(stand_in, "unused", tl_name, cache=cache, **options)


@pytest.mark.parametrize(
    "name,tl_name",
    [
        ("prev_token", "previous_token_head"),
        ("duplicate_token", "duplicate_token_head"),
        ("induction", "induction_head"),
    ],
)
@pytest.mark.parametrize("error_measure", ["mul", "abs"])
@pytest.mark.parametrize("exclude_first", [False, True])
@pytest.mark.parametrize("exclude_current", [False, True])
def test_scores_equal_transformer_lens(rich_patterns, name, tl_name, error_measure, exclude_first, exclude_current):
    pytest.importorskip("transformer_lens")
    options = {"exclude_first": exclude_first, "exclude_current": exclude_current}
    theirs = _tl_scores(
        rich_patterns,
        tl_name,
        exclude_bos=exclude_first,
        exclude_current_token=exclude_current,
        error_measure=error_measure,
    )
    ours = rich_patterns.scores(error_measure=error_measure, **options).scores[name]
    atol = 1e-6 if error_measure == "mul" else 5e-4 + 1e-6  # TL rounds "abs" to 3 decimals
    torch.testing.assert_close(
        ours,
        theirs,
        atol=atol,
        rtol=0,
        msg=lambda m: f"{name} {error_measure} {options} vs TL: {m}",
    )


# ---- patterns from the model -------------------------------------------------------------------


def test_patterns_are_the_cached_ones_and_leave_no_hook():
    model = tiny_model(seed=1)
    ids = torch.tensor([[5, 17, 3, 99, 5, 17]])
    before, weights = hook_state(model.hf), {k: v.clone() for k, v in model.hf.state_dict().items()}
    pats = patterns(model, ids)
    assert_untouched(model.hf, before, weights)
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("hook_pattern"))
    for L in range(model.n_layers):
        assert torch.equal(pats.pattern[L], cache["pattern", L]), f"layer {L} pattern is not the cached one"
    assert pats.str_tokens == [["t5", "t17", "t3", "t99", "t5", "t17"]]
    assert AttentionPatterns.from_cache(cache).str_tokens == [["#5", "#17", "#3", "#99", "#5", "#17"]]


def test_a_subset_of_layers_is_held_and_named_in_errors():
    model = tiny_model(seed=1)
    pats = patterns(model, torch.tensor([[5, 17, 3, 99]]), layers=[-1])
    assert pats.layers == (model.n_layers - 1,) and pats.pattern.shape[0] == 1
    assert pats.scores().to_frame()["layer"].unique().tolist() == [model.n_layers - 1]
    with pytest.raises(InputError, match=r"layer=0 is not among the layers held here: \[2\]"):
        pats.figure(layer=0)
    with pytest.raises(InputError, match="outside 0..2"):
        patterns(model, torch.tensor([[5, 17]]), layers=[7])


def test_padded_batch_scores_are_the_mean_of_each_prompt_alone():
    model = tiny_model(seed=1)
    prompts = ["t5 t17 t3 t99 t5 t17 t3 t99", "t8 t9 t8 t9 t8"]
    batch = patterns(model, prompts)
    assert batch.str_tokens[1] == ["t8", "t9", "t8", "t9", "t8"], "pads must not appear as tokens"
    alone = [patterns(model, p).scores(exclude_current=True) for p in prompts]
    together = batch.scores(exclude_current=True)
    for name in DETECTORS:
        mean = (alone[0].scores[name] + alone[1].scores[name]) / 2
        torch.testing.assert_close(together.scores[name], mean, atol=1e-5, rtol=1e-5)


def test_repeated_tokens_are_seeded_repeats_of_ordinary_tokens():
    model = tiny_model()
    tokens = repeated_tokens(model, seq_len=20, batch=3, seed=4)
    assert tokens.ids.shape == (3, 40)
    assert torch.equal(tokens.ids[:, :20], tokens.ids[:, 20:])
    assert torch.equal(tokens.ids, repeated_tokens(model, 20, 3, seed=4).ids)
    assert not torch.equal(tokens.ids, repeated_tokens(model, 20, 3, seed=5).ids)
    assert not set(tokens.ids.flatten().tolist()) & set(model.tokenizer.all_special_ids)
    with pytest.raises(InputError, match=r"seq_len=40 must be in 2..32"):
        repeated_tokens(model, seq_len=40)


def test_frames_have_one_row_per_head_and_per_causal_cell():
    model = tiny_model(seed=1)
    pats = patterns(model, "t5 t17 t3 t5")
    frame = detect_heads(model, seq_len=10, batch=2).to_frame()
    assert list(frame.columns) == ["layer", "head", "name", *DETECTORS]
    assert len(frame) == model.n_layers * model.n_heads and frame["name"].iloc[-1] == "L2H1"
    cells = pats.to_frame()
    assert len(cells) == model.n_layers * model.n_heads * (4 * 5 // 2)
    row = cells.query("layer == 1 and head == 1 and q_pos == 3 and k_pos == 0").iloc[0]
    assert (row.q_token, row.k_token) == ("t5", "t5")
    assert row.weight == pytest.approx(pats.pattern[1, 0, 1, 3, 0].item())
    sums = cells.groupby(["layer", "head", "q_pos"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1, atol=1e-5, err_msg="each query's row must sum to 1")


def test_bad_arguments_name_the_valid_choices():
    pats = hand_made(uniform(), list(range(N)))
    with pytest.raises(InputError, match="choose one of prev_token, duplicate_token"):
        pats.scores().figure("inductoin")
    with pytest.raises(InputError, match="error_measure='l2' is not one of 'mul', 'abs'"):
        pats.scores(error_measure="l2")
    with pytest.raises(InputError, match=r"head=5 is outside 0..0"):
        pats.figure(0, 5)
    with pytest.raises(InputError, match="needs a layer"):
        pats.figure(head=0)
    with pytest.raises(InputError, match=r"query=9 is outside .* pass 0..5"):
        pats.token_figure(9)
    with pytest.raises(InputError, match="'pool'.*'crop'"):
        pats.figure(0, 0, long="squash")


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
            ("scores", long_patterns.scores().figure()),
        ]
    }
    assert max(sizes.values()) < 12e6, f"figure JSON sizes (bytes): {sizes}"


# ---- command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = tiny_model(seed=1)
    path = tmp_path_factory.mktemp("tiny")
    model.hf.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


def test_cli_writes_scores_provenance_and_an_offline_page(saved_model, tmp_path, capsys):
    from analyses.cli import main

    out = tmp_path / "out"
    argv = [
        "attention",
        "--model",
        str(saved_model),
        "--prompt",
        "t5 t17 t3 t5 t17 t3",
        "--out",
        str(out),
        "--no-png",
        "--scores-on",
        "prompt",
        "--exclude-current",
    ]
    assert main(argv) == 0
    frame = pd.read_csv(out / "head_scores.csv")
    assert {
        "layer",
        "head",
        "prev_token",
        "duplicate_token",
        "induction",
        "first_token",
        "mean_distance",
    } <= set(frame.columns) and len(frame) == 6
    record = json.loads((out / "attention.json").read_text())
    assert record["model"] == saved_model.name and record["revision"] == "main"
    assert record["tokens"] == [5, 17, 3, 5, 17, 3] and record["head_scores"]["exclude_current"] is True
    html = (out / "attention.html").read_text()
    assert html.count("Plotly.newPlot") == 3 and not REMOTE_REF.search(html), "offline page of 3 figures"
    assert "top induction heads" in capsys.readouterr().out


def test_cli_reports_a_bad_model_in_one_line(tmp_path, capsys):
    from analyses.cli import main

    assert (
        main(
            [
                "attention",
                "--model",
                str(tmp_path / "nope"),
                "--prompt",
                "x",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no directory there" in capsys.readouterr().err


# ---- the toy suite: the heads its model card (interp/toy/README.md) names ----------------------

CARD = {
    "toy-2l": {"prev_token": [(0, 1)], "induction": [(1, 0), (1, 1), (1, 2)]},
    "toy-4l": {"prev_token": [(0, 0)], "induction": [(1, 0), (1, 1)]},
}


@pytest.fixture(scope="module", params=sorted(CARD))
def toy(request):
    import interp

    return request.param, interp.load(request.param)


def test_detectors_find_the_heads_the_toy_model_card_names(toy):
    name, model = toy
    scores = detect_heads(model)  # 4 x (50 random tokens, twice)
    frame = scores.to_frame().round(3).to_string()
    for detector, named in CARD[name].items():
        values = scores.scores[detector]
        found = scores.top(detector, len(named))
        assert sorted(found) == named, f"{name}: best {detector} heads {found}, the card names {named}\n{frame}"
        weakest_named = min(values[L, h] for L, h in named)
        strongest_other = max(
            values[L, h] for L in range(model.n_layers) for h in range(model.n_heads) if (L, h) not in named
        )
        assert weakest_named > 2 * strongest_other, f"{name}: {detector} heads do not stand out\n{frame}"
    # a perfect induction head scores 1/2 here: only the second copy has an earlier occurrence
    assert scores.scores["induction"][1, 0] > 0.35 and scores.scores["prev_token"][CARD[name]["prev_token"][0]] > 0.8


def test_toy_heads_show_on_a_repeated_text_prompt(toy):
    name, model = toy
    prompt = "If the object has a __len__ method, len() returns its length. " * 2
    scores = detect_heads(model, prompt.strip())
    assert scores.top("induction", 1)[0] in CARD[name]["induction"]
    assert scores.top("prev_token", 1) == CARD[name]["prev_token"]


def test_no_toy_head_is_detected_at_initialisation(toy):
    import interp

    name, _ = toy
    scores = detect_heads(interp.load(name, revision="step0"))
    assert scores.scores["induction"].max() < 0.05 and scores.scores["prev_token"].max() < 0.1


@pytest.mark.browser
@pytest.mark.skipif(find_browser() is None, reason="no Chrome/Chromium installed")
def test_cli_on_the_default_toy_model_writes_every_file(tmp_path):
    from analyses.cli import main

    out = tmp_path / "out"
    prompt = "The value of x is returned. The value of x is returned."
    assert main(["attention", "--prompt", prompt, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "attention.html",
        "attention.json",
        "attention.png",
        "head_scores.csv",
    ]
    record = json.loads((out / "attention.json").read_text())
    assert record["model"] == "toy-2l" and record["revision"] == "main" and len(record["tokens"]) > 5
    frame = pd.read_csv(out / "head_scores.csv").set_index("name")
    assert frame["induction"].idxmax() in {f"L{L}H{h}" for L, h in CARD["toy-2l"]["induction"]}
    assert pixel_std(out / "attention.png") > 10, "the PNG is blank"
