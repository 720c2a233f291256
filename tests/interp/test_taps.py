"""Taps hold no shared state: contexts exit in any order, models sharing a config stay apart, threads too."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import pytest
import torch
from transformers import GPTNeoXForCausalLM

import interp
from tests.conftest import hook_state, tiny, tiny_config, twin

PATTERN = "blocks.0.attn.hook_pattern"


def plain_logits(hf, ids):
    with torch.no_grad():
        return twin(hf, "sdpa")(ids).logits


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_contexts_exit_out_of_order(arch, ids):
    hf = tiny(arch)
    model, before = interp.Model(hf), hook_state(hf)
    seen = []
    outer = model.hooks(fwd={PATTERN: lambda p, hook: seen.append("outer")})
    inner = model.hooks(fwd={"blocks.1.attn.hook_pattern": lambda p, hook: seen.append("inner")})
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # the outer one leaves first
    with torch.no_grad():
        model(ids)
    assert seen == ["inner"], "only the context still open fires"
    inner.__exit__(None, None, None)
    assert hook_state(hf) == before and model._hooks.active() == 0
    with torch.no_grad():
        assert torch.equal(model(ids), plain_logits(hf, ids)), "no tap may outlive its context"


def test_two_models_built_from_one_config_stay_apart(ids):
    config = tiny_config()
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    a, b = GPTNeoXForCausalLM(config).eval(), GPTNeoXForCausalLM(config).eval()
    assert a.config is b.config
    model_a, model_b = interp.Model(a), interp.Model(b)
    expected_b, before_b = plain_logits(b, ids), hook_state(b)
    fired = []
    with model_a.hooks(fwd={PATTERN: lambda p, hook: fired.append(1)}), torch.no_grad():
        got_b = model_b(ids)
        assert hook_state(b) == before_b, "hooking one model attaches nothing to the other"
        model_a(ids)
    assert torch.equal(got_b, expected_b) and fired == [1]
    assert config._attn_implementation == "sdpa"


def test_a_model_loaded_during_a_context_is_untouched(ids):
    model = interp.Model(tiny("neox"))
    with model.hooks(fwd={PATTERN: lambda p, hook: p * 0}):
        toy = interp.load("toy")
        fresh = interp.Model(tiny("neox", seed=5))
        with torch.no_grad():
            got = fresh(ids)
            toy_logits = toy("Hello, I am")
    with torch.no_grad():
        assert torch.equal(got, plain_logits(fresh.hf, ids))
        assert torch.equal(toy_logits, toy("Hello, I am"))


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_threads_see_only_their_own_hooks(arch, ids):
    hf = tiny(arch)
    model = interp.Model(hf)
    with torch.no_grad():
        reference = {L: model.run_with_cache(ids, names=[f"blocks.{L}.attn.hook_pattern"])[1] for L in range(2)}
        ablated = {}
        for L in range(2):
            with model.hooks(fwd={f"blocks.{L}.attn.hook_pattern": lambda p, hook: p * 0}):
                ablated[L] = model(ids)
    errors: list[str] = []

    def work(L: int):
        for _ in range(15):
            with torch.no_grad():
                _, cache = model.run_with_cache(ids, names=[f"blocks.{L}.attn.hook_pattern"])
                if set(cache) != {f"blocks.{L}.attn.hook_pattern"} or not torch.equal(
                        cache["pattern", L], reference[L]["pattern", L]):
                    errors.append(f"thread {L}: cache saw another thread's hooks")
                with model.hooks(fwd={f"blocks.{L}.attn.hook_pattern": lambda p, hook: p * 0}):
                    if not torch.equal(model(ids), ablated[L]):
                        errors.append(f"thread {L}: ablation mixed with another thread's")

    threads = [threading.Thread(target=work, args=(L,)) for L in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert model._hooks.active() == 0


def test_every_exit_path_removes_everything(ids):
    hf = tiny("neox")
    model, before = interp.Model(hf), hook_state(hf)
    names = [s.name for s in model.sites.all()]

    def boom(x, hook):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), ExitStack() as stack:
        stack.enter_context(model.hooks(fwd={n: (lambda x, hook: None) for n in names}))
        stack.enter_context(model.hooks(fwd={"blocks.2.hook_mlp_out": boom}, bwd={"blocks.0.hook_resid_pre": boom}))
        with torch.enable_grad():
            model(ids)
    assert hook_state(hf) == before and model._hooks.active() == 0
