"""The report's sections across training: which head formed when, and the sections each installed analysis adds."""

from __future__ import annotations

import importlib

import pandas as pd
import pytest

from analyses.sweep.registry import available
from analyses.sweep.report import formed_at


def test_formed_at_by_hand():
    frame = pd.DataFrame({"model": "m", "layer": [0, 0, 0, 1, 1, 1], "head": [0, 0, 0, 2, 2, 2],
                          "step": [0, 10, 100] * 2, "induction": [0.0, 0.1, 0.2, 0.0, 0.05, 0.6]})
    row = formed_at(frame, ["induction"]).iloc[0]
    assert (row["head"], row["final"], row["formed_at_step"]) == ("L1H2", 0.6, 100), "half of 0.6 first at 100"
    assert formed_at(frame, ["induction"], fraction=0.05).iloc[0]["formed_at_step"] == 10


def test_sections_on_the_toy_suite(tmp_path):
    if not hasattr(importlib.import_module("analyses.export"), "Section"):
        pytest.skip("analyses.export has no Section yet")
    from analyses.sweep.report import sections

    secs, tables = sections("toy", "step0,main", store=tmp_path)
    titles = [s.title for s in secs]
    assert titles[0] == "Heads across training" and len(tables["sweep"]) == 2 * 2 * 3
    assert ("RoPE use across training" in titles) == available("rope")
    assert ("The induction circuit across training" in titles) == available("circuit")
    assert all(s.figure is not None for s in secs), "every section draws a figure"
    assert secs[0].table.set_index("value").loc["induction", "head"] in {"L1H0", "L1H1", "L1H2"}
