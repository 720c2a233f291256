"""Training and evaluation text: the pydoc split (`interp.toy.text`) and the Pile sample beside the project."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from interp.toy.text import HELDOUT_TOPICS, pydoc_topics, split_topics

__all__ = ["EOT", "HELDOUT_TOPICS", "PILE_SAMPLE", "fingerprint", "pile_sample", "pydoc_topics", "split_topics"]

EOT = "<|endoftext|>"
PILE_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pile-sample.jsonl"


def fingerprint(texts: list[str]) -> str:
    """sha256 of the documents joined by EOT: which Python's docs a model was trained on."""
    return hashlib.sha256(EOT.join(texts).encode("utf-8")).hexdigest()


def pile_sample(path: Path | None = None) -> list[str] | None:
    """Documents of the Pile sample beside the project, or None when it is absent."""
    path = Path(path) if path is not None else PILE_SAMPLE
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]
