"""`pythia-interp rope`: the files it writes, their columns and provenance, and refusals before work."""

from __future__ import annotations

import argparse
import json
import os

import pandas as pd
import pytest

from analyses.export import find_browser
from analyses.rope import command
from interp import toy
from tests.analyses.helpers import REMOTE_REF


def run_cli(argv: list[str]) -> int:
    """Through `analyses.cli.main` when it registers `rope`, else through the module's own parser."""
    from analyses import cli

    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "rope" in sub.choices:
        return cli.main(argv)
    top = argparse.ArgumentParser(prog="pythia-interp")
    command.add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(argv)
    return args.func(args)


def test_rope_writes_tables_figures_and_provenance(tmp_path):
    png = find_browser() is not None
    code = run_cli(["rope", "--model", "toy", "--out", str(tmp_path)] + ([] if png else ["--no-png"]))
    assert code == 0
    heads = pd.read_csv(tmp_path / "rope_heads.csv")
    for column in ("layer", "head", "rotary_share", "pass_share", "kernel_argmax_offset", "dominant_band", "label"):
        assert column in heads, column
    assert len(heads) == 6 and set(heads["label"]) <= {"positional", "mixed", "content"}
    [(L, h)] = toy.HEADS["toy-2l"]["previous_token"]
    row = heads.set_index(["layer", "head"]).loc[(L, h)]
    assert row.label == "positional" and row.kernel_argmax_offset == -1
    bands = pd.read_csv(tmp_path / "rope_bands.csv")
    for column in ("frequency", "wavelength", "energy", "variance_share"):
        assert column in bands, column
    assert len(bands) == 6 * 5
    record = json.loads((tmp_path / "rope.json").read_text())
    assert record["model"] == "toy-2l" and len(record["tokens"][0]) == 128 and len(record["ablated_heads"]) == 4
    assert record["geometry"]["rotary_dim"] == 8 and "key_pos - query_pos" in record["offset_convention"]
    html = (tmp_path / "rope.html").read_text()
    assert html.count('class="plotly-graph-div"') >= 8 and not REMOTE_REF.search(html), "offline, every figure"
    if png:
        assert (tmp_path / "rope.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        pytest.skip("no Chromium: rope.png not rendered (the rest was checked)")


def test_prompt_and_text_file(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("def f(x):\n    return x + 1\n\nprint(f(2))\n" * 3, encoding="utf-8")
    assert run_cli(["rope", "--text-file", str(text), "--ablate", "0", "--no-png", "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a" / "rope.json").read_text())
    assert record["text_source"] == str(text) and "ablated_heads" not in record
    out = str(tmp_path / "b")
    assert run_cli(["rope", "--prompt", "x = 1\ny = x\n", "--ablate", "0", "--no-png", "--out", out]) == 0
    assert json.loads((tmp_path / "b" / "rope.json").read_text())["text_source"] == "prompt"


@pytest.mark.parametrize("where", ["file", "file/below", "read-only"])
def test_an_output_path_that_cannot_be_written_is_refused_before_loading(tmp_path, monkeypatch, where):
    (tmp_path / "file").write_text("")
    (tmp_path / "read-only").mkdir(mode=0o500)
    if where == "read-only" and os.access(tmp_path / "read-only", os.W_OK):
        pytest.skip("running as a user who can write anywhere")
    import interp

    def no_load(*a, **k):
        raise AssertionError("the model must not load when the output cannot be written")

    monkeypatch.setattr(interp, "load", no_load)
    from interp.errors import InputError

    try:
        code = run_cli(["rope", "--out", str(tmp_path / where / "out"), "--no-png"])
    except InputError as err:
        assert "choose another --out" in str(err)
    else:
        assert code == 2
