"""Circuits over training: summary and slider from hand-built edge tables, and the real thing on the toy suite."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import interp
from analyses.sweep.circuit_figures import circuit_slider
from analyses.sweep.circuits import jaccard, summary
from tests.analyses.test_sweep_cli import main  # noqa: F401  (the CLI fixture)


def edge_table() -> pd.DataFrame:
    """Three checkpoints of a 3-edge graph: circuits {a}, {a, b}, {b, c}."""
    edges = [("embed", "L0H1.v"), ("L0H1", "L1H0.k"), ("L1H0", "logits")]
    kept = {1: {0}, 2: {0, 1}, 4: {1, 2}}
    rows = []
    for step, keep in kept.items():
        for i, (s, r) in enumerate(edges):
            rows.append({"model": "toy-2l", "revision": f"step{step}", "step": step, "tokens_seen": step * 10,
                         "sender": s, "receiver": r, "score": float(i + 1), "in_circuit": i in keep,
                         "circuit_size": len(keep), "circuit_faithfulness": 0.9, "metric_gap": 1.0})
    return pd.DataFrame(rows)


def test_summary_by_hand():
    moved = pd.DataFrame({"revision": ["step1", "step2", "step4"], "faithfulness": [0.1, 0.5, 1.0],
                          "completeness": [0.2, 0.6, 1.0]})
    table = summary(edge_table(), moved)
    assert table["circuit_size"].tolist() == [1, 2, 2]
    assert math.isnan(table["jaccard_previous"][0])
    assert table["jaccard_previous"].tolist()[1:] == [1 / 2, 1 / 3], "|{a}&{a,b}|/|{a,b}|, |{b}|/|{a,b,c}|"
    assert table["final_faithfulness"].tolist() == [0.1, 0.5, 1.0]
    assert "final_faithfulness" not in summary(edge_table()), "without the transfer sweep, no such column"
    assert jaccard({1}, {1}) == 1.0 and math.isnan(jaccard(set(), set()))


def test_slider_shows_one_checkpoint_at_a_time():
    fig = circuit_slider(edge_table())
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["1", "2", "4"] and fig.layout.sliders[0].active == 2
    masks = [s.args[0]["visible"] for s in steps]
    fixed = 1 + 5  # the nodes and the legend of edge colours
    assert all(all(m[:fixed]) for m in masks), "the nodes and the legend stay visible"
    shown = [{i for i, v in enumerate(m) if v and i >= fixed} for m in masks]
    assert not (shown[0] & shown[1]) and not (shown[1] & shown[2]), "each step shows only its own edges"
    drawn = [sum(len([x for x in fig.data[i].x if x is not None]) for i in s if fig.data[i].mode == "lines") // 2
             for s in shown]
    assert drawn == [1, 2, 2], "one line per circuit edge"
    nodes = dict(zip(fig.data[0].text, zip(fig.data[0].x, fig.data[0].y, strict=True), strict=True))
    assert nodes["embed"][1] < nodes["L0H1"][1] < nodes["L1H0"][1] < nodes["logits"][1], "nodes in layer order"
    assert list(fig.layout.yaxis.ticktext) == ["embed", "layer 0", "layer 1", "logits"]


@pytest.fixture
def patching():
    return pytest.importorskip("analyses.patching")


def test_toy_induction_circuit_over_training(patching, tmp_path, monkeypatch):
    from analyses.sweep.circuits import circuits_over_training

    params = {"n_prompts": 4, "steps": 2, "points": 70}
    result = circuits_over_training("toy-2l", ["step900", "main"], params=params, store=tmp_path, progress=False)
    table = result.to_frame().set_index("revision")
    assert table.loc["main", "metric_gap"] > 1.0 > table.loc["step900", "metric_gap"], "induction forms in between"
    assert table.loc["main", "final_faithfulness"] == pytest.approx(table.loc["main", "circuit_faithfulness"],
                                                                    abs=1e-4), "the same edges, the same number"
    assert table.loc["main", "circuit_faithfulness"] >= 0.8
    final = result.edges[(result.edges["revision"] == "main") & result.edges["in_circuit"]]
    (prev_layer, prev_head), = interp.toy.HEADS["toy-2l"]["previous_token"]
    keys = {r for s, r in final[["sender", "receiver"]].itertuples(index=False) if s == f"L{prev_layer}H{prev_head}"}
    induction = {f"L{L}H{h}.k" for L, h in interp.toy.HEADS["toy-2l"]["induction"]}
    assert keys & induction, f"the previous-token head must feed an induction head's key: {sorted(keys)}"
    assert len(result.figures()) == 2

    calls = []
    real = interp.load
    monkeypatch.setattr(interp, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    circuits_over_training("toy-2l", ["step900", "main"], params=params, store=tmp_path, progress=False)
    assert calls == [], "both sweeps read the store"


def test_patch_sweep_finds_the_induction_heads(patching):
    from analyses.sweep import sweep

    frame = sweep("toy-2l", "patch", "main", params={"n_prompts": 4}, progress=False).to_frame()
    assert {"layer", "head", "effect"} <= set(frame.columns)
    top = frame.loc[frame["effect"].abs().idxmax()]
    assert (int(top["layer"]), int(top["head"])) in {*interp.toy.HEADS["toy-2l"]["induction"],
                                                     *interp.toy.HEADS["toy-2l"]["previous_token"]}



def test_circuit_command(patching, main, tmp_path, capsys):  # noqa: F811
    argv = ["sweep", "--model", "toy-2l", "--analysis", "circuit", "--revisions", "step900,main", "--param",
            "n_prompts=4", "--param", "steps=2", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert {"sender", "receiver", "score", "in_circuit", "circuit_size", "final_faithfulness",
            "jaccard_previous"} <= set(table.columns)
    assert len(table) == 2 * table.groupby("revision").size().iloc[0], "every edge at both checkpoints"
    assert "computed 4 checkpoints" in capsys.readouterr().out, "discovery and transfer, two checkpoints each"
    assert main(argv) == 0 and "no model was loaded" in capsys.readouterr().out
