"""The over-training part of the HTML report: heads, RoPE use and the induction circuit across checkpoints.

    secs, tables = sections("toy", "all", store="report/store")   # analyses.export.Section objects

Each section comes from a sweep (so a results store makes a second report free); RoPE use and
the circuit appear when their subpackages (`analyses.rope`, `analyses.patching`) are installed.

    >>> frame = pd.DataFrame({"model": "m", "layer": 1, "head": 0, "step": [0, 10, 100],
    ...                       "induction": [0.0, 0.3, 0.4], "prev_token": [0.1, 0.9, 0.9]})
    >>> formed_at(frame, ["induction", "prev_token"])[["value", "head", "final", "formed_at_step"]].values.tolist()
    [['induction', 'L1H0', 0.4, 10], ['prev_token', 'L1H0', 0.9, 10]]
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analyses.sweep.registry import available

DETECTORS = ("induction", "prev_token", "duplicate_token", "first_token")


def sections(name: str, revisions="all", *, dtype=None, device=None, store=None,
             progress: bool = False) -> tuple[list, dict]:
    """(sections, tables) for heads, RoPE use and the induction circuit across `revisions` of `name`."""
    from analyses.sweep.core import sweep

    options = {"dtype": dtype, "device": device, "store": store, "progress": progress}
    heads = sweep(name, "attention", revisions, **options)
    out, tables = [_heads_section(heads)], {"sweep": heads.to_frame()}
    if available("rope"):
        rope = sweep(name, "rope", revisions, **options)
        out.append(_rope_section(rope))
        tables["rope_sweep"] = rope.to_frame()
    if available("circuit"):
        from analyses.sweep.circuits import circuits_over_training

        circuits = circuits_over_training(name, revisions, **options)
        out += _circuit_sections(circuits)
        tables["circuit_sweep"] = circuits.to_frame()
    return out, tables


def formed_at(frame: pd.DataFrame, values: Sequence[str], fraction: float = 0.5) -> pd.DataFrame:
    """Per value: the best head at the last checkpoint, its score, and the first step it reached `fraction` of it."""
    last = frame[frame["step"] == frame["step"].max()]
    rows = []
    for value in values:
        best = last.loc[last[value].idxmax()]
        track = frame[(frame["layer"] == best["layer"]) & (frame["head"] == best["head"])].sort_values("step")
        reached = track[track[value] >= fraction * best[value]]
        rows.append({"value": value, "head": f"L{best['layer']}H{best['head']}", "final": float(best[value]),
                     "formed_at_step": int(reached["step"].iloc[0])})
    return pd.DataFrame(rows)


def _heads_section(heads):
    from analyses.export import Section

    frame = heads.to_frame()
    tables = [formed_at(g, [d for d in DETECTORS if d in g]).assign(model=m) for m, g in frame.groupby("model")]
    return Section("Heads across training", "Each head's detector scores at every saved checkpoint (log step axis; "
                   "the menu switches detector). The table names the best head of each kind at the last "
                   "checkpoint and the first step at which it reached half its final score.",
                   heads.figures()[0], pd.concat(tables, ignore_index=True))


def _rope_section(rope):
    from analyses.export import Section

    frame = rope.to_frame()
    last, first = frame[frame["step"] == frame["step"].max()], frame[frame["step"] == frame["step"].min()]
    table = last[["model", "name", "label", "rotary_share"]].merge(
        first[["model", "name", "label", "rotary_share"]], on=["model", "name"], suffixes=("", "_at_start"))
    return Section("RoPE use across training", "The share of each head's attention-score variance that comes from "
                   "its rotary dimensions, at every checkpoint (the menu shows the positional index and the rest "
                   "of the RoPE head table). Heads that turn positional during training stand out.",
                   rope.figures()[0], table)


def _circuit_sections(circuits) -> list:
    from analyses.export import Section

    columns = ["model", "step", "metric_gap", "circuit_size", "circuit_faithfulness", "final_faithfulness",
               "jaccard_previous"]
    summary = circuits.to_frame()
    figures = circuits.figures()
    return [Section("The induction circuit across training", "At each checkpoint, EAP-IG edge scores on the "
                    "induction task and the fewest top edges keeping 80% of the clean-minus-corrupt logit "
                    "difference (circuit size); the final checkpoint's circuit evaluated exactly at every "
                    "checkpoint (final faithfulness); and the Jaccard similarity of consecutive circuits. Before "
                    "the model does the task, metric_gap is near 0 and faithfulness means little.",
                    figures[0], summary[[c for c in columns if c in summary]]),
            Section("The circuit at each checkpoint", "Nodes by layer (embedding at the bottom, logits on top), edge "
                    "width by |score|, colour by what the edge feeds (a head's q, k or v, an MLP, the logits); the "
                    "slider picks the checkpoint.", figures[1])]
