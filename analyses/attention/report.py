"""The attention part of the HTML report: head detector scores, and the strongest induction head per prompt."""

from __future__ import annotations

import pandas as pd

import interp
from analyses.attention.detectors import DETECTORS, detect_heads
from analyses.attention.patterns import patterns
from analyses.export import Section


def sections(model: interp.Model, prompts: list[str]) -> tuple[list[Section], dict[str, pd.DataFrame]]:
    """Sections and tables: the detector scores of every head, then the top induction head on each prompt.

    >>> secs, tables = sections(interp.load("toy"), ["a = b; a = b"])
    >>> [s.title for s in secs], list(tables)
    (['Head detectors', 'Attention of L1H2, the strongest induction head'], ['head_scores'])
    """
    heads = detect_heads(model)
    scores = heads.to_frame()
    layer, head = heads.top("induction", k=1)[0]
    out = [Section("Head detectors", "Scores per head on repeated random tokens, with TransformerLens's "
                   "definitions: the mean over every query position of the attention a detector expects, so a "
                   "perfect induction head scores about 1/2 on one repeat (no earlier copy in the first half). "
                   "Hover a cell for its head; the menu switches detector.",
                   heads.figure(["induction", *(d for d in DETECTORS if d != "induction")]), top_heads(scores))]
    pats = patterns(model, prompts, layers=[layer])
    for b, prompt in enumerate(prompts):
        where = "" if len(prompts) == 1 else f" on prompt {b + 1}"
        out.append(Section(f"Attention of L{layer}H{head}, the strongest induction head{where}",
                           f"Query tokens down, key tokens across, on {prompt!r}; a repeated phrase lights up the "
                           "diagonal just after each earlier occurrence.",
                           pats.figure(layer=layer, head=head, batch=b)))
    return out, {"head_scores": scores}


def top_heads(scores: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The k best heads per detector, as 'L1H2 (0.45)' strings.

    >>> top_heads(detect_heads(interp.load("toy")).to_frame(), k=1).columns.tolist()
    ['detector', '#1']
    """
    rows = []
    for detector in ("induction", "prev_token", "duplicate_token", "first_token"):
        best = scores.nlargest(k, detector)
        rows.append({"detector": detector, **{f"#{i + 1}": f"L{r['layer']}H{r['head']} ({r[detector]:.2f})"
                                               for i, (_, r) in enumerate(best.iterrows())}})
    return pd.DataFrame(rows)
