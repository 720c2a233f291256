"""Sweeps across checkpoints: revision specs, the tidy table against direct runs, resuming, prefetch, errors."""

from __future__ import annotations

import threading
import time
import weakref

import pandas as pd
import pytest

import interp
from analyses.sweep import sweep, work
from analyses.sweep.registry import Analysis, AnalysisUnavailableError, analysis
from analyses.sweep.revisions import checkpoints, log_spaced, model_names, tokens_seen

PYTHIA_LOG = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 143000]


def detect(model):
    """The attention analysis written out, as the reference the sweep must reproduce."""
    from analyses.attention import detect_heads

    return detect_heads(model, seq_len=50, batch=4, seed=0).to_frame()


def test_revision_specs():
    pythia = checkpoints("pythia-70m", "all")
    assert len(pythia) == 154 and pythia[0].revision == "step0" and pythia[-1].step == 143000
    assert [c.step for c in checkpoints("pythia-160m-deduped", "log")] == PYTHIA_LOG
    toy = checkpoints("toy", "log")
    assert [c.step for c in toy] == [0, 1, 2, 4, 8, 16, 32, 64, 450, 900, 1800, 3600]
    assert {c.model for c in toy} == {"toy-2l"}
    explicit = checkpoints("toy-4l", ["main", 450, "step0", "step450"])
    assert [(c.label, c.revision) for c in explicit] == [("main", "step3600"), ("step450", "step450"),
                                                         ("step0", "step0")], "duplicates dropped, order kept"
    assert checkpoints("toy", "step0, step8") == checkpoints("toy", ["step0", "step8"])
    assert log_spaced(["step0", "step1", "step3", "step5", "step6", "step7"]) == ["step0", "step1", "step3", "step6",
                                                                                "step7"], "3 x 2^k, and the last"
    assert model_names("toy,toy-2l, toy-4l") == ["toy-2l", "toy-4l"]
    assert model_names(["EleutherAI/pythia-70m"]) == ["pythia-70m"]


def test_tokens_seen():
    assert tokens_seen("pythia-70m", 1000) == 1000 * 1024 * 2048
    assert tokens_seen("pythia-1b-deduped", 0) == 0
    phase1 = 2400 * 32 * 48  # model card: rows of 48 tokens for steps 1..2400, 32 rows a step
    assert tokens_seen("toy-2l", 1) == 32 * 48 and tokens_seen("toy-4l", 2400) == phase1
    assert tokens_seen("toy-2l", 3600) == phase1 + 1200 * 32 * 128
    assert [c.tokens_seen for c in checkpoints("toy", "step0,step2")] == [0, 2 * 32 * 48]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"models": "pythia-16m"}, "pythia-160m"),
    ({"revisions": "step7"}, "step4, step8"),
    ({"revisions": "latest"}, "step"),
    ({"revisions": []}, "names no checkpoint"),
    ({"analysis": "atention"}, "attention"),
    ({"params": {"seqlen": 5}}, "seq_len"),
    ({"executor": "dask"}, "local, ray"),
    ({"dtype": "fp8"}, "float16"),
    ({"store": __file__}, "is a file"),
])
def test_bad_input_fails_before_any_load(kwargs, match, loads):
    args = {"models": "toy", "analysis": "attention", "revisions": "all", **kwargs}
    with pytest.raises(interp.InterpError, match=match):
        sweep(args.pop("models"), args.pop("analysis"), args.pop("revisions"), progress=False, **args)
    assert loads == []


def test_table_equals_direct_runs():
    result = sweep("toy-4l", "attention", ["step0", "step64", "main"], progress=False)
    frame = result.to_frame()
    assert frame.columns[:4].tolist() == ["model", "revision", "step", "tokens_seen"]
    assert frame.columns[-2:].tolist() == ["weights_sha256", "duplicate_of"]
    assert list(frame["revision"].unique()) == ["step0", "step64", "main"] and frame["step"].max() == 3600
    for label, revision in [("step0", "step0"), ("step64", "step64"), ("main", "step3600")]:
        want = detect(interp.load("toy-4l", revision=revision))
        got = frame[frame["revision"] == label][want.columns].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False, obj=label)
    assert (frame["duplicate_of"] == "").all() and frame.groupby("revision")["weights_sha256"].nunique().eq(1).all()


