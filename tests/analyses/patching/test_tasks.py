"""Tasks: the induction corruption, IOI and greater-than with the real tokenizer, and the checks on user pairs."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

import interp
from analyses.patching import tasks
from analyses.patching.errors import TaskError
from interp.errors import InterpError

from .helpers import tiny_model


@pytest.fixture(scope="module")
def toy():
    return interp.load("toy")


@pytest.fixture(scope="module")
def neox_model(neox_tokenizer):
    """A one-layer random model with Pythia's vocabulary and the real GPT-NeoX tokenizer."""
    config = GPTNeoXConfig(vocab_size=50304, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64)
    return interp.Model(GPTNeoXForCausalLM(config).eval(), neox_tokenizer, name="neox-vocab")


def test_induction_corrupts_the_token_before_the_answers_first_occurrence(toy):
    task = tasks.induction(toy, n_prompts=5, length=9, repeat=4, seed=3)
    clean, corrupt = task.clean.ids, task.corrupt.ids
    assert clean.shape == (5, 13)
    assert torch.equal(clean[:, 9:], clean[:, :4])  # the block's first 4 tokens, repeated
    changed = (clean != corrupt).nonzero()
    assert changed[:, 1].tolist() == [3] * 5  # only the token before the answer's first occurrence
    assert torch.equal(clean[:, 4], task.answer)  # the answer follows the last token's first occurrence
    assert torch.equal(clean[:, -1], clean[:, 3])
    for row, wrong, fresh in zip(clean, task.wrong, corrupt[:, 3], strict=True):
        assert wrong not in row and fresh not in row and len(set(row[:9].tolist())) == 9


def test_the_toy_model_does_induction_and_the_corruption_breaks_it(toy):
    from analyses.patching.metrics import LogitDiff

    task = tasks.induction(toy, n_prompts=8)
    metric = LogitDiff.of(task)
    assert metric(toy(task.clean)).mean() > 5 > 1 > metric(toy(task.corrupt)).mean()


def test_different_token_lengths_are_refused_with_the_fix(toy):
    with pytest.raises(TaskError, match=r"clean prompt has \d+ tokens.*aligned token for token") as err:
        tasks.make(toy, clean=["The cat sat on the mat"], corrupt=["A dog"], answer=[5], wrong=[6])
    assert isinstance(err.value, InterpError)


def test_answers_must_be_single_tokens():
    model = tiny_model()
    with pytest.raises(TaskError, match=r"'t5 t6' is not a single token.*pick a word that is one token"):
        tasks.make(model, clean=["t1 t2 t3"], corrupt=["t1 t4 t3"], answer="t5 t6", wrong="t7")
    task = tasks.make(model, clean=["t1 t2 t3"], corrupt=["t1 t4 t3"], answer="t5", wrong="t7")
    assert task.answer.tolist() == [5] and task.wrong.tolist() == [7]
    with pytest.raises(TaskError, match="2 answer tokens for 1 prompts"):
        tasks.make(model, clean=["t1 t2 t3"], corrupt=["t1 t4 t3"], answer=[5, 6], wrong=[7])


def test_left_padded_pairs_align_per_prompt():
    model = tiny_model()
    task = tasks.make(model, clean=["t1 t2 t3 t4", "t5 t6"], corrupt=["t1 t9 t3 t4", "t5 t8"],
                      answer=["t3", "t6"], wrong=["t4", "t2"])
    assert task.clean.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert torch.equal(task.clean.attention_mask, task.corrupt.attention_mask)
    with pytest.raises(TaskError, match="Prompt 1"):
        tasks.make(model, clean=["t1 t2 t3 t4", "t5 t6"], corrupt=["t1 t9 t3 t4", "t5 t8 t9"], answer=[3, 6],
                   wrong=[4, 2])


def test_ioi_with_the_real_tokenizer(neox_model):
    task = tasks.ioi(neox_model, n_prompts=10, seed=1)
    tok = neox_model.tokenizer
    for i in range(10):
        clean = tok.decode(task.clean.ids[i][task.clean.attention_mask[i].bool()])
        corrupt = tok.decode(task.corrupt.ids[i][task.corrupt.attention_mask[i].bool()])
        io, s = tok.decode([task.answer[i]]), tok.decode([task.wrong[i]])
        assert clean.count(io) == 1 and clean.count(s) == 2, clean  # the subject repeats, the IO does not
        names = [w.strip(",") for w in corrupt.split() if w.strip(",") in tasks.NAMES]
        assert len(names) == 3 == len(set(names)) and io.strip() not in names and s.strip() not in names
    assert torch.equal(task.clean.attention_mask, task.corrupt.attention_mask)


def test_greater_than_with_the_real_tokenizer(neox_model):
    task = tasks.greater_than(neox_model, n_prompts=10, seed=2)
    tok = neox_model.tokenizer
    for i in range(10):
        clean = tok.convert_ids_to_tokens(task.clean.ids[i][task.clean.attention_mask[i].bool()].tolist())
        corrupt = tok.convert_ids_to_tokens(task.corrupt.ids[i][task.corrupt.attention_mask[i].bool()].tolist())
        differ = [(a, b) for a, b in zip(clean, corrupt, strict=True) if a != b]
        assert len(differ) == 1 and differ[0][1] == "01", differ  # the year's two digits became 01
        yy = int(differ[0][0])
        good = {int(tok.decode([v])) for v in (task.signs[i] > 0).nonzero().flatten().tolist()}
        assert good == set(range(yy + 1, 100))
        assert int(tok.decode([task.answer[i]])) > yy > int(tok.decode([task.wrong[i]]))
    assert task.metric == "prob_diff"


def test_ioi_needs_a_tokenizer_with_one_token_names(toy):
    with pytest.raises(TaskError, match="single tokens"):
        tasks.ioi(toy)
