"""The pages a reader opens, driven in headless Chromium (Playwright on the system browser): controls
change the figure, nothing logs an error, and the report's figures fit the page with legible cell text."""

from __future__ import annotations

import re

import pytest

import interp
from analyses.attention import detect_heads, patterns
from analyses.export import save
from analyses.report import build_report
from tests.analyses.helpers import browser_page

pytestmark = pytest.mark.browser

PLOTS = ".js-plotly-plot"


@pytest.fixture(scope="module")
def toy() -> interp.Model:
    return interp.load("toy")


def title(page, plot: int) -> str:
    """The current title text of the plot-th figure on the page."""
    return page.evaluate(f"() => document.querySelectorAll('{PLOTS}')[{plot}].layout.title.text")


def click_slider_step(page, plot: int, label: str) -> None:
    """Click a plotly slider on the rail, under the tick labelled `label`."""
    figure = page.locator(PLOTS).nth(plot)
    tick = figure.locator(".slider-label").filter(has_text=re.compile(f"^{re.escape(label)}$")).last.bounding_box()
    rail = figure.locator(".slider-rail-touch-rect").bounding_box()
    page.mouse.click(tick["x"] + tick["width"] / 2, rail["y"] + rail["height"] / 2)


def choose_in_dropdown(page, plot: int, label: str) -> None:
    """Open a plotly dropdown menu and click the button labelled `label`."""
    figure = page.locator(PLOTS).nth(plot)
    figure.locator(".updatemenu-header").first.click()
    figure.locator(".updatemenu-dropdown-button", has_text=label).first.click()


def test_attention_page_layer_slider_and_detector_menu(toy, tmp_path):
    pats = patterns(toy, "The value of x. The value of x.")
    path = save([pats.figure(), detect_heads(toy).figure()], tmp_path / "attention.html")
    with browser_page() as (page, errors):
        page.goto(path.resolve().as_uri())
        page.wait_for_selector(".main-svg")
        grid = page.locator(PLOTS).nth(0)
        before = grid.screenshot()
        assert title(page, 0).endswith("layer 0")
        click_slider_step(page, 0, "1")
        page.wait_for_function(f"() => document.querySelectorAll('{PLOTS}')[0].layout.title.text.endsWith('layer 1')")
        assert grid.screenshot() != before, "the heads drawn did not change with the layer"

        scores = page.locator(PLOTS).nth(1)
        before = scores.screenshot()
        assert title(page, 1).startswith("prev_token")
        choose_in_dropdown(page, 1, "induction")
        page.wait_for_function(f"() => document.querySelectorAll('{PLOTS}')[1].layout.title.text.startsWith('ind')")
        assert scores.screenshot() != before, "the heatmap did not switch detector"
        assert errors == [], f"console errors: {errors}"


def test_report_menu_switches_detector_and_figures_fit_the_page(toy, tmp_path):
    prompt = "The return value of the function is the value of the last expression. The return value of"
    page_path = build_report(toy, prompt).save(tmp_path / "report")
    with browser_page(size=(1280, 900)) as (page, errors):
        page.goto(page_path.resolve().as_uri())
        page.wait_for_selector(".main-svg")
        assert title(page, 0).startswith("induction")
        choose_in_dropdown(page, 0, "prev_token")
        page.wait_for_function(f"() => document.querySelectorAll('{PLOTS}')[0].layout.title.text.startsWith('prev')")

        body = page.locator("body").bounding_box()
        plots = page.locator(PLOTS)
        for i in range(plots.count()):
            box = plots.nth(i).bounding_box()
            assert box["x"] + box["width"] <= body["x"] + body["width"] + 1, f"figure {i} is wider than the page"
        _assert_lens_cells_are_legible(page, plots.nth(plots.count() - 1))
        assert errors == [], f"console errors: {errors}"


def _assert_lens_cells_are_legible(page, lens) -> None:
    """The logit-lens grid's cell texts: a readable font, and no two in one row overlap."""
    labels = lens.locator(".heatmap-label")
    assert labels.count() > 0, "the lens grid shows no top-1 tokens"
    sizes = labels.evaluate_all("els => els.map(e => parseFloat(getComputedStyle(e).fontSize))")
    assert min(sizes) >= 11, f"cell text of {min(sizes)}px is too small to read"
    boxes = labels.evaluate_all("els => els.map(e => { const b = e.getBBox(); return [b.x, b.y, b.width]; })")
    rows: dict[float, list[tuple[float, float]]] = {}
    for x, y, width in boxes:
        rows.setdefault(round(y), []).append((x, x + width))
    for spans in rows.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start + 0.5, f"cell texts overlap: {spans}"
