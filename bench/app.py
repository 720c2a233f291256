"""How fast the explorer answers: from a click to the re-rendered figures, on the toy suite, CPU.

    $ python bench/app.py                    # server side, then the browser end to end
    $ python bench/app.py --rounds 7 --no-browser

Two measures, side by side with the targets (a click <= 1 s, a model switch <= 3 s):

- server: the one request an action sends, through the app's real HTTP endpoint (Flask's test
  client: Dash's dispatch and JSON included), carrying the page's record of what it shows from one
  action to the next as the browser does. "cold": the checkpoint or model is not loaded; "prefetched":
  the slider's neighbour was computed in the background after the previous answer.
- browser: `python -m analyses.app` in a subprocess, driven by headless Chromium (Playwright). The
  time runs in the page, from the input event (key, click) to the last `plotly_afterplot` of the
  figures the action changes: every figure of the view re-rendered, not just the server's answer.
  Two servers: one with the default memory budget (neighbouring checkpoints prefetched), one that
  keeps a single model (--memory-budget tiny: every checkpoint or model change loads weights).
  Beside each, "[CPU s]": the CPU seconds the server, Playwright and Chromium spent on it, which
  bounds what the action costs on an idle machine (the wall time grows with the machine's load).

Medians over --rounds; the machine's load is printed before and after, since a shared CPU slows
both sides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = "The cat sat on the mat. The cat sat on the mat. A dog ran in the park"
TARGET_CLICK, TARGET_SWITCH = 1.0, 3.0
VIEW = ("head-a", "grid-a", "strip-a", "tokens-a")  # the attention view's figures
HOOK = """() => {
  window.__t0 = null; window.__drawn = {};
  const start = () => { if (window.__t0 === null) window.__t0 = performance.now(); };
  for (const type of ['keydown', 'mousedown', 'click']) document.addEventListener(type, start, true);
  setInterval(() => document.querySelectorAll('.js-plotly-plot').forEach(gd => {
    if (gd.__timed) return; gd.__timed = true;
    gd.on('plotly_afterplot', () => { if (window.__t0 !== null) {
      const id = gd.closest('[id]').id; (window.__drawn[id] = window.__drawn[id] || []).push(performance.now()); } });
  }), 20);
}"""
TITLE = "id => { const gd = document.querySelector('#' + id + ' .js-plotly-plot'); return gd && gd.layout && " \
        "gd.layout.title ? gd.layout.title.text || '' : ''; }"
DONE = """([graphs, head, title, before]) => {
  const gd = document.querySelector('#' + head + ' .js-plotly-plot');
  const now = gd && gd.layout && gd.layout.title ? gd.layout.title.text || '' : '';
  const ok = title ? now.includes(title) : now !== before;
  return ok && graphs.every(g => window.__drawn[g]) && !document.querySelector('[data-dash-is-loading="true"]');
}"""
PANE_B = ("head-b", "grid-b", "strip-b", "tokens-b", "diff-attention")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def server_side(rounds: int) -> dict[str, list[float]]:
    """Seconds per action: its one request through the HTTP endpoint, the page's record carried along."""
    import interp
    from analyses.app import compute
    from analyses.app.catalog import Catalog
    from analyses.app.client import Client
    from analyses.app.explorer import Explorer
    from analyses.app.server import create_app

    explorer = Explorer(Catalog(hub_cache="/nonexistent"))
    client = Client(create_app(explorer))
    model, out = interp.load("toy-2l"), {}
    page = {"rev-a.value": 15, "layer.value": 0, "head.value": 0}

    def act(name: str, changed: str, **values) -> None:
        page.update(values)
        start = time.perf_counter()
        answer = client.call("head-a.figure", page, changed=[changed])
        out.setdefault(name, []).append(time.perf_counter() - start)
        page["shown.data"] = answer.get("shown.data", page.get("shown.data"))
        page.update({k: v for k, v in answer.items() if k in ("rev-a.value", "layer.value", "head.value")})

    for r in range(rounds):
        prompt = f"{PROMPT} {r}"
        act("new prompt (cold)", "run.n_clicks", **{"prompt.value": prompt})
        act("head click", "head.value", **{"head.value": 1 + r % 2})
        explorer.models._models.clear()
        act("checkpoint slider (cold: model loaded)", "rev-a.value", **{"rev-a.value": 8 + r % 7})
        explorer.background.wait()
        act("checkpoint slider (prefetched)", "rev-a.value", **{"rev-a.value": 7 + r % 7})
        explorer.background.wait()
        explorer.models._models.clear()
        act("model switch (cold: model loaded)", "model-a.value", **{"model-a.value": "toy-4l"})
        act("model switch back (cold: model loaded)", "model-a.value", **{"model-a.value": "toy-2l"})
        explorer.background.wait()
        out.setdefault("analysis alone: patterns + head figure", []).append(
            timed(lambda p=prompt: compute.attention().patterns(model, p).figure(0, 1)))
    return out


