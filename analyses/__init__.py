"""Analyses on top of `interp`: pure functions over a model or cache that return result dataclasses."""
