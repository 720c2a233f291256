"""Every example in the RoPE modules' docstrings runs on its own and shows what it says."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["interp.rope", *(f"analyses.rope.{m}" for m in (
    "ablate", "circuit", "common", "decomposition", "figures", "heads", "kernel", "learned", "offsets", "parts",
    "probing", "training", "validate"))]


@pytest.mark.parametrize("name", [*MODULES, "analyses.rope"])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, name, globs=dict(vars(module)))
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {name} (output above)"
