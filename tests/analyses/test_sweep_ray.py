"""The Ray executor on a local 2-CPU Ray: the same table as the local executor, and a resume after a killed worker.

Starting Ray and its workers takes most of this file's time; deselect with `-m "not ray"`.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pandas as pd
import pytest

from analyses.sweep import sweep
from analyses.sweep.ray_executor import SweepIncompleteError

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
REVISIONS = ["step0", "step64", "step1800", "main"]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs whose workers import this checkout."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), before) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def killed_once(model, victim: str, marks: str) -> dict:
    """Record the call; on the first call at `victim`, kill this worker process outright."""
    step = Path(model.hf.config.name_or_path).name
    (Path(marks) / f"{step}.{uuid.uuid4().hex}").touch()
    killed = Path(marks) / "killed"
    if step == victim and not killed.exists():
        killed.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return {"pid_free": 1.0, "n_layers": float(model.n_layers)}


def calls(marks: Path) -> dict[str, int]:
    steps = [p.name.split(".")[0] for p in marks.iterdir() if p.name != "killed"]
    return {s: steps.count(s) for s in sorted(set(steps))}


def test_same_table_as_the_local_executor(local_ray, tmp_path):
    remote = sweep("toy-4l", "attention", REVISIONS, executor="ray", store=tmp_path / "ray", progress=False)
    local = sweep("toy-4l", "attention", REVISIONS, executor="local", store=tmp_path / "local", progress=False)
    assert len(remote.computed) == len(REVISIONS) and len(remote.frame) == len(REVISIONS) * 4 * 2
    pd.testing.assert_frame_equal(remote.to_frame(), local.to_frame())
    again = sweep("toy-4l", "attention", REVISIONS, executor="ray", store=tmp_path / "ray", progress=False)
    assert again.computed == (), "the Ray executor reads the store like the local one"


def test_resumes_after_a_worker_is_killed(local_ray, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    params = {"victim": "step1800", "marks": str(marks)}
    options = {"max_retries": 0}
    store = tmp_path / "store"
    with pytest.raises(SweepIncompleteError, match="1 of 4 checkpoints failed.*toy-4l step1800.*rerun"):
        sweep("toy-4l", killed_once, REVISIONS, params=params, executor="ray", store=store, progress=False,
              ray_options=options)
    assert (marks / "killed").exists(), "the worker was really killed"
    assert len(list(store.glob("*/*/toy-4l/*.parquet"))) == 3, "the other tasks finished and were stored"
    assert calls(marks) == {"step0": 1, "step64": 1, "step1800": 1, "step3600": 1}

    result = sweep("toy-4l", killed_once, REVISIONS, params=params, executor="ray", store=store, progress=False,
                   ray_options=options)
    assert result.computed == (("toy-4l", "step1800"),), "only the killed checkpoint runs again"
    assert calls(marks) == {"step0": 1, "step64": 1, "step1800": 2, "step3600": 1}
    assert result.to_frame()["revision"].tolist() == REVISIONS


class FakeRay:
    """Records how the executor initialises Ray, without starting one."""

    def __init__(self, initialised=False, fail=False):
        self.initialised, self.fail, self.calls = initialised, fail, []

    def is_initialized(self):
        return self.initialised

    def init(self, **kwargs):
        self.calls.append(kwargs)
        if self.fail:
            raise ConnectionError("could not connect")


@pytest.mark.parametrize(("env", "arg", "want"), [(None, None, None), ("10.0.0.1:6379", None, "10.0.0.1:6379"),
                                                  ("10.0.0.1:6379", "auto", "auto")])
def test_connects_to_the_cluster_named(monkeypatch, env, arg, want):
    from analyses.sweep import ray_executor

    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    fake = FakeRay()
    assert ray_executor._connect(fake, arg) is True, "a Ray this call starts is shut down after the sweep"
    assert fake.calls[0]["address"] == want
    running = FakeRay(initialised=True)
    assert ray_executor._connect(running, arg) is False and running.calls == [], "a running Ray is used as is"
    from interp import InterpError

    with pytest.raises(InterpError, match="ray start --head"):
        ray_executor._connect(FakeRay(fail=True), "10.9.9.9:1")
