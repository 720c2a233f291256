"""The lens part of the HTML report: the logit lens of each prompt."""

from __future__ import annotations

import pandas as pd

import interp
from analyses.export import Section
from analyses.lens.logit import logit_lens


def sections(model: interp.Model, prompts: list[str]) -> tuple[list[Section], dict[str, pd.DataFrame]]:
    """One logit-lens grid per prompt, and the table of every prompt, layer and position.

    >>> secs, tables = sections(interp.load("toy"), ["x = 1"])
    >>> [s.title for s in secs], len(tables["logit_lens"])        # 3 layer boundaries x 3 tokens
    (['Logit lens'], 9)
    """
    lens = logit_lens(model, prompts)
    text = ("Each layer boundary decoded through the final LayerNorm and unembedding: input tokens down, "
            "layers across; colour is KL(final || layer) in nats, text the top-1 token, hover for the top 5.")
    out = [Section("Logit lens" if len(prompts) == 1 else f"Logit lens on prompt {b + 1}", text,
                   lens.figure("kl", prompt=b)) for b in range(len(prompts))]
    return out, {"logit_lens": lens.to_frame()}