def test_two_sizes_in_one_table():
    frame = sweep(["toy-2l", "toy-4l"], "attention", "step0,main", progress=False).to_frame()
    counts = frame.groupby("model").size().to_dict()
    assert counts == {"toy-2l": 2 * 2 * 3, "toy-4l": 2 * 4 * 2}, "checkpoints x layers x heads per model"


def test_rerun_reads_the_store_and_resumes(tmp_path, loads):
    store = tmp_path / "store"
    first = sweep("toy-4l", "attention", "step0,step8", store=store, progress=False)
    assert first.computed == (("toy-4l", "step0"), ("toy-4l", "step8")) and len(loads) == 2
    more = sweep("toy-4l", "attention", "step0,step8,step16", store=store, progress=False)
    assert more.computed == (("toy-4l", "step16"),) and len(loads) == 3, "only the new checkpoint is loaded"
    again = sweep("toy-4l", "attention", "step0,step8,step16", store=store, progress=False)
    assert again.computed == () and len(again.cached) == 3 and len(loads) == 3, "a finished sweep loads nothing"
    pd.testing.assert_frame_equal(again.to_frame(), more.to_frame())
    pd.testing.assert_frame_equal(again.to_frame().iloc[:16], first.to_frame())
    other = sweep("toy-4l", "attention", "step0", store=store, params={"seed": 1}, progress=False)
    assert other.computed == (("toy-4l", "step0"),), "other parameters are another key"


def test_callables_are_keyed_by_code_and_params(tmp_path, loads):
    store = tmp_path / "store"
    a = sweep("toy-4l", lambda m: {"x": 1.0}, "step0", store=store, progress=False)
    b = sweep("toy-4l", lambda m: {"x": 2.0}, "step0", store=store, progress=False)
    assert a.key.analysis == b.key.analysis and a.key.digest != b.key.digest, "edited code is not served stale"
    assert b.to_frame()["x"].tolist() == [2.0]

    def scaled(model, factor=1.0):
        return {"x": factor * model.n_layers}

    c = sweep("toy-4l", scaled, "step0", params={"factor": 3.0}, store=store, progress=False)
    assert c.to_frame()["x"].tolist() == [12.0] and "factor" in c.key.params
    assert len(loads) == 3
    with pytest.raises(interp.InterpError, match="sweep adds itself"):
        sweep("toy-4l", lambda m: {"step": 1}, "step0", progress=False)


