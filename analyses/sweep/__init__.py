"""Sweeps across training checkpoints and model sizes, with a resumable results store.

    >>> from analyses.sweep import sweep
    >>> result = sweep(["toy-2l", "toy-4l"], "attention", "log", progress=False)
    >>> result.to_frame().columns[:7].tolist()
    ['model', 'revision', 'step', 'tokens_seen', 'layer', 'head', 'name']
    >>> figures = result.figures()    # head scores over training, log step axis

Modules: `core` (sweep, Sweep), `revisions` (which checkpoints), `registry` (analyses by name),
`store` (Parquet results store), `integrity` (identical-weights check), `local` and
`ray_executor` (executors), `work` (one checkpoint's work), `rope` and `circuits` (RoPE use,
patching and circuits over training), `figures` and `circuit_figures`, `report` (the report's
sections across training), `command` (the CLI).
"""

from analyses.sweep.core import Sweep, sweep
from analyses.sweep.registry import ANALYSES, Analysis, AnalysisUnavailableError, available, register
from analyses.sweep.revisions import checkpoints, step_of, tokens_seen
from analyses.sweep.store import Key, ResultStore

__all__ = ["ANALYSES", "Analysis", "AnalysisUnavailableError", "Key", "ResultStore", "Sweep", "available",
           "checkpoints", "register", "step_of", "sweep", "tokens_seen"]
