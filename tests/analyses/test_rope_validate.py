"""Position experiments through the real model: rotary invariance to a constant shift, gap sensitivity
as the kernel predicts, and context reversal, on hand-built heads and the toy suite."""

from __future__ import annotations

import pytest
import torch

import interp
from analyses.rope import position_tests, probe, sample_tokens
from analyses.rope.validate import run_at_positions
from interp.errors import InputError
from tests.analyses.helpers_rope import CONTENT, POSITIONAL, hand_built_model, random_ids
from tests.conftest import assert_untouched, hook_state


@pytest.fixture(scope="module")
def hand_built():
    model = hand_built_model()
    return model, position_tests(model, random_ids(32), split=16, shift=20, gap=12)


def test_a_constant_shift_changes_no_rotary_head(hand_built):
    _, tests = hand_built
    assert tests.values["shift_kl"].abs().max() < 1e-6, "rotary scores depend on key_pos - query_pos only"


def test_a_positional_head_follows_the_gap_as_its_kernel_predicts(hand_built):
    _, tests = hand_built
    L, h = POSITIONAL
    measured, predicted = tests.values["gap_kl"][L, h], tests.values["gap_kl_kernel"][L, h]
    assert measured > 0.5, "moving the probe away from the context must move a previous-token head's attention"
    torch.testing.assert_close(predicted, measured, rtol=1e-3, atol=1e-5,
                               msg="a bias-only head's kernel is its exact score: the prediction is exact")


def test_a_content_head_ignores_the_gap(hand_built):
    _, tests = hand_built
    L, h = CONTENT
    assert tests.values["gap_kl"][L, h] < 1e-6, "no rotary dims, layer-0 inputs: nothing moves"


def test_reversal_keeps_positions_for_positional_heads_and_tokens_for_content_heads(hand_built):
    _, tests = hand_built
    assert tests.values["reverse_position_tv"][POSITIONAL] < 1e-5
    assert tests.values["reverse_token_tv"][POSITIONAL] > 0.01, "reversal moved the tokens under it"
    assert tests.values["reverse_token_tv"][CONTENT] < 1e-5, "a layer-0 content head follows its tokens"
    assert tests.values["reverse_position_tv"][CONTENT] > 0.01


def test_shifted_positions_reach_the_model():
    model = hand_built_model()
    ids = random_ids(16)
    tokens = model.tokens(ids)
    plain = model(tokens)
    torch.testing.assert_close(run_at_positions(model, tokens, tokens.position_ids), plain)
    with pytest.raises(AssertionError):  # a gap changes the logits: the positions were used
        gapped = tokens.position_ids.clone()
        gapped[:, 8:] += 10
        torch.testing.assert_close(run_at_positions(model, tokens, gapped), plain)


def test_toy_positional_heads_move_more_than_content_heads():
    model = interp.load("toy")
    tokens = sample_tokens(model, 96)
    result = probe(model, tokens)
    tests = position_tests(model, tokens, decomposition=result.decomposition, gap=32)
    frame = tests.to_frame().merge(result.to_frame()[["layer", "head", "label"]])
    assert frame["shift_kl"].abs().max() < 1e-5
    positional, content = frame[frame.label == "positional"], frame[frame.label == "content"]
    assert len(positional) and len(content)
    assert positional["gap_kl"].min() > content["gap_kl"].max()
    assert positional["reverse_position_tv"].mean() < content["reverse_position_tv"].mean()


def test_bad_input_is_refused_and_the_model_left_untouched():
    model = hand_built_model()
    before, weights = hook_state(model.hf), {k: v.clone() for k, v in model.hf.state_dict().items()}
    with pytest.raises(InputError, match="unpadded"):
        position_tests(model, model.to_tokens(["t1 t2 t3 t4", "t5 t6"]))
    with pytest.raises(InputError, match="split"):
        position_tests(model, random_ids(16), split=16)
    with pytest.raises(InputError, match="gap"):
        position_tests(model, random_ids(16), gap=60)
    position_tests(model, random_ids(16), gap=4, shift=4)
    assert_untouched(model.hf, before, weights)
