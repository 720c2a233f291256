"""How fast the explorer answers: from a click to the re-rendered figure, on the toy suite, CPU.

    $ python bench/app.py                    # server-side callbacks, then the browser end to end
    $ python bench/app.py --rounds 7 --no-browser

Two measures, side by side with the targets (a click <= 1 s, a model switch <= 3 s):

- server: the callbacks one action fires, called through the app's real HTTP endpoint (Flask's
  test client: Dash's dispatch and JSON included), one after the other; "cold" actions find
  nothing cached (a new prompt, a checkpoint or model not loaded), "cached" ones repeat a view.
  Beside each, the analysis alone (patterns + its figure) on the same input, for scale.
- browser: `python -m analyses.app` in a subprocess, driven by headless Chromium (Playwright):
  the time from the click (or key press) to the new figure being in the DOM, polled every frame.
  The server keeps one model at a time (--memory-budget tiny), so every switch loads weights.
  Beside each, "[CPU s]": the CPU seconds the server, Playwright and Chromium spent on it, which
  bounds what the action costs on an idle machine (the wall time grows with the machine's load).

Medians over --rounds; the machine's load is printed, since a shared CPU slows both sides.
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
ATTENTION = ["head-a.figure", "strip-a.figure"]  # what a head click or a new prompt re-renders


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def server_side(rounds: int) -> dict[str, list[float]]:
    """Seconds per action, each action being every callback it fires, through the HTTP endpoint."""
    from analyses.attention_maps import patterns

    from analyses.app.callbacks import slider
    from analyses.app.catalog import Catalog
    from analyses.app.client import Client
    from analyses.app.explorer import Explorer
    from analyses.app.server import create_app

    explorer = Explorer(Catalog(hub_cache="/nonexistent"))
    client = Client(create_app(explorer))
    last = slider(explorer, "toy-2l")[2]
    out: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        out.setdefault(name, []).append(seconds)

    def fire(outputs: list[str], values: dict) -> None:
        for output in outputs:
            client.call(output, values)

    import interp

    model = interp.load("toy-2l")
    for r in range(rounds):
        prompt = f"{PROMPT} {r}"
        base = {"prompt-store.data": prompt, "rev-a.value": last, "layer.value": 0, "head.value": 0}
        fire(["msg-a.children"], base)  # the model is loaded: a prompt change, not a model load
        record("new prompt (cold)", timed(lambda b=base: fire(ATTENTION, b)))
        click = {**base, "head.value": 1}
        record("head click (cold)", timed(lambda v=click: fire(ATTENTION, v)))
        record("head click (cached)", timed(lambda v=click: fire(ATTENTION, v)))
        explorer.models._models.clear()  # another checkpoint, not loaded yet
        moved = {**base, "rev-a.value": 8 + r % 7}
        record("checkpoint slider (cold)", timed(lambda v=moved: fire(["msg-a.children", "layer.options", *ATTENTION],
                                                                         v)))
        explorer.models._models.clear()
        explorer.results.clear()
        switched = {**base, "model-a.value": "toy-4l", "rev-a.value": 15}
        record("model switch (cold)", timed(lambda v=switched: fire(
            ["rev-a.max", "msg-a.children", "layer.options", *ATTENTION], v)))
        record("analysis alone: patterns + head figure", timed(lambda p=prompt: patterns(model, p).figure(0, 1)))
    return out


def browser_side(rounds: int) -> dict[str, list[float]]:
    """Click-to-DOM seconds in headless Chromium against the real server in a subprocess."""
    from playwright.sync_api import sync_playwright

    port = 8000 + os.getpid() % 1000
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "analyses.app", "--port", str(port), "--memory-budget", "1e-9"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, list[float]] = {}

    def measure(name: str, act, done) -> None:
        """Wall seconds from `act()` to `done()`, and the CPU seconds the server and browser spent."""
        cpu, start = _cpu(), time.perf_counter()
        act()
        done()
        out.setdefault(name, []).append(time.perf_counter() - start)
        out.setdefault(f"{name} [CPU s]", []).append(_cpu() - cpu)

    try:
        url = _wait(f"http://127.0.0.1:{port}/", proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            _until(page, "toy-2l@step3600 · L0H0", 120)
            for r in range(rounds):
                page.fill("#prompt", f"{PROMPT} {r}")
                page.click("#run")
                _settled(page)
                current = int(page.locator("#head input:checked").get_attribute("value"))
                head = (current + 1) % 3  # always another head than the one shown
                measure("head click", lambda h=head: page.locator(f"#head input[value='{h}']").check(),
                        lambda h=head: _until(page, f"· L0H{h}", 30))
                _settled(page)
                page.locator("#rev-a [role=slider]").focus()
                measure("checkpoint slider (model reloaded)", lambda: page.keyboard.press("ArrowLeft"),
                        lambda: _until(page, "@step3150", 30))  # step3600 -> step3150
                for name in ("toy-4l", "toy-2l"):  # toy-2l comes back at its final step
                    _settled(page)
                    page.click("#model-a")
                    page.locator("input.dash-dropdown-search").fill(name)
                    option = page.get_by_role("option", name=f"{name} (embedded toy)")
                    measure("model switch (model reloaded)", option.click,
                            lambda n=name: _until(page, f"{n}@step3600", 60))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return out


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
    """Wait until no component is waiting for a callback, and a little more for plotly to draw."""
    time.sleep(0.2)
    page.wait_for_function("() => !document.querySelector('[data-dash-is-loading=\"true\"]')", polling="raf",
                           timeout=60_000)
    time.sleep(0.3)


def _until(page, text: str, seconds: float) -> None:
    """Wait (polling every animation frame) until the head figure's title contains `text`."""
    page.wait_for_function(
        "t => { const gd = document.querySelector('#head-a .js-plotly-plot');"
        " return !!(gd && gd.layout && gd.layout.title && (gd.layout.title.text || '').includes(t)); }",
        arg=text, polling="raf", timeout=seconds * 1000)


def report(title: str, results: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    print(f"| {'action':44} | median s | min s | target s | x target |")
    print(f"|{'-' * 46}|----------|-------|----------|----------|")
    for name, values in results.items():
        plain = "alone" not in name and "CPU" not in name
        target = (TARGET_SWITCH if "model switch" in name else TARGET_CLICK) if plain else None
        med = statistics.median(values)
        ratio = f"{med / target:8.2f}" if target else "       -"
        shown = f"{target:8.1f}" if target else "       -"
        print(f"| {name:44} | {med:8.3f} | {min(values):5.3f} | {shown} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true", help="only the server-side measure")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads 1; {args.rounds} rounds")
    report("server side: the callbacks of one action through the HTTP endpoint", server_side(args.rounds))
    if not args.no_browser:
        report("browser end to end: click to re-rendered figure in the DOM", browser_side(args.rounds))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
