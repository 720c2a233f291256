"""Checkpoint integrity: steps whose weights are byte-identical to another step's are flagged and warned about."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import interp
from analyses.sweep import sweep
from analyses.sweep.integrity import DuplicateCheckpointWarning, flag_duplicates, tensors_sha256, weights_sha256
from tests.conftest import tiny_hf

ROOT = Path(__file__).resolve().parents[2]


def plain_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fingerprint_is_the_files_sha256():
    folder = interp.toy.checkpoint_path("toy-2l", "step450")
    assert weights_sha256("toy-2l", "step450") == plain_sha256(folder / "model.safetensors")
    assert weights_sha256("toy-2l", "main") == weights_sha256("toy-2l", "step3600")


def test_tensor_fingerprint_without_files():
    a, b = tiny_hf(seed=0), tiny_hf(seed=0)
    assert tensors_sha256(a.state_dict()) == tensors_sha256(b.state_dict())
    with torch.no_grad():
        b.gpt_neox.layers[1].attention.dense.weight[3, 5] += 1e-3
    assert tensors_sha256(a.state_dict()) != tensors_sha256(b.state_dict()), "one changed element must show"
    assert tensors_sha256(a.half().state_dict()) != tensors_sha256(tiny_hf(seed=0).state_dict()), "dtype counts"


def test_flag_duplicates_by_hand():
    frame = pd.DataFrame({"model": ["m", "m", "m", "m", "n"], "revision": ["step0", "step1", "step2", "main", "step1"],
                          "step": [0, 1, 2, 9, 1], "weights_sha256": ["a", "b", "b", "b", "b"]})
    with pytest.warns(DuplicateCheckpointWarning) as caught:
        flagged = flag_duplicates(frame)
    assert sorted(str(w.message).split(" (")[0] for w in caught) == [
        "m main has weights byte-identical to step1", "m step2 has weights byte-identical to step1"]
    assert flagged["duplicate_of"].tolist() == ["", "", "step1", "step1", ""], "per model; the earliest step wins"


@pytest.fixture
def toy_with_a_repeated_step(tmp_path, monkeypatch):
    """A copy of toy-4l with steps 0, 1, 2 where step2's weights file is a byte copy of step1's."""
    source, copy = interp.toy.model_dir("toy-4l"), tmp_path / "models" / "toy-4l"
    copy.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "training.json"):
        shutil.copy(source / name, copy / name)
    shutil.copytree(source / "step0", copy / "step0")
    shutil.copytree(source / "step1", copy / "step1")
    shutil.copytree(source / "step1", copy / "step2")
    monkeypatch.setattr(interp.toy, "MODELS_DIR", tmp_path / "models")
    return copy


def test_sweep_flags_a_repeated_toy_step(toy_with_a_repeated_step, tmp_path):
    with pytest.warns(DuplicateCheckpointWarning, match="toy-4l step2 has weights byte-identical to step1"):
        result = sweep("toy-4l", "attention", "all", store=tmp_path / "store", progress=False)
    frame = result.to_frame()
    assert frame.groupby("revision")["duplicate_of"].first().to_dict() == {"step0": "", "step1": "", "step2": "step1"}
    assert result.duplicates()[["revision", "duplicate_of"]].values.tolist() == [["step2", "step1"]]
    one, two = (frame[frame["revision"] == r].drop(columns=["revision", "step", "tokens_seen", "duplicate_of"])
                .reset_index(drop=True) for r in ("step1", "step2"))
    pd.testing.assert_frame_equal(one, two, obj="identical weights give identical results")
    with pytest.warns(DuplicateCheckpointWarning):  # the flag survives a rerun that reads the store
        again = sweep("toy-4l", "attention", "all", store=tmp_path / "store", progress=False)
    assert again.computed == () and again.duplicates()["revision"].tolist() == ["step2"]


HUB_SWEEP = textwrap.dedent("""
    import sys, warnings
    from analyses.sweep import sweep
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sweep("pythia-70m", "attention", "step0,step1,step2", params={"seq_len": 20}, progress=False)
    result.to_frame().to_csv(sys.argv[1], index=False)
    print("\\n".join(str(w.message) for w in caught))
""")


def fake_hub_cache(root: Path, tmp: Path) -> dict[str, str]:
    """A Hugging Face cache holding EleutherAI/pythia-70m at step0, step1, step2 (step2 = step1's file)."""
    repo = root / "models--EleutherAI--pythia-70m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    shas = {}
    for revision, seed in (("step0", 0), ("step1", 1), ("step2", 1)):
        saved = tmp / f"saved-{seed}"
        if not saved.exists():
            tiny_hf(seed=seed).save_pretrained(saved)
        commit = hashlib.sha1(revision.encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            data = (saved / name).read_bytes()
            blob = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else hashlib.sha1(data).hexdigest()
            (repo / "blobs" / blob).write_bytes(data)
            (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob)
        (repo / "refs" / revision).write_text(commit)
        shas[revision] = plain_sha256(saved / "model.safetensors")
    return shas


def test_hub_cache_duplicates_are_flagged(tmp_path):
    shas = fake_hub_cache(tmp_path / "hub", tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "sweep.csv"
    proc = subprocess.run([sys.executable, "-c", HUB_SWEEP, str(out)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pythia-70m step2 has weights byte-identical to step1" in proc.stdout
    frame = pd.read_csv(out, keep_default_na=False)
    per_revision = frame.groupby("revision").first()
    assert per_revision["weights_sha256"].to_dict() == shas, "the fingerprint is the file's sha256 (the hub's)"
    assert per_revision["duplicate_of"].to_dict() == {"step0": "", "step1": "", "step2": "step1"}
    assert per_revision["tokens_seen"].to_dict() == {"step0": 0, "step1": 2097152, "step2": 2 * 2097152}
    assert json.loads(json.dumps(sorted(frame["model"].unique()))) == ["pythia-70m"]
