"""Attention patterns from the model: the cached ones, any subset of layers, frames, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.attention import (
    DETECTORS,
    AttentionPatterns,
    detect_heads,
    head_scores,
    patterns,
)
from interp.errors import InputError
from tests.analyses.helpers import hand_made, tiny_model, uniform
from tests.conftest import assert_untouched, hook_state

N = 6


# ---- patterns from the model -------------------------------------------------------------------


def test_patterns_are_the_cached_ones_and_leave_no_hook():
    model = tiny_model(seed=1)
    ids = torch.tensor([[5, 17, 3, 99, 5, 17]])
    before, weights = hook_state(model.hf), {k: v.clone() for k, v in model.hf.state_dict().items()}
    pats = patterns(model, ids)
    assert_untouched(model.hf, before, weights)
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("hook_pattern"))
    for L in range(model.n_layers):
        assert torch.equal(pats.pattern[L], cache["pattern", L]), f"layer {L} pattern is not the cached one"
    assert pats.str_tokens == [["t5", "t17", "t3", "t99", "t5", "t17"]]
    assert AttentionPatterns.from_cache(cache).str_tokens == [["#5", "#17", "#3", "#99", "#5", "#17"]]


def test_a_subset_of_layers_is_held_and_named_in_errors():
    model = tiny_model(seed=1)
    pats = patterns(model, torch.tensor([[5, 17, 3, 99]]), layers=[-1])
    assert pats.layers == (model.n_layers - 1,) and pats.pattern.shape[0] == 1
    assert head_scores(pats).to_frame()["layer"].unique().tolist() == [model.n_layers - 1]
    with pytest.raises(InputError, match=r"layer=0 is not among the layers held here: \[2\]"):
        pats.figure(layer=0)
    with pytest.raises(InputError, match="outside 0..2"):
        patterns(model, torch.tensor([[5, 17]]), layers=[7])


def test_frames_have_one_row_per_head_and_per_causal_cell():
    model = tiny_model(seed=1)
    pats = patterns(model, "t5 t17 t3 t5")
    frame = detect_heads(model, seq_len=10, batch=2).to_frame()
    assert list(frame.columns) == ["layer", "head", "name", *DETECTORS]
    assert len(frame) == model.n_layers * model.n_heads and frame["name"].iloc[-1] == "L2H1"
    cells = pats.to_frame()
    assert len(cells) == model.n_layers * model.n_heads * (4 * 5 // 2)
    row = cells.query("layer == 1 and head == 1 and q_pos == 3 and k_pos == 0").iloc[0]
    assert (row.q_token, row.k_token) == ("t5", "t5")
    assert row.weight == pytest.approx(pats.pattern[1, 0, 1, 3, 0].item())
    sums = cells.groupby(["layer", "head", "q_pos"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1, atol=1e-5, err_msg="each query's row must sum to 1")


def test_bad_arguments_name_the_valid_choices():
    pats = hand_made(uniform(), list(range(N)))
    with pytest.raises(InputError, match="choose one of prev_token, duplicate_token"):
        head_scores(pats).figure("inductoin")
    with pytest.raises(InputError, match="error_measure='l2' is not one of 'mul', 'abs'"):
        head_scores(pats, error_measure="l2")
    with pytest.raises(InputError, match=r"head=5 is outside 0..0"):
        pats.figure(0, 5)
    with pytest.raises(InputError, match="needs a layer"):
        pats.figure(head=0)
    with pytest.raises(InputError, match=r"query=9 is outside .* pass 0..5"):
        pats.token_figure(9)
    with pytest.raises(InputError, match="'pool'.*'crop'"):
        pats.figure(0, 0, long="squash")




def test_patterns_keep_no_graph_whatever_the_grad_mode():
    model = tiny_model(seed=1)
    with torch.enable_grad():
        pats = patterns(model, "t5 t17 t3 t5")
    assert not pats.pattern.requires_grad and pats.pattern.grad_fn is None
    assert all(p.grad is None for p in model.hf.parameters())
