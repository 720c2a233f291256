"""Any analysis across training checkpoints: load each revision, run a function, collect one table.

    >>> from analyses.attention_maps import detect_heads
    >>> result = sweep("toy", lambda m: detect_heads(m).to_frame())
    >>> result.figure("induction", by="head")      # one line per head across training steps

Models are loaded one at a time and dropped before the next, so memory holds one checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

import interp
from interp.errors import InputError

Analysis = Callable[[interp.Model], "pd.DataFrame | dict[str, float]"]


@dataclass(frozen=True)
class Sweep:
    """One row per checkpoint (and per row of the analysis), with `revision` and `step` columns."""

    model: str
    frame: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def figure(self, column: str, by: str | Sequence[str] | None = None, reduce: str = "max"):
        """`column` against training step; one line per group of `by`, or `reduce` over rows per step."""
        import plotly.graph_objects as go

        if column not in self.frame:
            raise InputError(f"No column {column!r}; columns: {[c for c in self.frame if c not in ('step',)]}.")
        fig = go.Figure()
        if by is None:
            series = self.frame.groupby("step")[column].agg(reduce)
            fig.add_scatter(x=series.index.tolist(), y=series.values, mode="lines+markers", name=f"{reduce} {column}")
        else:
            for key, group in self.frame.groupby(by):
                label = _label(by, key)
                fig.add_scatter(x=group["step"], y=group[column], mode="lines+markers", name=label,
                                hovertemplate=f"{label}<br>step %{{x}}<br>{column} %{{y:.3f}}<extra></extra>")
        # one slot per checkpoint, in training order: log-spaced early steps stay readable
        order = self.frame.drop_duplicates("step").sort_values("step")["step"].tolist()
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, title="training step")
        fig.update_layout(title=f"{column} across checkpoints of {self.model}", yaxis_title=column,
                          template="plotly_white")
        return fig


def sweep(name: str, analysis: Analysis, revisions: Sequence[str] | None = None, **load_kwargs) -> Sweep:
    """Run `analysis(model)` at every checkpoint in `revisions` (all of the model's by default)."""
    revisions = list(revisions) if revisions is not None else interp.suite.revisions(name)
    if not revisions:
        raise InputError("revisions is empty: pass None for every checkpoint, or a list like ['step0', 'main'].")
    frames = []
    for revision in revisions:
        model = interp.load(name, revision=revision, **load_kwargs)
        out = analysis(model)
        frame = out.copy() if isinstance(out, pd.DataFrame) else pd.DataFrame([out])
        frame.insert(0, "step", step_of(revision, name))
        frame.insert(0, "revision", revision)
        frames.append(frame)
        del model
    return Sweep(name, pd.concat(frames, ignore_index=True))


def step_of(revision: str, name: str) -> int:
    """Training step of a revision; `main` is the model's last checkpoint."""
    if revision == "main":
        revision = interp.suite.revisions(name)[-1]
    match = re.fullmatch(r"step(\d+)", revision)
    if not match:
        raise InputError(f"Revision {revision!r} is not 'main' or 'step<N>'.")
    return int(match.group(1))


def _label(by: str | Sequence[str], key) -> str:
    if isinstance(by, str):
        return f"{by} {key}"
    if tuple(by) == ("layer", "head"):
        return f"L{key[0]}H{key[1]}"
    return ", ".join(f"{b}={k}" for b, k in zip(by, key, strict=True))
