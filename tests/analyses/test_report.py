"""The main job: the report on the toy suite, and checkpoint sweeps."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import interp
from analyses.attention import detect_heads
from analyses.cli import main
from analyses.report import build_report
from analyses.sweep import step_of, sweep


@pytest.fixture(scope="module")
def toy():
    return interp.load("toy")


def test_sweep_shows_induction_forming(toy):
    first, last = interp.suite.revisions("toy")[0], "main"
    result = sweep("toy", lambda m: detect_heads(m).to_frame(), [first, last])
    frame = result.to_frame()
    assert list(frame["revision"].unique()) == [first, last] and frame["step"].iloc[0] == 0
    by_step = frame.groupby("step")["induction"].max()
    assert by_step.iloc[-1] > by_step.iloc[0] + 0.2, "the final checkpoint must have an induction head step0 lacks"
    fig = result.figure("induction", by=["layer", "head"])
    assert len(fig.data) == toy.n_layers * toy.n_heads and fig.data[0].name == "L0H0"
    with pytest.raises(interp.InputError, match="No column"):
        result.figure("inductoin")


def test_step_of():
    assert step_of("step450", "toy") == 450 and step_of("main", "toy") == int(interp.suite.revisions("toy")[-1][4:])
    with pytest.raises(interp.InputError):
        step_of("latest", "toy")


def test_report_sections_and_files(toy, tmp_path):
    report = build_report(toy, sweep_revisions=["step0", "main"], sweep_name="toy")
    assert [s.title for s in report.sections][0] == "Head detectors" and len(report.sections) == 4
    page = report.save(tmp_path)
    html = page.read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']https?://", html), "the page must load nothing"
    assert html.count("<section>") == 4 and "L1H" in html
    scores = pd.read_csv(tmp_path / "head_scores.csv")
    assert {"layer", "head", "induction", "prev_token"} <= set(scores.columns)
    record = json.loads((tmp_path / "report.json").read_text())
    assert record["model"] == "toy-2l" and record["revision"] == interp.suite.revisions("toy")[-1]
    assert len(record["prompts"]) == 1
    assert set(pd.read_csv(tmp_path / "sweep.csv")["revision"]) == {"step0", "main"}


def test_report_cli(tmp_path, capsys):
    assert main(["report", "--sweep", "2", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").stat().st_size > 100_000
    assert "wrote" in capsys.readouterr().out


def test_report_takes_several_prompts(toy, tmp_path):
    prompts = ["x = 1; x = 1", "def f(a): return a"]
    report = build_report(toy, prompts)
    titles = [s.title for s in report.sections]
    assert titles.count("Logit lens on prompt 2") == 1 and sum("on prompt" in t for t in titles) == 4
    assert set(report.tables["logit_lens"]["prompt"]) == {0, 1}
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n\n")
    assert main(["report", "--prompts-file", str(path), "--sweep", "0", "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["prompts"] == prompts


def test_report_cli_bad_model_is_a_clean_error(tmp_path, capsys):
    assert main(["report", "--model", "pythia-16m", "--out", str(tmp_path)]) == 2
    assert "pythia-160m" in capsys.readouterr().err
