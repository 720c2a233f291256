"""RoPE use over training as a sweep analysis (runs when analyses.rope is present)."""

from __future__ import annotations

import pytest

import interp
from analyses.sweep import sweep

pytest.importorskip("analyses.rope")


def test_previous_token_head_becomes_positional(tmp_path):
    result = sweep("toy-2l", "rope", "step0,main", store=tmp_path, progress=False)
    frame = result.to_frame()
    assert {"rotary_share", "positional_index", "label", "kernel_argmax_offset"} <= set(frame.columns)
    assert len(frame) == 2 * 2 * 3, "one row per checkpoint x layer x head"
    (layer, head), = interp.toy.HEADS["toy-2l"]["previous_token"]
    prev = frame[(frame["layer"] == layer) & (frame["head"] == head)].set_index("revision")
    assert prev.loc["main", "label"] == "positional" and prev.loc["main", "kernel_argmax_offset"] == -1
    assert prev.loc["main", "rotary_share"] > 0.9 > prev.loc["step0", "rotary_share"]
    lines, heatmap = result.figures()
    assert lines.layout.yaxis.title.text == "rotary_share" and heatmap.data[0].z.shape == (6, 2)
    assert lines.layout.xaxis.type == "log"


def test_rope_parameters_enter_the_key(tmp_path):
    a = sweep("toy-2l", "rope", "main", store=tmp_path, params={"n_tokens": 128}, progress=False)
    b = sweep("toy-2l", "rope", "main", store=tmp_path, params={"prompts": ["x = 1\ny = 2\n" * 20]}, progress=False)
    assert a.key.digest != b.key.digest and b.computed
