"""Every example in the RoPE modules' docstrings runs and shows what it says (with `model` = the toy model)."""

from __future__ import annotations

import doctest
import importlib

import pytest

import interp

MODULES = ["interp.rope", *(f"analyses.rope.{m}" for m in (
    "ablate", "circuit", "common", "decomposition", "figures", "heads", "kernel", "learned", "offsets", "parts",
    "probing", "training", "validate"))]


@pytest.fixture(scope="module")
def toy_model():
    return interp.load("toy")


@pytest.mark.parametrize("name", [*MODULES, "analyses.rope"])
def test_docstring_examples_run(name, toy_model):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, name, globs={**vars(module), "model": toy_model})
    if name == "interp.rope":  # its module docstring sketches shapes with placeholder tensors
        tests = [t for t in tests if t.name != "interp.rope"]
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {name} (output above)"
