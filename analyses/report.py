"""The HTML report: heads, attention, logit lens and how heads formed across checkpoints, on one page.

    >>> import interp, tempfile
    >>> report = build_report(interp.load("toy"), "The value of x. The value of")
    >>> page = report.save(tempfile.mkdtemp())      # report.html (self-contained), CSV tables, report.json
    >>> page.name, [s.title for s in report.sections][:1]
    ('report.html', ['Head detectors'])

Every section comes from an analysis subpackage (its `report.sections(model, prompts)`); the
report only lays them out.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

import interp
from analyses.export import Section
from interp.options import dtype_name

DEFAULT_PROMPT = (
    "The return value of the function is the value of the last expression. "
    "The return value of the function is"
)
# Modules with `sections(model, prompts) -> (sections, tables)`, in page order.
SECTIONS = ("analyses.attention.report", "analyses.lens.report")


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


def build_report(model: interp.Model, prompts: str | list[str] = DEFAULT_PROMPT,
                 sweep_revisions: list[str] | None = None, sweep_name: str | None = None) -> Report:
    """Run the analyses on `model` and lay them out; sweep `sweep_name` over `sweep_revisions` if given."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    sections, tables = [], {}
    for name in SECTIONS:
        more, more_tables = importlib.import_module(name).sections(model, prompts)
        sections += more
        tables |= more_tables
    if sweep_name is not None and sweep_revisions:  # across training: the sweep subpackage's sections
        from analyses.sweep.report import sections as across_training

        more, more_tables = across_training(sweep_name, sweep_revisions, dtype=model.dtype,
                                            device=str(model.device), progress=False)
        sections += more
        tables |= more_tables
    provenance = {"model": model.name, "revision": model.revision, "dtype": dtype_name(model.dtype),
                  "device": str(model.device), "prompts": prompts,
                  "tokens": [model.to_tokens(p).ids[0].tolist() for p in prompts],
                  "sweep_revisions": sweep_revisions or []}
    return Report(f"pythia-interp report: {model.name}@{model.revision}", sections, tables, provenance)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8" /><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
section {{ margin-bottom: 3em; overflow-x: auto; }} h2 {{ border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.2em 0.8em; text-align: left; }}
tr:nth-child(even) {{ background: #f6f6f6; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
