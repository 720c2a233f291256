"""Circuits over training: EAP-IG at every checkpoint, its size at 80% faithfulness, and how it changes.

    result = circuits_over_training("toy", "log", store="runs/store")    # needs analyses.patching
    result.to_frame()      # per checkpoint: circuit_size, final_faithfulness, jaccard_previous, metric_gap
    result.figure()        # the circuit graph at each checkpoint, a slider over steps

    >>> edges = pd.DataFrame({"model": "toy-2l", "revision": ["step1", "step2"], "step": [1, 2], "tokens_seen": 0,
    ...                       "sender": "L0H1", "receiver": "L1H0.k", "in_circuit": [True, True],
    ...                       "circuit_size": 1, "circuit_faithfulness": 0.9, "metric_gap": 2.0})
    >>> summary(edges)["jaccard_previous"].tolist()
    [nan, 1.0]

At each checkpoint (`analyses.patching`, imported only here): the task's clean/corrupt prompts
(induction on repeated random tokens by default), EAP-IG edge scores, and a faithfulness curve of
the top-n circuits; the circuit is the smallest top-n whose faithfulness reaches `threshold` (0.8).
Then the final checkpoint's circuit is evaluated exactly at every checkpoint, and consecutive
checkpoints' edge sets are compared by Jaccard similarity. Every step goes through the results
store, so a rerun recomputes nothing. Faithfulness divides by M(clean) - M(corrupt), which is
near 0 before the model does the task: read `metric_gap` beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from analyses.sweep.registry import Analysis, figures_from

TASK_DEFAULTS = {"task": "induction", "n_prompts": 8, "seed": 0}
CIRCUIT_DEFAULTS = {**TASK_DEFAULTS, "steps": 5, "points": 32, "threshold": 0.8}


def circuit() -> Analysis:
    """EAP-IG edge scores per checkpoint, with the circuit reaching `threshold` faithfulness marked."""
    return Analysis("circuit", _circuit, CIRCUIT_DEFAULTS,
                    figures=figures_from("circuit_figures", "analyses.sweep.circuit_figures"),
                    description="EAP-IG circuit per checkpoint: edge scores, circuit size at 80% faithfulness")


def transfer() -> Analysis:
    """Faithfulness and completeness of one given edge set at each checkpoint."""
    return Analysis("circuit-transfer", _transfer, {**TASK_DEFAULTS, "edges": ()}, data=("edges",),
                    description="one circuit's faithfulness and completeness at every checkpoint")


def patch() -> Analysis:
    """Activation patching of every head's output (z), summed over positions, on the task."""
    return Analysis("patch", _patch, TASK_DEFAULTS, figures=figures_from("patch_figures"),
                    description="activation patching per head on the induction task")


def _task(model, task: str, n_prompts: int, seed: int):
    from analyses.patching import tasks

    if task != "induction":
        from interp.errors import InputError

        raise InputError(f"task={task!r}: sweeps build the 'induction' task on any model; other tasks need a "
                         "real tokenizer and prompts, so pass a function of the model instead.")
    return tasks.induction(model, n_prompts=n_prompts, seed=seed)


def _circuit(model, *, task, n_prompts, seed, steps, points, threshold) -> pd.DataFrame:
    """One row per edge: sender, receiver, score, rank, in_circuit, and the checkpoint's circuit numbers."""
    from analyses.patching import eap_ig, faithfulness_curve

    t = _task(model, task, n_prompts, seed)
    scores = eap_ig(model, t, steps=steps)
    curve = faithfulness_curve(model, t, scores, points=points, progress=False)
    size = curve.smallest(threshold)
    frame = scores.to_frame().rename(columns={"effect": "score", "effect_normalized": "score_normalized"})
    rank = frame["score"].abs().rank(ascending=False, method="first").astype(int)
    curve_frame = curve.to_frame().set_index("n_edges")["faithfulness"]
    return frame.assign(rank=rank, in_circuit=rank <= (size or 0), circuit_size=size,
                        circuit_faithfulness=float(curve_frame.get(size, float("nan"))) if size else float("nan"),
                        clean=curve.provenance.clean, corrupt=curve.provenance.corrupt,
                        metric_gap=curve.provenance.clean - curve.provenance.corrupt)


