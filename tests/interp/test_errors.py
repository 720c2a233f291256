"""Bad input raises a typed error that says what to do, and leaves the model exactly as it was."""

from __future__ import annotations

import pytest
import torch

import interp
from tests.conftest import assert_untouched, hook_state


@pytest.fixture
def guard(model):
    """Snapshot hooks, attention implementation and weights; check them after the test body."""
    before, weights = hook_state(model.hf), {k: v.clone() for k, v in model.hf.state_dict().items()}
    yield
    assert_untouched(model.hf, before, weights)


def test_unknown_site_lists_close_matches(model, ids, guard):
    with pytest.raises(interp.UnknownSiteError, match=r"blocks\.1\.attn\.hook_pattern"):
        with model.hooks(fwd={"blocks.0.hook_resid_pre": lambda x, hook: None,
                              "blocks.1.attn.hook_patern": lambda x, hook: None}):
            pass
    with pytest.raises(KeyError):  # also a KeyError, for code that expects one
        model.run_with_cache(ids, names=["hook_embedd"])


def test_wrong_shape_names_the_site_and_the_expected_shape(model, ids, guard):
    with pytest.raises(interp.HookShapeError, match=r"blocks\.1\.attn\.hook_z.*\(2, 12, 2, 32\)"):
        with model.hooks(fwd={"blocks.0.attn.hook_pattern": lambda x, hook: None,
                              "blocks.1.attn.hook_z": lambda x, hook: x[:, :-1]}):
            model(ids)


def test_wrong_shape_inside_attention_is_caught_too(model, ids, guard):
    with pytest.raises(interp.HookShapeError, match="hook_pattern"):
        with model.hooks(fwd={"blocks.2.attn.hook_pattern": lambda x, hook: x[..., :3]}):
            model(ids)


def test_a_hook_that_raises(model, ids, guard):
    def broken(x, hook):
        raise RuntimeError("bug in my hook")

    with pytest.raises(RuntimeError, match="bug in my hook"):
        with model.hooks(fwd={"blocks.1.attn.hook_rot_q": broken, "blocks.0.hook_mlp_out": lambda x, h: None}):
            model(ids)
    with pytest.raises(RuntimeError, match="bug in my hook"):
        with model.hooks(fwd={"hook_embed": broken}):
            model.run_with_cache(ids)


def test_keyboard_interrupt_inside_the_context(model, ids, guard):
    def interrupt(x, hook):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with model.hooks(fwd={"blocks.0.attn.hook_pattern": lambda x, h: None}):
            with model.hooks(fwd={"blocks.1.hook_resid_post": interrupt}):
                model.run_with_cache(ids)


def test_sequence_longer_than_the_context(model, guard):
    with pytest.raises(interp.InputError, match="n_ctx=64"):
        model.run_with_cache(torch.ones(1, 65, dtype=torch.long))


def test_empty_prompt_and_out_of_vocab_ids(model, guard):
    with pytest.raises(interp.InputError, match="Empty or non-text prompt"):
        model.run_with_cache("")
    with pytest.raises(interp.InputError, match="Empty or non-text prompt"):
        model.to_tokens(["t1", ""])
    with pytest.raises(interp.InputError, match="pos >= 1"):
        model(torch.ones(1, 0, dtype=torch.long))
    with pytest.raises(interp.InputError, match="outside the vocabulary"):
        model(torch.tensor([[1, 500]]))


def test_stop_at_layer_out_of_range(model, ids, guard):
    with pytest.raises(interp.InputError, match="stop_at_layer=7"):
        model.run_with_cache(ids, stop_at_layer=7)


def test_unsupported_model_is_refused_naming_the_supported_ones():
    from transformers import GPT2Config, GPT2Model

    bare = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))  # no LM head
    with pytest.raises(interp.UnsupportedModelError, match="GPTNeoXForCausalLM and GPT2LMHeadModel"):
        interp.Model(bare)


def test_errors_say_what_to_do_next(model):
    with pytest.raises(interp.SiteNotAvailableError, match="hook_resid_pre"):
        model.sites.resolve("blocks.0.hook_resid_mid")
    with pytest.raises(interp.UnknownSiteError, match="out of range"):
        model.sites.short("resid_pre", 9)
