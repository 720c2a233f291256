"""Readable token strings for byte-level BPE pieces: `Ġthe` -> ' the', `Ċ` -> '\\n'.

    >>> render_token("Ġthe"), render_token("Ċ")
    (' the', '\\n')
"""

from __future__ import annotations

from functools import cache


@cache
def _byte_decoder() -> dict[str, int]:
    """Inverse of byte-level BPE's byte -> printable-character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + shifted)] = byte
            shifted += 1
    return table


def render_token(piece: str) -> str:
    """Bytes of a BPE piece as text; a partial UTF-8 character shows as `\\xe2`-style escapes."""
    decoder = _byte_decoder()
    if not all(ch in decoder for ch in piece):
        return piece  # not a byte-level piece (e.g. a special token of another tokenizer)
    return bytes(decoder[ch] for ch in piece).decode("utf-8", errors="backslashreplace")


def visible(token: str) -> str:
    """A token with spaces and newlines made visible, for figure labels: ' the' -> '·the'."""
    return token.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥")


def figure_label(token: str, width: int | None = None) -> str:
    """A token as figure text: whitespace visible, control characters escaped, plotly markup inert.

    >>> figure_label(" <b>\\n")
    '·&lt;b&gt;↵'
    """
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in visible(token))
    if width is not None and len(shown) > width:
        shown = shown[: width - 1] + "…"
    # plotly reads <br>, <b>, ... in any text as markup, and decodes entities
    return shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
