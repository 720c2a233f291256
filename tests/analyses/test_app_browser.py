"""The explorer driven in headless Chromium: the real server in a subprocess, the real page.

Choose a model, type a prompt, click a head, hover a token, move the checkpoint slider, open
compare mode; every page loads nothing from outside 127.0.0.1, logs no console error, and every
view's screenshot is not blank.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from analyses.app import compute
from analyses.app.server import compare_default

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("dash")
Image = pytest.importorskip("PIL.Image")

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ROOT = Path(__file__).resolve().parents[2]
MODEL_B = compare_default("toy-2l")[0]  # toy-gpt2 once its checkpoints exist, else toy-4l
TIMEOUT = 60_000  # ms: the first figure waits for the server's first model load on a busy machine
FIGURE = """id => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  if (!gd || !gd.layout || !gd.data) return null;
  const title = (gd.layout.title || {}).text || '';
  const notes = (gd.layout.annotations || []).map(a => a.text).join(' ');
  if (!gd.data.length && !notes) return null;  // the empty placeholder before the first answer
  return JSON.stringify({title, notes, z: gd.data.length ? gd.data[0].z || null : null, n: gd.data.length});
}"""

TILE = """([row, col]) => {  // fractions of the grid's plot area that fall below the diagonal of a tile
  const gd = document.querySelector('#grid-a .js-plotly-plot');
  const z = gd.data[0].z, x = gd.layout.xaxis.tickvals, y = gd.layout.yaxis.tickvals;
  const quarter = (x.length > 1 ? x[1] - x[0] - 1 : z[0].length) / 4;
  return [(x[col] - quarter + 0.5) / z[0].length, (y[row] + quarter + 0.5) / z.length];
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m analyses.app` on a free port, with an empty HF cache; always stopped afterwards."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    port, tmp = free_port(), tmp_path_factory.mktemp("serve")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_CACHE": str(tmp / "hub"),
           "HF_HUB_OFFLINE": "1"}
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "analyses.app", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, proc, tmp / "server.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within {seconds} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser(server):
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


class Session:
    """One page of the explorer, with what it logged and fetched."""

    def __init__(self, browser, url: str, shots: Path):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page, self.url, self.shots = self.context.new_page(), url, shots
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url)
        self.wait_figure("head-a", lambda f: "L0H0" in f["title"])

    def figure(self, graph: str) -> dict | None:
        import json

        found = self.page.evaluate(FIGURE, graph)
        return json.loads(found) if found else None

    def wait_figure(self, graph: str, ok, timeout: float = TIMEOUT / 1000) -> dict:
        """Poll a graph's figure until `ok(figure)` holds."""
        deadline, fig = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            fig = self.figure(graph)
            if fig is not None and ok(fig):
                return fig
            time.sleep(0.1)
        pytest.fail(f"#{graph} never reached the expected state; last: {str(fig)[:400]}")

    def wait_text(self, selector: str, text: str) -> None:
        self.page.wait_for_function("([s, t]) => (document.querySelector(s) || {}).textContent?.includes(t)",
                                    arg=[selector, text], timeout=TIMEOUT)

    def choose_model(self, pane: str, name: str, label: str | None = None) -> None:
        """Open a model dropdown, search for `name`, click the option labelled `label` (or `name`)."""
        self.page.click(f"#model-{pane}")
        self.page.locator("input.dash-dropdown-search").fill(name)
        self.page.get_by_role("option", name=label or name).first.click()

    def compare(self, on: bool) -> None:
        self.page.locator("#compare input").set_checked(on)

    def slide_to_start(self, pane: str) -> None:
        """Move a checkpoint slider to step0 with the keyboard (one committed change)."""
        self.page.locator(f"#rev-{pane} [role=slider]").focus()
        self.page.keyboard.press("Home")

    def tab(self, name: str) -> None:
        self.page.locator("#tabs .tab", has_text=name).click()

    def point(self, selector: str, index: int, fx: float, fy: float) -> tuple[float, float]:
        """Page coordinates at fractions (fx, fy) of an element, scrolled into view first."""
        element = self.page.locator(selector).nth(index)
        element.scroll_into_view_if_needed()
        box = element.bounding_box()
        return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy

    def run_prompt(self, prompt: str) -> None:
        self.page.fill("#prompt", prompt)
        self.page.click("#run")

    def idle(self) -> None:
        """Wait until no callback is pending."""
        time.sleep(0.2)
        self.page.wait_for_function("() => !document.querySelector('[data-dash-is-loading=\"true\"]')",
                                    timeout=TIMEOUT)

    def screenshot(self, name: str) -> None:
        """A full-page screenshot that must not be blank (pixel variance), saved for inspection."""
        time.sleep(0.3)  # let plotly finish drawing
        png = self.page.screenshot(full_page=True)
        (self.shots / f"{name}.png").write_bytes(png)
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
        assert pixels.std() > 10, f"screenshot {name} is blank (pixel std {pixels.std():.1f})"

    def check_clean(self) -> None:
        """No console errors; nothing fetched from anywhere but this server (then start counting afresh)."""
        errors, requests = self.errors[:], self.requests[:]
        self.errors.clear()
        self.requests.clear()
        assert not errors, f"console errors: {errors}"
        outside = [u for u in requests if not u.startswith(self.url) and not u.startswith(("data:", "blob:"))]
        assert not outside, f"requests left 127.0.0.1: {outside}"


@pytest.fixture(scope="module")
def session(browser, server, tmp_path_factory):
    """One page for the whole module (a page load costs seconds on a busy machine); each test sets
    the state it needs first."""
    s = Session(browser, server, tmp_path_factory.mktemp("screenshots"))
    yield s
    s.context.close()


def test_choose_model_type_prompt_click_head_hover_token(session):
    s = session
    s.tab("Attention")
    s.choose_model("a", "toy-4l", "toy-4l (embedded toy)")
    s.wait_text("#info-a", "4 layers × 2 heads")
    before = s.wait_figure("head-a", lambda f: f["title"].startswith("toy-4l@step3600 · L"))
    s.run_prompt("def add(a, b): return a + b. def add(a, b): return a + b.")
    s.wait_figure("head-a", lambda f: f["z"] != before["z"])
    s.page.locator("#layer input[value='0']").check()
    s.page.locator("#head input[value='0']").check()
    first = s.wait_figure("head-a", lambda f: "L0H0" in f["title"])
    s.page.locator("#head input[value='1']").check()
    clicked = s.wait_figure("head-a", lambda f: "L0H1" in f["title"])
    assert clicked["z"] != first["z"], "another head should draw another pattern"
    s.screenshot("attention")
    # the grid is one heatmap, a tile per head (a row per layer): click below the diagonal of L1H0
    s.page.mouse.click(*s.point("#grid-a .nsewdrag", 0, *s.page.evaluate(TILE, [1, 0])))
    s.wait_figure("head-a", lambda f: "L1H0" in f["title"])
    last = s.wait_figure("strip-a", lambda f: "L1H0" in f["title"])
    s.page.mouse.move(*s.point("#strip-a .nsewdrag", 0, 0.02, 0.1))  # hover the first token
    hovered = s.wait_figure("strip-a", lambda f: "(position 0)" in f["title"])
    assert hovered["z"] != last["z"], "hovering a token should recolour the strip with its attention"
    s.screenshot("attention-hover")
    s.check_clean()


def test_checkpoint_slider_changes_head_scores(session):
    s = session
    s.compare(False)
    s.choose_model("a", "toy-2l", "toy-2l (embedded toy)")
    s.wait_text("#revision-a", "step3600")
    s.tab("Head detectors")
    final = s.wait_figure("scores-a", lambda f: "toy-2l@step3600" in f["title"])
    s.screenshot("detectors")
    s.slide_to_start("a")
    s.wait_text("#revision-a", "step0")
    start = s.wait_figure("scores-a", lambda f: "toy-2l@step0" in f["title"])
    assert start["z"] != final["z"], "head scores should change between checkpoints"
    s.tab("Logit lens")
    s.wait_figure("lens-a", lambda f: "toy-2l" in f["title"])
    s.screenshot("lens")
    s.check_clean()


def test_one_request_per_click_and_quick_clicks_leave_nothing_stale(session):
    s = session
    s.compare(False)
    s.tab("Attention")
    s.choose_model("a", "toy-2l", "toy-2l (embedded toy)")
    s.page.locator("#rev-a [role=slider]").focus()
    s.page.keyboard.press("End")
    s.wait_figure("head-a", lambda f: f["title"].startswith("toy-2l@step3600"))
    s.idle()
    s.requests.clear()
    s.page.keyboard.press("ArrowLeft")
    s.wait_figure("head-a", lambda f: "toy-2l@step3150" in f["title"])
    s.idle()
    posts = [u for u in s.requests if "_dash-update-component" in u]
    assert len(posts) == 1, f"a checkpoint move should send one request, not {len(posts)}"
    for key in ("ArrowLeft", "ArrowLeft", "ArrowLeft"):  # faster than the answers: Dash drops superseded ones
        s.page.keyboard.press(key)
    s.page.locator("#head input[value='2']").check()
    s.wait_text("#revision-a", "step1800")
    s.idle()
    for graph in ("head-a", "grid-a", "strip-a", "tokens-a"):
        s.wait_figure(graph, lambda f: "toy-2l@step1800" in f["title"], timeout=10)
    assert "H2" in s.figure("head-a")["title"] and "H2" in s.figure("strip-a")["title"], "the head click got lost"
    s.check_clean()


def test_compare_mode_aligns_two_models(session):
    s = session
    s.tab("Attention")
    s.choose_model("a", "toy-2l", "toy-2l (embedded toy)")
    s.compare(True)
    s.wait_text("#info-b", "layers")
    assert MODEL_B in s.page.inner_text("#model-b")
    s.wait_figure("head-b", lambda f: f["title"].startswith(f"{MODEL_B}@"))
    s.wait_figure("diff-attention", lambda f: "B − A" in f["title"])
    s.screenshot("compare-attention")
    s.tab("Head detectors")
    s.wait_figure("scores-b", lambda f: MODEL_B in f["title"])
    diff = s.wait_figure("diff-detectors", lambda f: f["title"] or f["notes"])
    if MODEL_B == "toy-4l":
        assert "no head-by-head difference" in diff["notes"].replace("<br>", " ")
    s.screenshot("compare-detectors")
    s.choose_model("b", "toy-2l", "toy-2l (embedded toy)")  # two checkpoints of one model
    s.slide_to_start("b")
    s.wait_text("#revision-b", "step0")
    revision_a = s.page.inner_text("#revision-a").strip()
    want = f"B − A (toy-2l@step0 − toy-2l@{revision_a})"
    s.wait_figure("diff-detectors", lambda f: want in f["title"])
    s.screenshot("compare-checkpoints")
    s.tab("Logit lens")
    s.wait_figure("diff-lens", lambda f: "per layer" in f["title"])
    s.screenshot("compare-lens")
    s.check_clean()


def test_bad_input_shows_a_message_and_the_server_keeps_running(session):
    s = session
    s.compare(False)
    s.tab("Attention")
    s.run_prompt("")
    s.wait_text("#msg-a", "The prompt is empty")
    s.wait_figure("head-a", lambda f: "The prompt is empty" in f["notes"])
    s.run_prompt("word " * 400)
    s.wait_text("#msg-a", "longer than this model's context")
    s.choose_model("a", "EleutherAI/pythia-160m")
    s.wait_text("#msg-a", "hf download EleutherAI/pythia-160m")
    s.screenshot("missing-model")
    s.choose_model("a", "../../etc", "../../etc (typed)")
    s.wait_text("#msg-a", "not a model this explorer knows")
    s.choose_model("a", "toy-2l", "toy-2l (embedded toy)")
    s.run_prompt("The cat sat on the mat. The cat")
    s.wait_figure("head-a", lambda f: f["title"].startswith("toy-2l@step3600") and not f["notes"])
    s.check_clean()


def test_optional_views_render_once_installed(session):
    installed = [view for view in compute.EXTRAS if compute.optional(view) is not None]
    if not installed:
        pytest.skip("no optional analysis installed yet (RoPE probing, patching)")
    s = session
    s.compare(False)
    for view in installed:
        s.tab(compute.EXTRAS[view].label)
        fig = s.wait_figure(f"{view}-0-a", lambda f: f["title"] or f["notes"], timeout=180)
        assert not fig["notes"].startswith("Something went wrong"), fig["notes"]
        s.screenshot(view)
    s.check_clean()
