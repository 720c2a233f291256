"""RoPE-aware head probing: what each head does with position, measured exactly.

    >>> import interp
    >>> from analyses.rope import probe, sample_tokens
    >>> model = interp.load("toy")
    >>> result = probe(model, sample_tokens(model, 128))
    >>> row = result.to_frame().set_index("name").loc["L0H1"]
    >>> row.label, bool(row.previous_token), int(row.kernel_argmax_offset)
    ('positional', True, -1)

Pythia rotates the first 25% of each head's q/k dims (NeoX pairing: dim i with i + r/2, band i at
theta_i = base^(-2i/r)); the rest carry no position. So every score splits exactly into a
pass-through part and one part per band, each with four bias terms (`decompose`). From there:
positional kernels (`positional_kernel`), the head table (`head_table`), position experiments
through the real model (`position_tests`), band ablations (`band_ablation`), the RoPE-aware QK
circuit (`qk_circuit`, `qk_matrix`) and the same across training (`rope_across_training`).
Offsets are always Delta = key_pos - query_pos (a previous-token head peaks at -1).
"""

from analyses.rope.ablate import BandAblation, band_ablation
from analyses.rope.circuit import QKCircuit, qk_circuit, qk_matrix
from analyses.rope.common import TERMS, Geometry, geometry, sample_text, sample_tokens
from analyses.rope.decomposition import ScoreDecomposition, decompose
from analyses.rope.heads import HeadTable, Thresholds, head_table
from analyses.rope.kernel import PositionalKernel, positional_kernel
from analyses.rope.parts import ScoreParts, score_parts
from analyses.rope.probing import RopeProbe, probe
from analyses.rope.training import RopeTraining, rope_across_training
from analyses.rope.validate import PositionTests, position_tests

__all__ = [
    "TERMS", "BandAblation", "Geometry", "HeadTable", "PositionTests", "PositionalKernel", "QKCircuit", "RopeProbe",
    "RopeTraining", "ScoreDecomposition", "ScoreParts", "Thresholds", "band_ablation", "decompose", "geometry",
    "head_table", "position_tests", "positional_kernel", "probe", "qk_circuit", "qk_matrix", "rope_across_training",
    "sample_text", "sample_tokens", "score_parts",
]
