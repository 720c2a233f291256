"""Helpers for the attention and export tests: hand-made patterns, headless browser, PNG reader."""

from __future__ import annotations

import re
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import interp
from analyses.attention import AttentionPatterns
from analyses.export import find_browser
from interp.cache import Provenance
from tests.conftest import tiny_hf, word_tokenizer

BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",
)
REMOTE_REF = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//", re.I)


def hand_made(pattern: torch.Tensor, ids: list[int], tokens: list[str] | None = None) -> AttentionPatterns:
    """AttentionPatterns of one prompt from a (layer, head, q_pos, k_pos) tensor."""
    n_layers, n_heads, n = pattern.shape[:3]
    prov = Provenance(
        model="hand",
        revision=None,
        dtype="float32",
        n_layers=n_layers,
        n_heads=n_heads,
        tokens=[list(ids)],
        attention_mask=[[1] * n],
    )
    tokens = tokens or [f"t{i}" for i in ids]
    return AttentionPatterns(pattern[:, None], tuple(range(n_layers)), [tokens], prov)


def tiny_model(seed: int = 0, **config) -> interp.Model:
    """A seeded random-init Pythia-architecture model with the word tokenizer (`t0 ... t127`)."""
    return interp.Model(tiny_hf(seed=seed, **config), word_tokenizer(), name="tiny")


def chromium() -> str | None:
    """The Chrome/Chromium the tests drive, if one is installed."""
    return find_browser()


@dataclass(frozen=True)
class Page:
    """What a headless browser made of an HTML file."""

    dom: str
    console: list[str]
    screenshot: Path


def open_in_browser(html: Path, size: tuple[int, int] = (1100, 900)) -> Page:
    """Load a local HTML file headless: DOM after its scripts ran, console messages, screenshot."""
    browser, url = chromium(), html.resolve().as_uri()
    assert browser is not None, "no Chrome/Chromium found"
    with tempfile.TemporaryDirectory() as profile:
        base = [browser, *BROWSER_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    with tempfile.TemporaryDirectory() as profile:
        shot = html.with_suffix(".screenshot.png")
        window = f"--window-size={size[0]},{size[1]}"
        base = [
            browser,
            *BROWSER_FLAGS,
            f"--user-data-dir={profile}",
            window,
            f"--screenshot={shot}",
        ]
        subprocess.run([*base, url], capture_output=True, text=True, timeout=120)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    return Page(dom.stdout, console, shot)


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB/RGBA/grey PNG into an (h, w, channels) uint8 array."""
    data, chunks, pos = path.read_bytes(), [], 8
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and interlace == 0, f"unsupported PNG: depth {depth}, interlace {interlace}"
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * channels)
    return _unfilter(rows, channels).reshape(height, width, channels)


def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (none, sub, up, average, paeth)."""
    out = np.zeros((rows.shape[0], rows.shape[1] - 1), np.uint8)
    prev = np.zeros(rows.shape[1] - 1, np.int64)
    for y, (kind, line) in enumerate(zip(rows[:, 0], rows[:, 1:].astype(np.int64), strict=True)):
        if kind == 0:
            cur = line
        elif kind == 1:  # sub: cumulative sums within each channel
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:
            cur = (line + prev) % 256
        else:
            cur = _sequential(line.tolist(), prev.tolist(), bpp, kind)
        out[y], prev = cur, np.asarray(cur, np.int64)
    return out


def _sequential(line: list[int], prev: list[int], bpp: int, kind: int) -> list[int]:
    """Average (3) and Paeth (4) filters, which depend on the decoded byte to the left."""
    cur = [0] * len(line)
    for i, x in enumerate(line):
        a = cur[i - bpp] if i >= bpp else 0
        b, c = prev[i], prev[i - bpp] if i >= bpp else 0
        if kind == 3:
            cur[i] = (x + (a + b) // 2) % 256
            continue
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        cur[i] = (x + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
    return cur


def pixel_std(path: Path) -> float:
    """Standard deviation of the colour channels over all pixels: about 0 for a blank image."""
    pixels = png_pixels(path)
    return float(pixels[..., :3].astype(np.float64).std())