def test_prefetch_readies_the_next_checkpoint_in_the_loading_thread_and_holds_two_models(monkeypatch):
    alive, events, threads, finders = weakref.WeakSet(), [], [], set()
    real_prepare, real_find = work.prepare, work.find

    def tracked_prepare(job, lookup, ahead=None):
        events.append(f"load {job.checkpoint.model} {job.checkpoint.revision}")
        threads.append(threading.current_thread().name)
        prepared = real_prepare(job, lookup, ahead)
        if isinstance(prepared, work.Loaded):
            alive.add(prepared.model.hf)
        return prepared

    def tracked_find(job, live):
        finders.add(threading.current_thread().name)
        return real_find(job, live)

    def slow(model):
        n = sum(e.startswith("end") for e in events)
        events.append(f"start {n}")
        time.sleep(0.3)  # long enough for a whole load to run meanwhile
        events.append(f"end {n}")
        return {"models_alive": len(alive)}

    monkeypatch.setattr(work, "prepare", tracked_prepare)
    monkeypatch.setattr(work, "find", tracked_find)
    revisions = ["step0", "step1", "step2", "step4"]
    result = sweep(["toy-4l", "toy-2l"], slow, revisions, progress=False)
    assert result.to_frame()["models_alive"].max() <= 2, "one model analysed plus the one loading"
    assert result.timings["swapped"].tolist() == [False, True, True, True] * 2, "later checkpoints swap in"
    assert threads[0] == threading.current_thread().name, "the first load has nothing to overlap: it runs here"
    assert {t.split("_")[0] for t in threads[1:]} == {"sweep-load"}, "the others run in the loader thread"
    assert finders == {threading.current_thread().name}, "whether a checkpoint fits the live model: checked here"
    at = {e: i for i, e in enumerate(events)}
    assert at["end 2"] < at["load toy-2l step0"] < at["end 3"], "a whole load runs during the analysis before it"
    for i in (1, 2, 3, 5, 6, 7):  # read during the analysis before
        model, revision = ("toy-4l", "toy-2l")[i // 4], revisions[i % 4]
        assert at.get(f"end {i - 2}", -1) < at[f"load {model} {revision}"] < at[f"end {i - 1}"], events
    events.clear()
    sweep("toy-4l", slow, revisions[:2], prefetch=False, progress=False)
    assert events == ["load toy-4l step0", "start 0", "end 0", "load toy-4l step1", "start 1", "end 1"]


def test_loading_bars_stay_quiet(capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    sweep("toy-4l", "attention", "step0,step1", progress=False)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err[-500:]
    assert hf_logging.is_progress_bar_enabled(), "the bars are restored after the sweep"


def test_progress_bar_counts_checkpoints(capfd, tmp_path):
    sweep("toy-4l", "attention", "step0,step1", store=tmp_path, progress=True)
    err = capfd.readouterr().err
    assert "2/2" in err and "ckpt" in err
    sweep("toy-4l", "attention", "step0,step1,step2", store=tmp_path, progress=True)
    assert "3/3" in capfd.readouterr().err


def test_lens_sweep_ends_at_the_model(tmp_path):
    result = sweep("toy-2l", "lens", "step0,main", progress=False, store=tmp_path)
    frame = result.to_frame()
    assert sorted(frame["layer"].unique()) == [0, 1, 2], "embedding plus one boundary per block"
    last = frame[frame["layer"] == 2]
    assert last["kl"].abs().max() < 1e-5 and last["agrees"].min() == 1.0, "the last boundary is the model itself"
    assert len(result.figures()) == 1
    changed = sweep("toy-2l", "lens", "step0", params={"prompts": ["Other text."]}, store=tmp_path, progress=False)
    assert changed.computed and changed.key.data_hash != result.key.data_hash, "prompts are part of the key"


def test_figures_use_a_log_step_axis():
    result = sweep("toy-2l", "attention", "step0,step4,step450,main", progress=False)
    fig = result.figure("induction", by=["layer", "head"])
    assert fig.layout.xaxis.type == "log" and len(fig.data) == 6 and fig.data[0].name == "L0H0"
    assert list(fig.data[0].x) == [2, 4, 450, 3600] and fig.layout.xaxis.ticktext[0] == "0"
    assert "0 drawn at 2" in fig.layout.xaxis.title.text, "half the first nonzero step"
    assert list(sweep("toy-2l", "attention", "step0,step1", progress=False).figure("induction").data[0].x) == [0.5, 1]
    tokens = result.figure("induction", x="tokens_seen")
    assert tokens.data[0].x[0] == 4 * 32 * 48 / 2, "tokens: 0 is drawn at half the first nonzero count"
    lines, heatmap = result.figures()
    n_detectors = 5
    assert len(lines.data) == 6 * n_detectors and len(lines.layout.updatemenus[0].buttons) == n_detectors
    assert heatmap.data[0].z.shape == (6, 4) and list(heatmap.data[0].x) == ["0", "4", "450", "3600"]
    with pytest.raises(interp.InterpError, match="No column"):
        result.figure("inductoin")
    both = sweep(["toy-2l", "toy-4l"], "attention", "step0,main", progress=False)
    assert len(both.figure("induction", by=["layer", "head"]).data) == 6 + 8
    assert both.figure("induction").data[1].name == "max induction toy-4l"


def test_registry_entries(loads):
    from analyses.sweep.registry import ANALYSES, Lazy, available, register

    assert analysis("attention") is analysis("attention") and isinstance(analysis(detect), Analysis)
    register(Lazy("later", ("analyses.not_written_yet",), "analyses.not_written_yet:build", "a future analysis"))
    try:
        assert not available("later") and available("lens")
        with pytest.raises(AnalysisUnavailableError, match="needs analyses.not_written_yet.*attention, lens"):
            sweep("toy", "later", "step0", progress=False)
    finally:
        ANALYSES.pop("later")
    assert loads == [], "refused before any load"
