"""Read-only hooks change nothing, in fp32, bf16 and fp16, on both architectures, padded or not.

The references are HF's own forwards: an eager twin for tapped layers, the plain (sdpa) model for
everything else, and, for a single tapped layer, the plain model with that layer's output replaced
by the eager twin's, so the untapped layers after it run HF's own implementation and mask.
"""

from __future__ import annotations

import pytest
import torch

import interp
from tests.conftest import padded_ids, tiny, twin

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ARCHS = ["neox", "gpt2"]


def hf_inputs(padded: bool) -> interp.Tokens:
    ids, mask = padded_ids()
    return interp.Tokens(ids, mask if padded else torch.ones_like(mask))


def hf_run(hf, tokens: interp.Tokens):
    with torch.no_grad():
        return hf(**tokens.hf_inputs(), output_hidden_states=True, output_attentions=True, use_cache=False)


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_every_layer_tapped_is_hf_eager_bit_for_bit(arch, dtype, padded):
    hf = tiny(arch).to(dtype)
    model, tokens = interp.Model(hf), hf_inputs(padded)
    eager = hf_run(twin(hf, "eager"), tokens)
    names = [f"blocks.{L}.attn.hook_pattern" for L in range(model.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names=names)
    assert torch.equal(logits, eager.logits), f"{arch} {dtype}: logits differ from HF eager"
    for L in range(model.n_layers):
        assert torch.equal(cache["pattern", L], eager.attentions[L]), f"{arch} {dtype}: pattern {L} differs"
    assert hf.config._attn_implementation == "sdpa", "the model's own implementation is never switched"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_one_tapped_layer_leaves_the_others_to_their_own_implementation(arch, dtype, padded):
    hf = tiny(arch).to(dtype)
    model, tokens = interp.Model(hf), hf_inputs(padded)
    plain, eager = hf_run(twin(hf, "sdpa"), tokens), hf_run(twin(hf, "eager"), tokens)
    last = model.n_layers - 1
    with torch.no_grad():
        _, before = model.run_with_cache(tokens, names=[f"blocks.{last}.attn.hook_pattern"] +
                                         [f"blocks.{L}.hook_resid_post" for L in range(last)])
        logits, cache = model.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"])
    for L in range(last):
        assert torch.equal(before["resid_post", L], plain.hidden_states[L + 1]), "layers before a tap are untouched"
    assert torch.equal(cache["pattern", 0], eager.attentions[0])
    assert torch.equal(cache["resid_post", 0], eager.hidden_states[1]), "the tapped layer is HF eager"
    # reference: the plain model with layer 0's output taken from the eager twin; the rest is HF's own
    reference = twin(hf, "sdpa")
    layer = model.arch.module(reference, "layer", 0)
    handle = layer.register_forward_hook(lambda m, a, out: eager.hidden_states[1])
    try:
        expected = hf_run(reference, tokens)
    finally:
        handle.remove()
    assert torch.equal(logits, expected.logits), "untapped layers must run their own implementation and mask"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_residual_sites_leave_the_plain_forward_bitwise_equal(arch, dtype):
    hf = tiny(arch).to(dtype)
    model, tokens = interp.Model(hf), hf_inputs(True)
    plain = hf_run(twin(hf, "sdpa"), tokens)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names=lambda n: "resid" in n or "mlp" in n or "ln" in n)
    assert torch.equal(logits, plain.logits)
    for L in range(model.n_layers - 1):
        assert torch.equal(cache["resid_post", L], plain.hidden_states[L + 1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp32_scores_is_an_explicit_option(dtype):
    hf = tiny("neox").to(dtype)
    model, tokens = interp.Model(hf), hf_inputs(False)
    with torch.no_grad():
        _, default = model.run_with_cache(tokens, names=["blocks.0.attn.hook_attn_scores"])
        _, upcast = model.run_with_cache(tokens, names=["blocks.0.attn.hook_attn_scores"], fp32_scores=True)
    assert default["attn_scores", 0].dtype == dtype, "HF eager takes the scores in the model's dtype"
    assert upcast["attn_scores", 0].dtype == torch.float32