def _transfer(model, *, task, n_prompts, seed, edges) -> pd.DataFrame:
    from analyses.patching import evaluate_circuit

    result = evaluate_circuit(model, _task(model, task, n_prompts, seed), [tuple(e) for e in edges])
    prov = result.provenance
    return pd.DataFrame([{"n_edges": result.n_edges, "faithfulness": result.faithfulness,
                          "completeness": result.completeness, "metric_gap": prov.clean - prov.corrupt}])


def _patch(model, *, task, n_prompts, seed) -> pd.DataFrame:
    from analyses.patching import activation_patch

    frame = activation_patch(model, _task(model, task, n_prompts, seed), sites=["z"], per_position=False,
                             progress=False).to_frame()
    return frame.drop(columns=[c for c in ("position",) if c in frame])


@dataclass(frozen=True)
class CircuitTraining:
    """Edge scores at every checkpoint, and per checkpoint: circuit size, the final circuit's faithfulness, Jaccard."""

    edges: pd.DataFrame  # model, revision, step, sender, receiver, score, rank, in_circuit, ...
    summary: pd.DataFrame  # one row per checkpoint
    sweeps: tuple = ()  # the Sweep results behind it (discovery, then transfer per model)

    def to_frame(self) -> pd.DataFrame:
        return self.summary.copy()

    def table(self) -> pd.DataFrame:
        """One row per checkpoint and edge, with the checkpoint's summary numbers beside it."""
        extra = [c for c in self.summary if c not in self.edges or c in ("model", "revision")]
        return self.edges.merge(self.summary[extra], on=["model", "revision"], how="left")

    def figure(self):
        """The circuit graph at each checkpoint, with a slider over training steps."""
        from analyses.sweep.circuit_figures import circuit_slider

        return circuit_slider(self.edges)

    def figures(self) -> list:
        """Circuit size, the final circuit's faithfulness and Jaccard over training; the graph with a slider."""
        from analyses.sweep.circuit_figures import circuit_summary

        return [circuit_summary(self.summary), self.figure()]


def circuits_over_training(models: str | Sequence[str], revisions="all", *, params: dict | None = None,
                           **sweep_kwargs) -> CircuitTraining:
    """Circuit discovery at every checkpoint, then the final circuit evaluated at each (two sweeps, one store)."""
    from analyses.sweep.core import sweep
    from analyses.sweep.registry import analysis

    params = dict(params or {})
    found = sweep(models, analysis("circuit"), revisions, params=params, **sweep_kwargs)
    edges = found.to_frame()
    task_params = {k: v for k, v in params.items() if k in TASK_DEFAULTS}
    frames, sweeps = [], [found]
    for model, group in edges.groupby("model", sort=False):
        final = group[group["step"] == group["step"].max()]
        kept = [[s, r] for s, r in final.loc[final["in_circuit"], ["sender", "receiver"]].itertuples(index=False)]
        sweeps.append(sweep(model, transfer(), list(group["revision"].unique()),
                            params={**task_params, "edges": kept}, **sweep_kwargs))
        frames.append(summary(group, sweeps[-1].to_frame()))
    return CircuitTraining(edges, pd.concat(frames, ignore_index=True), tuple(sweeps))


def summary(edges: pd.DataFrame, moved: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per checkpoint: circuit size and faithfulness, the final circuit's faithfulness, Jaccard with the previous."""
    per = (edges.groupby(["model", "revision", "step", "tokens_seen"], sort=False)
           [["circuit_size", "circuit_faithfulness", "metric_gap"]].first().reset_index().sort_values("step"))
    sets = {rev: set(map(tuple, g.loc[g["in_circuit"].astype(bool), ["sender", "receiver"]].to_numpy()))
            for rev, g in edges.groupby("revision", sort=False)}
    revisions = per["revision"].tolist()
    pairs = zip(revisions[:-1], revisions[1:], strict=True)
    per["jaccard_previous"] = [float("nan")] + [jaccard(sets[a], sets[b]) for a, b in pairs]
    if moved is not None:
        final = moved.set_index("revision")
        per["final_faithfulness"] = per["revision"].map(final["faithfulness"])
        per["final_completeness"] = per["revision"].map(final["completeness"])
    return per.reset_index(drop=True)


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; NaN when both are empty.

    >>> jaccard({1, 2}, {2, 3}), jaccard(set(), set())
    (0.3333333333333333, nan)
    """
    union = a | b
    return len(a & b) / len(union) if union else float("nan")
