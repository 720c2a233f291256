"""Bad input gets an InterpError naming the value and the fix, before any work, leaving the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from tests.conftest import assert_untouched, hook_state, tiny


@pytest.fixture(params=["neox", "gpt2"])
def bare(request):
    """A model with no tokenizer, its state before, and its weights."""
    hf = tiny(request.param)
    return interp.Model(hf), hook_state(hf), {k: v.clone() for k, v in hf.state_dict().items()}


@pytest.mark.parametrize("call, match", [
    (lambda m, ids: m.run_with_cache(ids, dtype=torch.int64), "not a floating torch dtype"),
    (lambda m, ids: m.run_with_cache(ids, dtype="bf16"), "not a floating torch dtype"),
    (lambda m, ids: m.run_with_cache(ids, device="gpu7"), "is not a device"),
    (lambda m, ids: m.run_with_cache(ids, stop_at_layer=99), "stop_at_layer=99"),
    (lambda m, ids: m([[1, 2, 3], [4, 5]]), "Ragged rows"),
    (lambda m, ids: m(torch.rand(2, 5)), "must be integers"),
    (lambda m, ids: m(interp.Tokens(ids, torch.tensor([[1] * 11 + [0]] * 2))), "right-padded"),
    (lambda m, ids: m.generate("hello"), "no tokenizer"),
    (lambda m, ids: m.hooks(fwd={"blocks.0.hook_z": print}).__enter__(), "Closest valid names"),
    (lambda m, ids: m.hooks(fwd={"blocks.0.attn.hook_z": "not a function"}).__enter__(), "not a function"),
    (lambda m, ids: m.run_with_cache_and_grads(ids, lambda logits: 3.0), "scalar tensor"),
])
def test_bad_input_is_refused_and_leaves_the_model_as_it_was(bare, ids, call, match):
    model, before, weights = bare
    with pytest.raises(interp.InterpError, match=match):
        call(model, ids)
    assert_untouched(model.hf, before, weights)
    assert model._hooks.active() == 0


def test_numpy_and_list_ids_are_accepted(bare, ids):
    model, _, _ = bare
    with torch.no_grad():
        expected = model(ids)
        assert torch.equal(model(ids.numpy()), expected)
        assert torch.equal(model(ids.tolist()), expected)
        assert torch.equal(model(np.asarray(ids[0])), expected[:1])


def test_wrapping_never_modifies_the_users_model(ids):
    hf = tiny("gpt2").train()  # GPT-2 has dropout: training mode is visible
    with pytest.warns(UserWarning, match="training mode"):
        interp.Model(hf)
    assert hf.training, "Model(hf) must not call hf.eval() on the user's model"
