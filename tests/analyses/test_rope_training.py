"""Across training: the head table at every checkpoint through the sweep, and its figure."""

from __future__ import annotations

from analyses.rope import rope_across_training, sample_text
from interp import toy


def test_rotary_use_forms_during_training():
    run = rope_across_training("toy", sample_text()[:600], revisions=["step0", "step1350", "main"])
    frame = run.to_frame()
    assert sorted(frame["step"].unique()) == [0, 1350, 3600] and len(frame) == 3 * 6
    [(L, h)] = toy.HEADS["toy-2l"]["previous_token"]
    prev = frame[(frame["layer"] == L) & (frame["head"] == h)].set_index("step")
    assert prev.loc[0, "label"] == "content" and prev.loc[3600, "label"] == "positional"
    assert prev.loc[3600, "rotary_share"] > 0.9 > prev.loc[0, "rotary_share"]
    at_init = frame[frame.step == 0]
    assert at_init["positional_index"].max() < 0.1, "a random init has no offset structure"
    assert abs(at_init["rotary_share"].mean() - 0.25) < 0.1, "at init variance splits like the dims (25% rotary)"
    fig = run.figure()
    assert len(fig.data) == 6 and all(len(trace.x) == 3 for trace in fig.data)
    assert list(fig.layout.xaxis.categoryarray) == ["0", "1350", "3600"]
    assert run.figure("positional_index").layout.yaxis.title.text == "positional_index"
