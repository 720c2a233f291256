"""Training and held-out text: Python's own documentation (pydoc_data), and the Pile sample."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Held-out pydoc topics, named so that the split is the same on every Python version (~10% of text).
HELDOUT_TOPICS = ("assignment", "comparisons", "execmodel", "import", "try")
EOT = "<|endoftext|>"
PILE_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pile-sample.jsonl"


def pydoc_topics() -> list[tuple[str, str]]:
    """All (name, text) pairs of `pydoc_data.topics.topics`, sorted by name."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def split_topics() -> tuple[list[str], list[str]]:
    """(train, heldout) documents: the HELDOUT_TOPICS are held out, the rest is training text."""
    train, heldout = [], []
    for name, text in pydoc_topics():
        (heldout if name in HELDOUT_TOPICS else train).append(text)
    return train, heldout


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
