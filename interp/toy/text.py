"""The text the toy suite was trained on: Python's own documentation (`pydoc_data`), split by topic.

    >>> from interp.toy.text import HELDOUT_TOPICS, split_topics
    >>> train, heldout = split_topics()
    >>> len(heldout) == len(HELDOUT_TOPICS)
    True

Every Python ships these documents, so the split is available offline wherever the package runs
(the tuned lens trains on it by default).
"""

from __future__ import annotations

# Held-out pydoc topics, named so that the split is the same on every Python version (~10% of text).
HELDOUT_TOPICS = ("assignment", "comparisons", "execmodel", "import", "try")


def pydoc_topics() -> list[tuple[str, str]]:
    """All (name, text) pairs of `pydoc_data.topics.topics`, sorted by name.

    >>> name, text = pydoc_topics()[0]
    >>> isinstance(name, str) and len(text) > 0
    True
    """
    from pydoc_data.topics import topics

    return sorted(topics.items())


def split_topics() -> tuple[list[str], list[str]]:
    """(train, heldout) documents: the HELDOUT_TOPICS are held out, the rest is training text.

    >>> train, heldout = split_topics()
    >>> len(train) > 10 * len(heldout) > 0
    True
    """
    train, heldout = [], []
    for name, text in pydoc_topics():
        (heldout if name in HELDOUT_TOPICS else train).append(text)
    return train, heldout
