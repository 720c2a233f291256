"""`pythia-interp attention`: files, provenance, one-line errors, the default toy model."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import interp

from analyses.export import find_browser
from interp import toy
from tests.analyses.helpers import REMOTE_REF, pixel_std, tiny_model


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
    assert record["model"] == saved_model.name and record["revision"] is None, "a directory has no revision"
    assert record["tokens"] == [[5, 17, 3, 5, 17, 3]] and record["head_scores"]["exclude_current"] is True
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
    assert "save_pretrained" in capsys.readouterr().err


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
    assert record["model"] == "toy-2l" and record["revision"] == interp.suite.revisions("toy")[-1], "the step loaded, not main" and len(record["tokens"][0]) > 5
    frame = pd.read_csv(out / "head_scores.csv").set_index("name")
    assert frame["induction"].idxmax() in {f"L{L}H{h}" for L, h in toy.HEADS["toy-2l"]["induction"]}
    assert pixel_std(out / "attention.png") > 10, "the PNG is blank"
