"""Tuned lens: starts as the logit lens, keeps the last layer equal to the model, trains seeded,
round-trips through safetensors, leaves the model untouched, and beats the logit lens on held-out
text on the toy models."""

from __future__ import annotations

import json

import pytest
import torch

import interp
from analyses.lens import TunedLens, compare_lenses, logit_lens, token_stream, train_tuned_lens
from tests.conftest import assert_untouched, hook_state, tiny_hf, word_tokenizer


@pytest.fixture
def stream() -> torch.Tensor:
    """A 1-D token stream with structure to learn: a short random sequence repeated."""
    g = torch.Generator().manual_seed(2)
    return torch.randint(1, 128, (40,), generator=g).repeat(20)


def train(model, stream, **kwargs):
    options = {"steps": 12, "batch_size": 4, "seq_len": 16, "lr": 3e-3, "progress": False}
    return train_tuned_lens(model, stream, **{**options, **kwargs})


def test_an_untrained_tuned_lens_is_the_logit_lens(model, ids):
    plain, tuned = logit_lens(model, ids), logit_lens(model, ids, lens=TunedLens.for_model(model))
    assert tuned.lens == "tuned" and plain.lens == "logit"
    torch.testing.assert_close(tuned.kl, plain.kl, equal_nan=True)
    assert torch.equal(tuned.top_ids, plain.top_ids)


def test_training_lowers_kl_and_keeps_the_last_layer_the_model(model, ids, stream):
    lens = train(model, stream)
    assert lens.weight.abs().sum() > 0 and lens.bias.abs().sum() > 0, "translators were trained"
    own = model(ids).log_softmax(-1)
    result = logit_lens(model, ids, lens=lens)
    assert result.kl[-1].max() < 1e-6, "the last layer must still be the model's own output"
    assert torch.equal(result.top_ids[-1, ..., 0], own.argmax(-1))
    windows = stream[:4 * 16].reshape(4, 16)
    frame = compare_lenses(model, windows, lens).to_frame().set_index(["lens", "layer"])
    for layer in range(model.n_layers):
        assert frame.loc[("tuned", layer), "kl"] < frame.loc[("logit", layer), "kl"], \
            f"layer {layer}: training did not lower KL on its own training text"
    assert lens.info.steps == 12 and lens.info.tokens_seen == 12 * 4 * 16
    assert len(lens.info.layer_losses) == model.n_layers and lens.info.loss > 0


def test_training_is_seeded(model, stream):
    a, b = train(model, stream, steps=4), train(model, stream, steps=4)
    c = train(model, stream, steps=4, seed=1)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


def test_training_leaves_the_model_untouched(hf_model, stream):
    model = interp.Model(hf_model, word_tokenizer())
    before = hook_state(hf_model)
    weights = {k: v.clone() for k, v in hf_model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in hf_model.named_parameters()}
    train(model, stream, steps=3)
    assert_untouched(hf_model, before, weights)
    assert flags == {n: p.requires_grad for n, p in hf_model.named_parameters()}
    assert all(p.grad is None for p in hf_model.parameters()), "gradients leaked into the model"


def test_save_and_load_round_trip(model, ids, stream, tmp_path):
    lens = train(model, stream, steps=3)
    path = lens.save(tmp_path / "lens")
    assert sorted(p.name for p in path.iterdir()) == ["tuned_lens.json", "tuned_lens.safetensors"]
    info = json.loads((path / "tuned_lens.json").read_text())
    assert info["model"] == "tiny" and info["d_model"] == 64 and info["n_layers"] == 3
    assert info["steps"] == 3 and info["loss"] == pytest.approx(lens.info.loss)
    loaded = TunedLens.load(path)
    assert loaded.info == lens.info
    assert torch.equal(loaded.weight, lens.weight) and torch.equal(loaded.bias, lens.bias)
    torch.testing.assert_close(logit_lens(model, ids, lens=loaded).kl,
                               logit_lens(model, ids, lens=lens).kl, equal_nan=True)
    assert TunedLens.load(path / "tuned_lens.safetensors").info == lens.info


