"""Fixtures shared by the analyses' tests."""

from __future__ import annotations

import pytest

import interp
from analyses.sweep import reuse


@pytest.fixture
def loads(monkeypatch):
    """Count every checkpoint a sweep reads: whole (interp.load) or as tensors swapped into a live model."""
    calls = []
    real_load, real_stage = interp.load, reuse.stage

    def counting(name, revision=None, **kwargs):
        calls.append((name, revision))
        return real_load(name, revision=revision, **kwargs)

    def staging(name, revision, template):
        staged = real_stage(name, revision, template)
        if staged is not None:
            calls.append((name, revision))
        return staged

    monkeypatch.setattr(interp, "load", counting)
    monkeypatch.setattr(reuse, "stage", staging)
    return calls
