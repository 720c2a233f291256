"""Helpers for the analyses tests: hand-made patterns, tiny models, a headless browser (Playwright), PNG pixels."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import interp
from analyses.attention import AttentionPatterns
from analyses.export import find_browser
from interp.cache import Provenance
from tests.conftest import tiny_hf, word_tokenizer

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
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


@contextmanager
def browser_page(size: tuple[int, int] = (1100, 900)) -> Iterator[tuple[object, list[str]]]:
    """A headless Chromium page (Playwright on the system browser, nothing downloaded) and the list its
    console errors and uncaught exceptions are collected into. Skips when Playwright or Chromium is missing."""
    import pytest

    sync_api = pytest.importorskip("playwright.sync_api", reason="the python playwright package is not installed")
    executable = chromium()
    if executable is None:
        pytest.skip("no Chrome/Chromium installed (make browser)")
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.on("console", lambda msg: errors.append(f"{msg.type}: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda err: errors.append(f"uncaught: {err}"))
            yield page, errors
        finally:
            browser.close()


@dataclass(frozen=True)
class Page:
    """What a headless browser made of an HTML file."""

    dom: str
    console: list[str]
    screenshot: Path


def open_in_browser(html: Path, size: tuple[int, int] = (1100, 900)) -> Page:
    """Load a local HTML file headless: DOM after its scripts ran, console errors, a full-page screenshot."""
    shot = html.with_suffix(".screenshot.png")
    with browser_page(size) as (page, errors):
        page.goto(html.resolve().as_uri(), wait_until="load")
        page.wait_for_selector(".main-svg", timeout=60_000)
        page.screenshot(path=str(shot), full_page=True)
        return Page(page.content(), list(errors), shot)


def png_pixels(path: Path) -> np.ndarray:
    """An image file as an (h, w, channels) uint8 array (read by Pillow)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA") if image.mode in ("P", "LA") else image)


def pixel_std(path: Path) -> float:
    """Standard deviation of the colour channels over all pixels: about 0 for a blank image."""
    pixels = png_pixels(path)
    return float(pixels[..., :3].astype(np.float64).std())


def uniform(n: int = 6) -> torch.Tensor:
    """A causal pattern spreading each query evenly over the keys it can see: (1, 1, n, n)."""
    return (torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None])[None, None]
