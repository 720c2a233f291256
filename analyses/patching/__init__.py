"""Patching and circuit discovery: activation, path, attribution and edge patching, and circuits.

    >>> import interp
    >>> from analyses import patching
    >>> model = interp.load("toy")
    >>> task = patching.tasks.induction(model, n_prompts=8)
    >>> heads = patching.activation_patch(model, task, sites=["z"]).figure()
    >>> paths = patching.path_patch(model, task, senders="heads", receivers="logits").to_frame()
    >>> scores = patching.eap_ig(model, task, steps=5)
    >>> curve = patching.faithfulness_curve(model, task, scores)
    >>> curve.smallest(0.8) < scores.graph.n_edges
    True

Signs follow one convention, stated in `analyses.patching.metrics`.
"""

from analyses.patching import tasks
from analyses.patching.activation import activation_patch
from analyses.patching.attribution import atp, eap, eap_ig
from analyses.patching.circuits import evaluate_circuit, faithfulness_curve, masked_logits, masked_values
from analyses.patching.errors import GraphError, PatchingError, TaskError, UnknownMethodError
from analyses.patching.graph import Graph, edge_count
from analyses.patching.metrics import KLToClean, LogitDiff, Metric, ProbDiff
from analyses.patching.path import path_patch
from analyses.patching.results import Circuit, EdgeScores, FaithfulnessCurve, NodeEffects, PathEffects
from analyses.patching.sparse import release_scratch

METHODS = ("activation", "path", "attribution", "eap", "eap-ig", "circuit")

__all__ = [
    "METHODS", "Circuit", "EdgeScores", "FaithfulnessCurve", "Graph", "GraphError", "KLToClean", "LogitDiff",
    "Metric", "NodeEffects", "PathEffects", "PatchingError", "ProbDiff", "TaskError", "UnknownMethodError",
    "activation_patch", "atp", "check_method", "eap", "eap_ig", "edge_count", "evaluate_circuit",
    "faithfulness_curve", "masked_logits", "masked_values", "path_patch", "release_scratch", "tasks",
]


def check_method(method: str) -> str:
    """`method` if it is one of METHODS, else an UnknownMethodError listing them.

    >>> check_method("eap-ig")
    'eap-ig'
    """
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownMethodError(f"Unknown patching method {method!r}.{hint} Choose one of {', '.join(METHODS)}.")
    return method
