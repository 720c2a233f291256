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
