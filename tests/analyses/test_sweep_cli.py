"""`pythia-interp sweep`: the table over every toy checkpoint, rerun from the store, clean errors, a real kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import interp
from analyses import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def main():
    """`pythia-interp` in this process."""
    assert "analyses.sweep.command" in cli.COMMANDS
    return cli.main


def test_every_toy_checkpoint_then_a_rerun_from_the_store(main, loads, tmp_path, capsys):
    out = tmp_path / "toy"
    argv = ["sweep", "--model", "toy", "--analysis", "attention", "--revisions", "all", "--out", str(out)]
    assert main(argv) == 0
    revisions = interp.suite.revisions("toy")
    frame = pd.read_csv(out / "sweep.csv")
    assert {"revision", "step", "layer", "head", "induction"} <= set(frame.columns)
    assert len(frame) == len(revisions) * 2 * 3, "one row per revision x layer x head"
    assert frame["revision"].unique().tolist() == revisions
    assert not frame.duplicated(["revision", "layer", "head"]).any()
    assert frame["step"].tolist() == [int(r[4:]) for r in revisions for _ in range(6)]
    html = (out / "sweep.html").read_text()
    assert "plotly" in html and not re.search(r"<script[^>]+src=[\"']https?://", html), "self-contained page"
    assert len(loads) == len(revisions)
    first = capsys.readouterr().out
    assert f"computed {len(revisions)} checkpoints" in first

    assert main(argv) == 0
    assert len(loads) == len(revisions), "a second identical run loads no model"
    assert "no model was loaded or run" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out / "sweep.csv"), frame)


def test_several_models_and_a_separate_store(main, tmp_path):
    store = tmp_path / "shared-store"
    argv = ["sweep", "--model", "toy-2l,toy-4l", "--analysis", "attention", "--revisions", "step0,main",
            "--out", str(tmp_path / "a"), "--store", str(store), "--no-progress", "--param", "seq_len=20"]
    assert main(argv) == 0
    frame = pd.read_csv(tmp_path / "a" / "sweep.csv")
    assert frame.groupby("model").size().to_dict() == {"toy-2l": 12, "toy-4l": 16}
    assert len(list(store.glob("attention/*/*/*.parquet"))) == 4 and not (tmp_path / "a" / "store").exists()
    argv[2:3] = ["toy-2l", "--model", "toy-4l"]
    assert main(argv) == 0, "--model repeated means the same"


def test_output_in_the_way_is_refused_before_loading(main, loads, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for option in ("--out", "--store"):
        other = "--store" if option == "--out" else "--out"
        argv = ["sweep", "--analysis", "attention", option, str(tmp_path / "file" / "sub"), other, str(tmp_path / "o")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{option} " in err and "is a file" in err and len(err.strip().splitlines()) == 1
    assert loads == []


@pytest.mark.parametrize(("args", "match"), [
    (["--model", "pythia-16m"], "pythia-160m"),
    (["--revisions", "step7"], "step4, step8"),
    (["--param", "seqlen=3"], "seq_len"),
    (["--param", "nonsense"], "NAME=VALUE"),
    (["--revisions", " , "], "names no checkpoint"),
])
def test_errors_are_one_line(main, tmp_path, capsys, args, match):
    argv = ["sweep", "--analysis", "attention", "--out", str(tmp_path), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pythia-interp sweep: error:") and match in err, err
    assert "Traceback" not in err


def test_a_killed_sweep_resumes_without_recomputing(main, loads, tmp_path, capsys):
    out, store = tmp_path / "run", tmp_path / "run" / "store"
    argv = ["sweep", "--model", "toy-2l", "--analysis", "attention", "--revisions", "all", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "analyses.cli", *argv], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(list(store.glob("attention/*/*/*.parquet"))) < 3 and proc.poll() is None:
            assert time.monotonic() < deadline, "the sweep wrote nothing in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    finished = {p: p.stat().st_mtime_ns for p in store.glob("attention/*/*/*.parquet")}
    total = len(interp.suite.revisions("toy-2l"))
    assert 3 <= len(finished) < total, "the kill must land mid-way"
    assert not (out / "sweep.csv").exists()

    assert main(argv) == 0
    assert len(loads) == total - len(finished), "only the unfinished checkpoints are loaded again"
    assert sorted(r for _, r in loads) == sorted(set(interp.suite.revisions("toy-2l")) - {p.stem for p in finished})
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "finished results are not rewritten"
    assert f"read {len(finished)} from the store" in capsys.readouterr().out
    assert len(pd.read_csv(out / "sweep.csv")) == total * 6


def test_prompts_reach_the_analysis_and_its_key(main, tmp_path):
    (tmp_path / "prompts.txt").write_text("x = 1\n\ny = x + 1\n", encoding="utf-8")
    store = tmp_path / "store"
    base = ["sweep", "--analysis", "lens", "--revisions", "step0", "--store", str(store), "--no-progress"]
    assert main([*base, "--prompt", "def f(x): return x", "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--prompts-file", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "b")]) == 0
    keys = sorted(p.parent.name for p in store.glob("lens/*/_params.json"))
    assert len(keys) == 2, "different prompts, different keys"
    frame = pd.read_csv(tmp_path / "b" / "sweep.csv")
    assert frame["layer"].tolist() == [0, 1, 2] and (frame["kl"].iloc[-1]) < 1e-5
