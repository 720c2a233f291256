"""Export: offline HTML, plotly JSON, PNG/SVG/PDF through kaleido and a local Chromium, and what a
browser makes of the files (no console errors, not blank), including a 2048-token prompt."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from analyses.attention import head_scores, patterns
from analyses.export import ExportError, RendererNotFoundError, find_browser, save
from tests.analyses.helpers import (
    REMOTE_REF,
    hand_made,
    open_in_browser,
    pixel_std,
    png_pixels,
    tiny_model,
)

needs_browser = pytest.mark.skipif(find_browser() is None, reason="no Chrome/Chromium installed")


@pytest.fixture(scope="module")
def pats():
    model = tiny_model(seed=1)
    return patterns(model, "t5 t17 t3 t99 t5 t17 t3 t99 t42")


def test_html_is_self_contained(pats, tmp_path):
    path = save(pats, tmp_path / "deep" / "attention.html")
    html = path.read_text()
    assert not REMOTE_REF.search(html), "a script, stylesheet or image is fetched from the network"
    assert "MathJax.js" not in html and "<link" not in html
    assert len(html) > 3_000_000, "plotly.js must be embedded, not referenced"
    page = save([pats.figure(1, 0), head_scores(pats)], tmp_path / "page.html").read_text()
    assert page.count("Plotly.newPlot") == 2 and page.count("plotly.js v") == 1, "plotly.js once"


def test_json_round_trips(pats, tmp_path):
    fig = pats.figure(1, 0)
    back = pio.read_json(save(fig, tmp_path / "head.json"))
    assert back.layout.title.text == fig.layout.title.text
    assert list(back.layout.xaxis.ticktext) == list(fig.layout.xaxis.ticktext)


def test_bad_suffix_or_object_says_what_to_do(pats, tmp_path):
    with pytest.raises(ExportError, match=r"unknown suffix '\.jpeg'. Use one of .html, .json"):
        save(pats, tmp_path / "x.jpeg")
    with pytest.raises(ExportError, match="unknown suffix '\\(none\\)'"):
        save(pats, tmp_path / "x")
    with pytest.raises(ExportError, match="pass a plotly Figure or a result with a .figure"):
        save(42, tmp_path / "x.html")
    with pytest.raises(ExportError, match="single .html page"):
        save([pats, pats], tmp_path / "x.png")


def test_missing_browser_names_the_fix(pats, tmp_path, monkeypatch):
    pytest.importorskip("kaleido")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    with pytest.raises(RendererNotFoundError, match="apt-get install chromium.*BROWSER_PATH"):
        save(pats, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.browser
@needs_browser
def test_static_images_are_rendered_offline_and_not_blank(pats, tmp_path):
    pytest.importorskip("kaleido")
    png = save(pats.figure(slider=False), tmp_path / "grid.png")
    pixels = png_pixels(png)
    assert pixels.shape[0] >= 2 * pats.figure(slider=False).layout.height - 2, "scale=2 by default"
    assert pixel_std(png) > 10, "the PNG is blank"
    assert save(head_scores(pats), tmp_path / "s.svg").read_text().lstrip().startswith("<svg")
    assert save(pats.figure(0, 1), tmp_path / "h.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.browser
@needs_browser
def test_html_opens_in_a_browser_without_errors(pats, tmp_path):
    path = save([pats, pats.token_figure(), head_scores(pats)], tmp_path / "attention.html")
    page = open_in_browser(path)
    assert page.console == [], f"console messages: {page.console}"
    assert page.dom.count('class="main-svg"') >= 3, "plotly did not draw the figures"
    assert pixel_std(page.screenshot) > 10, "the page looks blank"


@pytest.mark.browser
@needs_browser
def test_a_2048_token_prompt_gives_a_file_a_browser_opens(tmp_path):
    model = tiny_model(seed=3, max_position_embeddings=2048, num_hidden_layers=2, num_attention_heads=4)
    ids = torch.randint(1, 128, (1, 2048), generator=torch.Generator().manual_seed(0))
    pats = patterns(model, ids)
    path = save([pats, pats.figure(1, 2), pats.token_figure()], tmp_path / "long.html")
    assert path.stat().st_size < 15e6, f"{path.stat().st_size / 2**20:.1f} MiB"
    page = open_in_browser(path)
    assert page.console == [], f"console messages: {page.console}"
    assert page.dom.count('class="main-svg"') >= 3 and "max-pooled" in page.dom
    assert pixel_std(page.screenshot) > 10


def test_a_figure_passes_through(tmp_path):
    fig = hand_made(torch.eye(3)[None, None], [1, 2, 3]).figure(0, 0)
    assert isinstance(fig, go.Figure)
    assert save(fig, tmp_path / "f.json").exists()