def test_errors_name_the_fix(model, ids, stream, tmp_path):
    other = interp.Model(tiny_hf(num_hidden_layers=2), word_tokenizer(), name="two-layer")
    with pytest.raises(interp.InputError, match="train_tuned_lens"):
        logit_lens(other, ids, lens=TunedLens.for_model(model))
    with pytest.raises(FileNotFoundError, match="tuned-lens train"):
        TunedLens.load(tmp_path / "nowhere")
    with pytest.raises(interp.InputError, match="more text"):
        train(model, stream[:1])


def test_text_becomes_one_stream_with_end_of_text(model):
    ids = token_stream(model, ["t5 t6", "t7"])
    assert ids.tolist() == [5, 6, 0, 7, 0]


def test_comparison_frame_and_figure(model, ids, stream):
    comparison = compare_lenses(model, ids, train(model, stream, steps=2))
    frame = comparison.to_frame()
    assert set(frame["lens"]) == {"logit", "tuned"} and len(frame) == 2 * (model.n_layers + 1)
    fig = comparison.figure()
    assert [d.name for d in fig.data] == ["logit lens"] * 2 + ["tuned lens"] * 2
    assert fig.data[0].xaxis == "x" and fig.data[1].xaxis == "x2", "KL and CE side by side"


def toy_or_skip(name: str) -> interp.Model:
    """A toy suite model, or a skip while the suite is not installed."""
    from interp import toy

    if toy.resolve(name) is None:
        pytest.skip(f"the toy suite ({name}) is not installed")
    try:
        return interp.load(name)
    except (FileNotFoundError, interp.WeightsNotFoundError, interp.UnknownModelError) as err:
        pytest.skip(f"{name} cannot be loaded: {err}")


def heldout_text() -> tuple[list[str], str]:
    """The Pile sample beside the project when present, else Python's held-out doc topics."""
    from interp.toy.text import split_topics
    from tests.conftest import SHARED

    pile = SHARED / "pile-sample.jsonl"
    if pile.is_file():
        return [json.loads(line)["text"] for line in pile.read_text(encoding="utf-8").splitlines() if line], "pile"
    return split_topics()[1], "pydoc held out"


@pytest.mark.parametrize("name", ["toy-2l", "toy-4l"])
def test_tuned_lens_beats_the_logit_lens_on_held_out_text(name):
    from analyses.lens import default_text

    model = toy_or_skip(name)
    docs, _ = default_text()
    lens = train_tuned_lens(model, docs, steps=40, batch_size=8, seq_len=128, lr=3e-3,
                            progress=False)
    text, which = heldout_text()
    held = token_stream(model, text)
    windows = held[:16 * 128].reshape(-1, 128)  # the Pile sample alone is ~20k toy tokens
    frame = compare_lenses(model, windows, lens).to_frame().set_index(["lens", "layer"])
    for layer in range(model.n_layers):
        tuned, plain = frame.loc[("tuned", layer), "kl"], frame.loc[("logit", layer), "kl"]
        assert tuned < plain, \
            f"{name} layer {layer} on {which}: tuned KL {tuned:.3f} >= logit {plain:.3f}"
    assert frame.loc[("tuned", model.n_layers), "kl"] < 1e-6


def test_cli_trains_saves_and_decodes_with_the_lens(tmp_path):
    import pandas as pd

    from analyses.cli import main

    model_dir, lens_dir, out = tmp_path / "tiny", tmp_path / "lens", tmp_path / "out"
    tiny_hf(seed=4).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"t{i % 40 + 1}" for i in range(400)))
    assert main(["tuned-lens", "train", "--model", str(model_dir), "--out", str(lens_dir),
                 "--text", str(text), "--steps", "3", "--seq-len", "16", "--batch-size", "2"]) == 0
    info = json.loads((lens_dir / "tuned_lens.json").read_text())
    assert info["steps"] == 3 and info["text"] == str(text) and info["n_layers"] == 3
    assert main(["logit-lens", "--model", str(model_dir), "--prompt", "t5 t9 t14",
                 "--tuned", str(lens_dir), "--out", str(out), "--no-png"]) == 0
    frame = pd.read_csv(out / "logit_lens.csv")
    assert set(frame["lens"]) == {"logit", "tuned"}
    assert json.loads((out / "logit_lens.json").read_text())["tuned_lens"]["steps"] == 3
