"""Tokens: Pythia conventions (no BOS), left padding, readable strings, the real GPT-NeoX tokenizer."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.text import render_token, visible
from tests.conftest import SHARED, tiny_hf


@pytest.fixture
def neox_model(neox_tokenizer):
    return interp.Model(tiny_hf(vocab_size=50304), neox_tokenizer)


def test_hello_i_am(neox_model):
    tokens = neox_model.to_tokens("Hello, I am")
    assert tokens.ids.tolist() == [[12092, 13, 309, 717]], "no BOS is prepended by default"
    assert neox_model.to_tokens("Hello, I am", prepend_bos=True).ids.tolist() == [[0, 12092, 13, 309, 717]]
    assert neox_model.to_str_tokens("Hello, I am") == ["Hello", ",", " I", " am"]


def test_reference_tokenizations(neox_model):
    path = SHARED / "neox-tokenization-reference.txt"
    if not path.exists():
        pytest.skip("../shared/data/neox-tokenization-reference.txt is absent")
    lines = [line.rsplit(" => ", 1) for line in path.read_text().splitlines() if " => " in line]
    assert len(lines) >= 90
    for text, ids in lines:
        expected = [int(i) for i in ids.split(",")]
        assert neox_model.to_tokens(text).ids[0].tolist() == expected, text
        assert "".join(neox_model.to_str_tokens(text)) == text, "str tokens must concatenate back to the text"


def test_readable_str_tokens(neox_model):
    text = "def f():\n    return 'é'"
    pieces = neox_model.to_str_tokens(text)
    assert "".join(pieces) == text and "\n" in "".join(pieces)
    assert render_token("Ġthe") == " the" and render_token("Ċ") == "\n"
    assert visible(" the\n") == "·the↵"
    partial = render_token(neox_model.tokenizer.convert_ids_to_tokens([12105])[0])  # part of a multibyte char?
    assert isinstance(partial, str)


def test_batches_are_left_padded_with_masks(neox_model):
    tokens = neox_model.to_tokens(["Hello, I am", "Hi"])
    assert tokens.ids.shape == (2, 4) and tokens.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 0, 1]]
    assert tokens.position_ids.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]]
    assert tokens.lengths == [4, 1] and len(tokens) == 2
    assert neox_model.to_string(tokens) == ["Hello, I am", "Hi"]
    assert neox_model.to_str_tokens(tokens)[1][-1] == "Hi"


def test_ids_pass_through(model):
    ids = torch.tensor([3, 4, 5])
    assert model.tokens(ids).ids.tolist() == [[3, 4, 5]] and model.tokens([3, 4]).ids.shape == (1, 2)