def browser_side(rounds: int, budget: str) -> dict[str, list[float]]:
    """Input-event-to-last-afterplot seconds in headless Chromium against the real server in a subprocess."""
    from playwright.sync_api import sync_playwright

    port = 8000 + os.getpid() % 1000
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "analyses.app", "--port", str(port), "--memory-budget", budget],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cold = float(budget) < 1e-3
    out: dict[str, list[float]] = {}
    try:
        url = _wait(f"http://127.0.0.1:{port}/", proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(f"({HOOK})()")
            page.goto(url)
            _until(page, "toy-2l@step3600 · L0H0", 120)
            for r in range(rounds):
                _round(page, r, cold, out)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return out


def _round(page, r: int, cold: bool, out: dict) -> None:
    """One round of actions, each timed from its input event to its figures re-rendered."""
    suffix = "model loaded" if cold else "prefetched"
    page.fill("#prompt", f"{PROMPT} {r}")
    page.click("#run")
    _settled(page)
    if not cold:
        current = int(page.locator("#head input:checked").get_attribute("value"))
        head = (current + 1) % 3  # always another head than the one shown
        _measure(page, out, "head click", lambda: page.locator(f"#head input[value='{head}']").check(),
                 ("head-a", "strip-a"), f"· L0H{head}")
    page.locator("#rev-a [role=slider]").focus()
    at_end = page.inner_text("#revision-a").strip() == "step3600"
    step = ("ArrowLeft", "step3150") if at_end else ("ArrowRight", "step3600")
    _measure(page, out, f"checkpoint slider ({suffix})", lambda: page.keyboard.press(step[0]), VIEW, step[1])
    if not cold:
        _compare(page, out)
    if cold:
        for name in ("toy-4l", "toy-2l"):  # each comes back at its final step
            page.click("#model-a")
            page.locator("input.dash-dropdown-search").fill(name)
            option = page.get_by_role("option", name=f"{name} (embedded toy)")
            _measure(page, out, f"model switch ({suffix})", option.click, VIEW, f"{name}@step3600", 60)


def _compare(page, out: dict) -> None:
    """Compare mode: a head click redraws both panes and their difference; pane B's slider, B and the difference."""
    page.locator("#compare input").set_checked(True)
    _settled(page)
    current = int(page.locator("#head input:checked").get_attribute("value"))
    head = (current + 1) % 2  # a head both toy-2l and toy-gpt2 have
    click = page.locator(f"#head input[value='{head}']").check
    _measure(page, out, "compare mode: head click (both panes)", click, ("head-a", "strip-a", *PANE_B[::2]),
             f"· L0H{head}")
    page.locator("#rev-b [role=slider]").focus()
    key = "ArrowLeft" if page.inner_text("#revision-b").strip() == "step3600" else "ArrowRight"
    _measure(page, out, "compare mode: pane B's checkpoint slider", lambda: page.keyboard.press(key), PANE_B,
             graph="head-b")
    page.locator("#compare input").set_checked(False)


def _measure(page, out: dict, name: str, act, graphs: tuple[str, ...], title: str = "", seconds: float = 30,
             graph: str = "head-a") -> None:
    """Seconds from `act`'s input event to the last of `graphs` re-rendered, once `graph`'s title shows
    `title` (or, without one, once it changed)."""
    _settled(page)
    page.evaluate("window.__t0 = null; window.__drawn = {}")
    before = page.evaluate(TITLE, graph)
    cpu = _cpu()
    act()
    page.wait_for_function(DONE, arg=[list(graphs), graph, title, before], polling="raf", timeout=seconds * 1000)
    time.sleep(0.3)  # late redraws (a resize, a second answer) would show up here
    drawn, t0 = page.evaluate("window.__drawn"), page.evaluate("window.__t0")
    out.setdefault(name, []).append(max(max(drawn[g]) for g in graphs if g in drawn) / 1000 - t0 / 1000)
    out.setdefault(f"{name} [CPU s]", []).append(_cpu() - cpu)
    out.setdefault(f"{name} [figures drawn]", []).append(sum(len(v) for v in drawn.values()))


def _cpu() -> float:
    """CPU seconds used so far by this process's children: the server, Playwright's driver, Chromium."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _wait(url: str, proc: subprocess.Popen) -> str:
    import urllib.request

    for _ in range(240):
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            urllib.request.urlopen(url, timeout=2)
            return url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def _settled(page) -> None:
    """Wait until no component waits for a callback, then for the background prefetch to be done."""
    time.sleep(0.2)
    page.wait_for_function("() => !document.querySelector('[data-dash-is-loading=\"true\"]')", polling="raf",
                           timeout=60_000)
    time.sleep(1.0)


def _until(page, text: str, seconds: float) -> None:
    """Wait (polling every animation frame) until the head figure's title contains `text`."""
    page.wait_for_function(
        "t => { const gd = document.querySelector('#head-a .js-plotly-plot');"
        " return !!(gd && gd.layout && gd.layout.title && (gd.layout.title.text || '').includes(t)); }",
        arg=text, polling="raf", timeout=seconds * 1000)


def report(title: str, results: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    print(f"| {'action':58} | median s | min s | target s | x target |")
    print(f"|{'-' * 60}|----------|-------|----------|----------|")
    for name, values in results.items():
        plain = "alone" not in name and "[" not in name
        target = (TARGET_SWITCH if "model switch" in name else TARGET_CLICK) if plain else None
        med = statistics.median(values)
        ratio = f"{med / target:8.2f}" if target else "       -"
        shown = f"{target:8.1f}" if target else "       -"
        print(f"| {name:58} | {med:8.3f} | {min(values):5.3f} | {shown} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true", help="only the server-side measure")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads 1; {args.rounds} rounds")
    report("server side: the one request of each action, through the HTTP endpoint", server_side(args.rounds))
    if not args.no_browser:
        report("browser, default memory budget: input event to every figure of the view re-rendered",
               browser_side(args.rounds, "4"))
        report("browser, one model kept (every change loads weights): input event to every figure re-rendered",
               browser_side(args.rounds, "1e-9"))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
