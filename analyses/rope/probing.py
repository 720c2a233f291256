"""The whole probe in one call: decomposition, positional kernels and the head table, from one forward.

    >>> import interp
    >>> model = interp.load("toy")
    >>> from analyses.rope import sample_tokens
    >>> result = probe(model, sample_tokens(model, 128))
    >>> result.to_frame().shape                        # the head table: a row per head
    (6, 16)
    >>> figures = result.figures()                     # rotary share map, band heatmaps, kernels

`analyses.export.save(result.figures(), "rope.html")` writes them all to one offline page.

This is what `pythia-interp rope` and `bench/rope_probe.py` run; ablations, the position
experiments and the QK circuit are separate calls (they cost more forwards, or none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from analyses.rope.decomposition import CHUNK_ELEMENTS, ScoreDecomposition, decompose
from analyses.rope.heads import HeadTable, Thresholds, head_table
from analyses.rope.kernel import PositionalKernel, positional_kernel
from interp.model import Model


@dataclass(frozen=True)
class RopeProbe:
    """Decomposition, kernels and labelled heads of one prompt."""

    decomposition: ScoreDecomposition
    kernel: PositionalKernel
    heads: HeadTable

    def to_frame(self):
        """The head table (`bands()` has the per-band rows)."""
        return self.heads.to_frame()

    def bands(self):
        """One row per head and part: frequency, wavelength, energies and variance shares."""
        return self.decomposition.to_frame()

    def figure(self):
        """The layer x head map of rotary share (see `figures()` for the rest)."""
        return self.heads.figure()

    def figures(self, kernel_heads: list[tuple[int, int]] | None = None) -> list:
        """Rotary share map, positional index map, head x band energy heatmap, kernel curves."""
        return [self.heads.figure("rotary_share"), self.heads.figure("positional_index"),
                self.decomposition.figure("energy_share"), self.decomposition.figure("variance_share"),
                self.kernel.figure(kernel_heads)]


def probe(
    model: Model, x, *, layers: Sequence[int] | None = None, thresholds: Thresholds | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> RopeProbe:
    """Decompose every head's scores on `x`, compute its kernels and label it.

    >>> import interp
    >>> model = interp.load("toy")
    >>> probe(model, "x = 1\\ny = 2\\n").to_frame().shape[0]
    6
    """
    dec = decompose(model, x, layers=layers, chunk_elements=chunk_elements)
    kern = positional_kernel(model, decomposition=dec)
    return RopeProbe(dec, kern, head_table(model, decomposition=dec, kernel=kern, thresholds=thresholds))
