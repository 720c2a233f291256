"""Training is seeded and deterministic: a short rerun follows the shipped run step for step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp import files, toy
from tests.toy.conftest import require_checkpoints
from toy_training import corpus
from toy_training.spec import SPECS, schedule
from toy_training.train import lr_at, parse_args

ROOT = Path(__file__).resolve().parents[2]
SHORT = 8  # steps of the shortened schedule: checkpoints step0, 1, 2, 4, 8
LOSS_TOL = 2e-3  # across CPUs float sums may differ in the last bits; on one machine runs are identical


def shipped(name: str) -> dict:
    """The shipped training.json of one model."""
    return json.loads((toy.model_dir(name) / "training.json").read_text())


def require_same_corpus(name: str) -> None:
    """Skip when this Python's bundled docs differ from those the suite was trained on."""
    require_checkpoints(name)
    record = shipped(name)
    here = corpus.fingerprint(corpus.split_topics()[0])
    if here != record["corpus"]["train_sha256"]:
        pytest.skip(
            f"pydoc_data here (Python {sys.version.split()[0]}) differs from the training corpus "
            f"(Python {record['versions']['python']}); a retrain cannot follow the shipped run"
        )


def train(out: Path, *args: str) -> None:
    """Run `python -m toy_training.train --out out ...` in a subprocess (its own torch settings)."""
    cmd = [sys.executable, "-m", "toy_training.train", "--out", str(out), *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout + done.stderr


def metrics_at(record: dict, step: int) -> dict:
    """The measurements of one checkpoint in a training.json."""
    return next(c for c in record["checkpoints"] if c["step"] == step)


def test_schedule_is_pythia_like():
    spec = SPECS["toy-2l"]
    steps = schedule(spec)
    assert steps[:8] == [0, 1, 2, 4, 8, 16, 32, 64] and steps[-1] == spec.steps
    evenly = steps[8:]
    assert len({b - a for a, b in zip(evenly, evenly[1:], strict=False)}) == 1, f"evenly spaced after step64: {evenly}"
    assert lr_at(1, spec) < lr_at(spec.warmup, spec) == spec.lr > lr_at(spec.steps, spec) >= 0.1 * spec.lr - 1e-12


def test_bad_step_count_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["--steps", "0"])


@pytest.mark.parametrize("name", ["toy-2l", "toy-gpt2"])  # one per architecture
def test_short_run_is_deterministic_and_follows_the_shipped_run(tmp_path, name):
    require_same_corpus(name)
    runs = [tmp_path / "a", tmp_path / "b"]
    record = shipped(name)
    options = ["--threads", str(record["torch_threads"])]
    if "loaded" in record["corpus"].get("tokenizer", ""):  # trained with the suite's tokenizer, not its own
        options += ["--tokenizer", str(toy.model_dir(toy.DEFAULT))]
    for out in runs:
        train(out, "--model", name, "--steps", str(SHORT), *options)
    a, b = (json.loads((out / name / "training.json").read_text()) for out in runs)
    assert a["batch_loss"] == b["batch_loss"] and a["checkpoints"] == b["checkpoints"], "two runs differ"
    assert a["schedule"] == [s for s in schedule(SPECS[name]) if s <= SHORT]
    saved = [files.weight_files(out / name / f"step{SHORT}") for out in runs]
    stored = files.PACKED if name in toy.PACKED else files.SAFETENSORS
    assert [p.name for p in saved[0]] == [stored], "training saves a model's checkpoints as the suite ships them"
    weights = [files.read_tensors(paths) for paths in saved]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "weights differ between runs"

    ship = shipped(name)
    assert a["batch_loss"] == pytest.approx(ship["batch_loss"][:SHORT], abs=LOSS_TOL), \
        "the short run left the shipped trajectory: data order, seed or schedule changed?"
    mine, theirs = metrics_at(a, SHORT), metrics_at(ship, SHORT)
    for key in ("train_loss", "heldout_loss", "repeat_second_loss"):
        assert mine[key] == pytest.approx(theirs[key], abs=LOSS_TOL), key
    for key in ("induction", "previous_token"):
        flat = [s for row in mine[key] for s in row]
        assert flat == pytest.approx([s for row in theirs[key] for s in row], abs=LOSS_TOL), \
            f"{key}: shipped with another definition?"
    tokenizer_file = "tokenizer.json"
    assert (runs[0] / name / tokenizer_file).read_text() == (toy.model_dir(name) / tokenizer_file).read_text()


@pytest.mark.parametrize("name", toy.NAMES)
def test_both_phases_draw_the_shipped_batches(name):
    require_same_corpus(name)
    from toy_training.train import batch_digests, build_corpus

    loaded = "loaded" in shipped(name)["corpus"].get("tokenizer", "")
    corpus = build_corpus(toy.model_dir(toy.DEFAULT) if loaded else None)
    assert batch_digests(SPECS[name], corpus) == shipped(name)["batch_sha256"], \
        "the data pipeline (corpus split, tokenizer, mix or phase) no longer draws the shipped batches"


@pytest.mark.slow
def test_full_retrain_reproduces_the_shipped_suite(tmp_path):
    for name in toy.NAMES:
        require_same_corpus(name)
    train(tmp_path, "--model", "all")
    for name in toy.NAMES:
        mine, ship = json.loads((tmp_path / name / "training.json").read_text()), shipped(name)
        final = ship["schedule"][-1]
        assert mine["schedule"] == ship["schedule"]
        for key in ("train_loss", "heldout_loss", "repeat_first_loss", "repeat_second_loss"):
            assert metrics_at(mine, final)[key] == pytest.approx(metrics_at(ship, final)[key], abs=0.02), (name, key)
