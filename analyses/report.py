"""The HTML report: heads, attention, logit lens and how heads formed across checkpoints, on one page.

    >>> report = build_report(interp.load("toy"), prompt="The value of x. The value of")
    >>> report.save("report/")            # report.html (self-contained) + CSV tables + report.json

Every section comes from an analysis function; the report only lays them out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

import interp
from analyses.attention_maps import detect_heads, patterns
from analyses.logit_lens import logit_lens
from analyses.sweep import sweep

DEFAULT_PROMPT = (
    "The return value of the function is the value of the last expression. "
    "The return value of the function is"
)


@dataclass
class Section:
    """A heading, a paragraph, and optionally a figure and/or a table."""

    title: str
    text: str
    figure: object | None = None
    table: pd.DataFrame | None = None


@dataclass
class Report:
    """Sections plus the tables and provenance written next to the page."""

    title: str
    sections: list[Section]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def to_html(self) -> str:
        """One self-contained page: plotly.js inline once, nothing fetched from a network."""
        parts, first = [], True
        for section in self.sections:
            parts.append(f"<section><h2>{escape(section.title)}</h2><p>{escape(section.text)}</p>")
            if section.figure is not None:
                parts.append(section.figure.to_html(full_html=False, include_plotlyjs=first,
                                                    include_mathjax=False, config={"displaylogo": False}))
                first = False
            if section.table is not None:
                parts.append(section.table.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0))
            parts.append("</section>")
        return _PAGE.format(title=escape(self.title), body="\n".join(parts))

    def save(self, out: str | Path) -> Path:
        """Write report.html, one CSV per table and report.json into `out`; return the page's path."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        page = out / "report.html"
        page.write_text(self.to_html(), encoding="utf-8")
        for name, table in self.tables.items():
            table.to_csv(out / f"{name}.csv", index=False)
        (out / "report.json").write_text(json.dumps(self.provenance, indent=2), encoding="utf-8")
        return page


def build_report(model: interp.Model, prompt: str = DEFAULT_PROMPT, sweep_revisions: list[str] | None = None,
                 sweep_name: str | None = None) -> Report:
    """Run the analyses on `model` and lay them out; sweep `sweep_name` over `sweep_revisions` if given."""
    heads = detect_heads(model)
    scores = heads.to_frame()
    layer, head = heads.top("induction", k=1)[0]
    lens = logit_lens(model, prompt)
    sections = [
        Section("Head detectors", "Scores per head on repeated random tokens, with TransformerLens's "
                "definitions: the mean over every query position of the attention a detector expects, so a "
                "perfect induction head scores about 1/2 on one repeat (no earlier copy in the first half). "
                "Hover a cell for its head.", heads.figure("induction"), _top_heads(scores)),
        Section(f"Attention of L{layer}H{head}, the strongest induction head",
                "Query tokens down, key tokens across; a repeated phrase lights up the diagonal just after "
                "each earlier occurrence.", patterns(model, prompt, layers=[layer]).figure(layer=layer, head=head)),
        Section("Logit lens", "Each layer boundary decoded through the final LayerNorm and unembedding; colour is "
                "KL(final || layer) in nats, text the top-1 token.", lens.figure("kl")),
    ]
    tables = {"head_scores": scores, "logit_lens": lens.to_frame()}
    if sweep_name is not None and sweep_revisions:
        across = sweep(sweep_name, lambda m: detect_heads(m).to_frame(), sweep_revisions,
                       dtype=model.dtype)
        sections.append(Section("Induction across training", "Induction score of every head at each saved "
                                "checkpoint: the step where it jumps is where induction heads formed.",
                                across.figure("induction", by=["layer", "head"])))
        tables["sweep"] = across.to_frame()
    provenance = {"model": model.name, "revision": model.revision, "dtype": str(model.dtype),
                  "prompt": prompt, "tokens": model.to_tokens(prompt).ids[0].tolist(),
                  "sweep_revisions": sweep_revisions or []}
    return Report(f"pythia-interp report: {model.name}@{model.revision}", sections, tables, provenance)


def _top_heads(scores: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The k best heads per detector, as 'L1H2 (0.91)' strings."""
    rows = []
    for detector in ("induction", "prev_token", "duplicate_token", "first_token"):
        best = scores.nlargest(k, detector)
        rows.append({"detector": detector, **{f"#{i + 1}": f"L{r['layer']}H{r['head']} ({r[detector]:.2f})"
                                               for i, (_, r) in enumerate(best.iterrows())}})
    return pd.DataFrame(rows)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8" /><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
section {{ margin-bottom: 3em; }} h2 {{ border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.2em 0.8em; text-align: left; }}
tr:nth-child(even) {{ background: #f6f6f6; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
