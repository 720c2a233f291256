"""Every analysis runs unchanged on GPT-2 as on Pythia: a tiny random model of each architecture, checked
against the plain Hugging Face model, and the embedded toy-gpt2 beside toy-2l."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import kl_div

import interp
from analyses.attention import detect_heads, pattern_scores, patterns, repeated_random_tokens
from analyses.cli import main
from analyses.lens import TunedLens, logit_lens, train_tuned_lens
from interp import toy
from tests.conftest import tiny, twin, word_tokenizer
from tests.toy.conftest import require_checkpoints

ARCHS = ["neox", "gpt2"]


def readout(hf):
    """The final LayerNorm and unembedding of a plain HF model, spelled out independently of the library."""
    if hf.config.model_type == "gpt2":
        return hf.transformer.ln_f, hf.lm_head
    return hf.gpt_neox.final_layer_norm, hf.lm_head


@pytest.fixture(scope="module", params=ARCHS)
def model(request) -> interp.Model:
    return interp.Model(tiny(request.param, seed=3), word_tokenizer(), name=f"tiny-{request.param}")


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(4))


def eager_attentions(model: interp.Model, ids: torch.Tensor) -> torch.Tensor:
    """(layer, batch, head, q_pos, k_pos) from an eager copy of the HF model."""
    with torch.no_grad():
        return torch.stack(twin(model.hf)(input_ids=ids, output_attentions=True).attentions)


def test_patterns_are_the_hf_eager_attention(model, ids):
    torch.testing.assert_close(patterns(model, ids).pattern, eager_attentions(model, ids), atol=1e-6, rtol=1e-5)


def test_detectors_score_the_hf_attention(model):
    ids = repeated_random_tokens(model, seq_len=12, batch=3, seed=1)
    expected = pattern_scores(eager_attentions(model, ids), ids)
    got = detect_heads(model, seq_len=12, batch=3, seed=1)
    for name, values in expected.items():
        torch.testing.assert_close(got.scores[name], values, atol=1e-5, rtol=1e-5, msg=name)


def test_logit_lens_decodes_hf_hidden_states(model, ids):
    with torch.no_grad():
        out = model.hf(input_ids=ids, output_hidden_states=True)
        norm, unembed = readout(model.hf)
        # hidden_states[L] enters block L (position embedding included on GPT-2); the model decodes the last
        layers = [unembed(norm(h)).log_softmax(-1) for h in out.hidden_states[:-1]]
        full = torch.stack([*layers, out.logits.log_softmax(-1)])  # (layer, batch, pos, d_vocab)
    result = logit_lens(model, ids, top_k=3)
    kl = kl_div(full, full[-1], log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(result.kl, kl, atol=1e-5, rtol=1e-4)
    assert torch.equal(result.top_ids, full.topk(3, dim=-1).indices), "did the lens read the position embedding?"
    assert result.kl[-1].max() < 1e-6 and result.agrees[-1].all()


def test_tuned_lens_trains_and_keeps_the_last_layer_the_model(model, ids):
    stream = torch.randint(1, 128, (30,), generator=torch.Generator().manual_seed(2)).repeat(10)
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    lens = train_tuned_lens(model, stream, steps=6, batch_size=2, seq_len=16, progress=False)
    assert lens.weight.abs().sum() > 0 and lens.info.n_layers == model.n_layers
    assert all(torch.equal(v, before[k]) for k, v in model.hf.state_dict().items()), "the model changed"
    assert all(p.grad is None for p in model.hf.parameters()), "gradients were left on the model"
    tuned = logit_lens(model, ids, lens=lens)
    assert tuned.kl[-1].max() < 1e-6 and not torch.allclose(tuned.kl[0], logit_lens(model, ids).kl[0])
    assert isinstance(lens, TunedLens)


@pytest.mark.parametrize("arch", ARCHS)
def test_commands_run_on_a_saved_model_of_each_architecture(arch, tmp_path):
    path = tmp_path / arch
    tiny(arch, seed=5).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    common = ["--model", str(path), "--prompt", "t5 t9 t5 t9", "--no-png"]
    assert main(["attention", *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["logit-lens", *common, "--out", str(tmp_path / "l")]) == 0
    assert (tmp_path / "a" / "head_scores.csv").is_file() and (tmp_path / "l" / "logit_lens.csv").is_file()


# ---- the embedded toy-gpt2, beside toy-2l ---------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_gpt2() -> interp.Model:
    require_checkpoints("toy-gpt2")
    return interp.load("toy-gpt2")


def test_toy_gpt2_loads_as_gpt2_with_the_suites_tokenizer(toy_gpt2):
    assert toy_gpt2.arch.kind == "gpt2" and not toy_gpt2.parallel_residual and toy_gpt2.rotary_dim == 0
    toy_2l = interp.load("toy-2l")
    assert (toy_gpt2.d_model, toy_gpt2.n_layers, toy_gpt2.n_heads, toy_gpt2.n_ctx, toy_gpt2.d_vocab) == (
        toy_2l.d_model, toy_2l.n_layers, toy_2l.n_heads, toy_2l.n_ctx, toy_2l.d_vocab)
    prompt = "def f(x):\n    return x"
    assert torch.equal(toy_gpt2.to_tokens(prompt).ids, toy_2l.to_tokens(prompt).ids)


def test_toy_gpt2_analyses_match_hf_and_the_card(toy_gpt2):
    ids = repeated_random_tokens(toy_gpt2, seq_len=24, batch=2)
    torch.testing.assert_close(patterns(toy_gpt2, ids).pattern, eager_attentions(toy_gpt2, ids), atol=1e-5, rtol=1e-4)
    scores = detect_heads(toy_gpt2)
    assert not toy.HEADS["toy-gpt2"]["induction"], "the card names induction heads: check them here"
    assert scores.scores["induction"].max() < 0.1, "an induction head the model card does not name"
    result = logit_lens(toy_gpt2, "def f(x): return x")
    assert result.kl[-1].max() < 1e-5 and result.kl[0].mean() > result.kl[-1].mean()
