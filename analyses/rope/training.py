"""Across training: the head table at every checkpoint, so you can see when each head's rotary use forms.

    >>> from analyses.rope import sample_text
    >>> run = rope_across_training("toy", sample_text()[:400], revisions=["step0", "step1350", "main"])
    >>> run.to_frame().query("name == 'L0H1'").label.tolist()    # the previous-token head forming
    ['content', 'positional', 'positional']
    >>> fig = run.figure()                             # rotary share per head against training step

Each checkpoint is loaded, probed on the same text and dropped before the next (`analyses.sweep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from analyses.rope.heads import head_table

VALUES = ("rotary_share", "positional_index", "prev_attention", "sink_attention", "pass_share")


@dataclass(frozen=True)
class RopeTraining:
    """The head table of every checkpoint: one row per (checkpoint, head) with `revision` and `step`."""

    model: str
    frame: object  # pandas DataFrame

    def to_frame(self):
        return self.frame.copy()

    def figure(self, value: str = "rotary_share"):
        """`value` per head against training step (one line per head)."""
        from analyses.rope import figures

        return figures.training_lines(self, value)


def rope_across_training(name: str, x, *, revisions: Sequence[str] | None = None, **load_kwargs) -> RopeTraining:
    """The head table of `x` at every checkpoint of `name` (all saved ones by default).

    >>> rope_across_training("toy", "x = 1\\ny = 2\\n", revisions=["step0", "main"]).to_frame().shape[0]
    12
    """
    from analyses.sweep import sweep

    result = sweep(name, lambda model: head_table(model, x).to_frame(), revisions, **load_kwargs)
    return RopeTraining(name, result.to_frame())
