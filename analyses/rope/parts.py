"""The score decomposition itself, every (query, key) pair kept: for one layer of a short prompt.

    >>> import interp
    >>> model = interp.load("toy")
    >>> parts = score_parts(model, "x = 1\\ny = x\\n", layer=0)
    >>> parts.values.shape[:4]                 # (batch, head, part, term, q_pos, k_pos): pass + 4 bands, 4 terms
    torch.Size([1, 3, 5, 4])
    >>> scores = parts.scores                  # their sum: the model's attention scores on causal pairs
    >>> fig = parts.figure(head=1)             # one heatmap per part, summed over bias terms

`decompose` computes statistics of the same parts without ever holding them; this keeps them
all, so it is for reading one head closely (memory grows with parts x terms x pos^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.rope.common import TERMS, Geometry, check_layers, geometry, part_names, score_scale
from analyses.rope.decomposition import causal_mask, rotated_parts
from interp.cache import Provenance
from interp.errors import InputError
from interp.model import Model

MAX_POS = 512


@dataclass(frozen=True)
class ScoreParts:
    """Every part and bias term of one layer's scores; zero outside causal pairs of real tokens."""

    values: Float[Tensor, "batch head part term q_pos k_pos"]
    mask: Float[Tensor, "batch q_pos k_pos"]
    layer: int
    geometry: Geometry
    provenance: Provenance

    @property
    def scores(self) -> Float[Tensor, "batch head q_pos k_pos"]:
        """The sum of every part and term: the model's pre-mask attention scores on causal pairs."""
        return self.values.sum((2, 3))

    def to_frame(self, batch: int = 0, head: int = 0):
        """Long table for one head: q_pos, k_pos, part, term, value (causal pairs of real tokens)."""
        import pandas as pd

        names = part_names(self.geometry.n_bands)
        q, k = self.mask[batch].nonzero(as_tuple=True)
        vals = self.values[batch, head][:, :, q, k]  # (part, term, pair)
        frames = [
            pd.DataFrame({"q_pos": q.numpy(), "k_pos": k.numpy(), "part": p, "term": t, "value": vals[i, j].numpy()})
            for i, p in enumerate(names) for j, t in enumerate(TERMS)
        ]
        return pd.concat(frames, ignore_index=True)

    def figure(self, head: int = 0, batch: int = 0):
        """One head: a heatmap per part (summed over its bias terms), query by key."""
        from plotly.subplots import make_subplots

        names = part_names(self.geometry.n_bands)
        per_part = self.values[batch, head].sum(1)  # (part, q, k)
        nan = torch.where(self.mask[batch] > 0, 0.0, float("nan"))
        fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True)
        for i in range(len(names)):
            fig.add_heatmap(z=(per_part[i] + nan).numpy(), coloraxis="coloraxis", row=1, col=i + 1)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(coloraxis={"colorscale": "RdBu", "cmid": 0}, template="plotly_white",
                          title=f"score parts of L{self.layer}H{head} (query rows, key columns)")
        return fig


def score_parts(model: Model, x, layer: int) -> ScoreParts:
    """Every part and bias term of every score of one layer, for prompts up to MAX_POS tokens.

    >>> import interp
    >>> model = interp.load("toy")
    >>> score_parts(model, "x = 1", layer=1).scores.shape
    torch.Size([1, 3, 3, 3])
    """
    [layer] = check_layers([layer], model.n_layers)
    geo = geometry(model)
    tokens = model.tokens(x)
    if tokens.ids.shape[1] > MAX_POS:
        raise InputError(f"score_parts keeps every pair: {tokens.ids.shape[1]} positions is more than {MAX_POS}. "
                         "Use decompose(...) for long prompts.")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=[f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"])
    qc, qb, kc, kb = rotated_parts(cache["q", layer], cache["k", layer], model.b_Q[layer], model.b_K[layer],
                                   tokens.position_ids, geo, score_scale(model, layer))
    mask = causal_mask(tokens.attention_mask).float().cpu()
    part = geo.part_of_dim()
    terms = []
    for q_part, k_part in ((qc, kc), (qc, kb), (qb, kc), (qb, kb)):
        prod = q_part.cpu()[:, :, :, None, :] * k_part.cpu()[:, :, None, :, :]  # (batch, head, q, k, d_head)
        by_part = prod.new_zeros(*prod.shape[:-1], 1 + geo.n_bands).index_add_(-1, part, prod)
        terms.append(by_part.permute(0, 1, 4, 2, 3))  # (batch, head, part, q, k)
    values = torch.stack(terms, dim=3) * mask[:, None, None, None]
    return ScoreParts(values, mask, layer, geo, cache.provenance)
