"""Fixtures shared by the analyses' tests."""

from __future__ import annotations

import pytest

import interp
from analyses.sweep import reuse


@pytest.fixture
def loads(monkeypatch):
    """Count every checkpoint a sweep reads: whole (interp.load) or as tensors swapped into a live model."""
    calls = []
    real_load, real_find = interp.load, reuse.find

    def counting(name, revision=None, **kwargs):
        calls.append((name, revision))
        return real_load(name, revision=revision, **kwargs)

    def finding(name, revision, template):
        found = real_find(name, revision, template)
        if found is not None:
            calls.append((name, revision))
        return found

    monkeypatch.setattr(interp, "load", counting)
    monkeypatch.setattr(reuse, "find", finding)
    return calls
