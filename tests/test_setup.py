"""The README's set-up: tools/venv.sh on interpreters with and without venv, and `make demo` on the system Python.

The fast tests drive tools/venv.sh with stand-ins for python3 (one whose ensurepip is hidden, as on Debian without
python3-venv), `id`, `apt-get` and `uv`. The slow ones run `make demo` in a fresh clone of this commit on
/usr/bin/python3, which refuses `pip install` there (PEP 668), so only a project virtualenv can make them pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_SH = REPO / "tools" / "venv.sh"
SYSTEM_PY = Path("/usr/bin/python3")
FIX = re.compile(r"apt-get install python3(\.\d+)?-venv")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would leak its own virtualenv or make's flags into a child."""
    leaks = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
    return {**{k: v for k, v in os.environ.items() if k not in leaks}, **extra}


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------- tools/venv.sh with stand-ins (fast)


class Fakes:
    """A bin directory of stand-ins; `state` records what they did."""

    def __init__(self, root: Path):
        self.bin = root / "fakebin"
        self.state = root / "state"
        self.bin.mkdir()
        self.state.mkdir()
        shadow = root / "shadow"  # on PYTHONPATH, hides the standard library's ensurepip
        shadow.mkdir()
        (shadow / "ensurepip.py").write_text("raise ImportError(\"No module named 'ensurepip'\")\n")
        # python3 without venv support until apt-get has "installed" python3-venv
        self.python = write_script(
            self.bin / "python3",
            f'[ -e "{self.state}/installed" ] || export PYTHONPATH="{shadow}"\nexec "{sys.executable}" "$@"\n',
        )
        write_script(self.bin / "id", f'cat "{self.state}/uid"\n')
        write_script(
            self.bin / "apt-get",
            f'echo "$*" >> "{self.state}/apt.log"\n'
            f'[ -e "{self.state}/apt-fails" ] && exit 100\n'
            f'case "$1" in install) touch "{self.state}/installed";; esac\n',
        )
        self.uv = write_script(
            root / "uv",
            f'echo "$*" >> "{self.state}/uv.log"\nfor last; do :; done\nexec "{sys.executable}" -m venv "$last"\n',
        )
        self.uid(1000)

    def uid(self, uid: int) -> None:
        (self.state / "uid").write_text(f"{uid}\n")

    def log(self, name: str) -> list[str]:
        path = self.state / f"{name}.log"
        return path.read_text().splitlines() if path.exists() else []

    def run(self, venv: Path, py: Path | str | None = None, uv: Path | None = None) -> subprocess.CompletedProcess:
        env = clean_env(PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}", UV=str(uv or self.bin / "no-uv"))
        args = ["sh", str(VENV_SH), str(py or self.python), str(venv)]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def fakes(tmp_path) -> Fakes:
    return Fakes(tmp_path)


def runs_pip(venv: Path) -> bool:
    return subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], capture_output=True).returncode == 0


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected a single error line, got {len(lines)}:\n{stderr}"
    return lines[0]


def test_the_stand_in_python_lacks_venv_until_installed(fakes):
    probe = [str(fakes.python), "-c", "import ensurepip, venv"]
    assert subprocess.run(probe, env=clean_env(), capture_output=True).returncode != 0
    (fakes.state / "installed").touch()
    assert subprocess.run(probe, env=clean_env(), capture_output=True).returncode == 0


def test_without_venv_as_a_user_it_stops_with_one_line_naming_the_fix(fakes, tmp_path):
    result = fakes.run(tmp_path / ".venv")
    assert result.returncode != 0
    assert FIX.search(one_line(result.stderr)), result.stderr
    assert not (tmp_path / ".venv").exists(), "nothing half-made may be left behind"
    assert fakes.log("apt") == [], "a non-root user's packages must not be touched"


def test_without_venv_as_root_it_installs_python3_venv_and_carries_on(fakes, tmp_path):
    fakes.uid(0)
    result = fakes.run(tmp_path / ".venv")
    assert result.returncode == 0, result.stderr
    apt = fakes.log("apt")
    assert len(apt) == 2 and apt[0].startswith("update"), apt
    assert apt[1].startswith("install -y") and re.search(r"python3(\.\d+)?-venv$", apt[1]), apt
    assert runs_pip(tmp_path / ".venv")


def test_as_root_a_failed_apt_get_stops_with_one_line(fakes, tmp_path):
    fakes.uid(0)
    (fakes.state / "apt-fails").touch()
    result = fakes.run(tmp_path / ".venv")
    assert result.returncode != 0
    assert "failed" in one_line(result.stderr) and FIX.search(result.stderr), result.stderr
    assert not (tmp_path / ".venv").exists()


def test_without_venv_uv_makes_it_when_installed(fakes, tmp_path):
    result = fakes.run(tmp_path / ".venv", uv=fakes.uv)
    assert result.returncode == 0, result.stderr
    assert fakes.log("uv") == [f"venv --quiet --seed --python {fakes.python} {tmp_path / '.venv'}"]
    assert fakes.log("apt") == []
    assert runs_pip(tmp_path / ".venv")


def test_a_working_venv_is_reused_and_a_half_made_one_replaced(fakes, tmp_path):
    venv = tmp_path / ".venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /nowhere\n")  # what a failed `python -m venv` leaves
    result = fakes.run(venv, py=sys.executable)
    assert result.returncode == 0, result.stderr
    assert runs_pip(venv)
    (venv / "mine").touch()
    again = fakes.run(venv)  # the stand-in python cannot make one: only reuse can succeed
    assert again.returncode == 0, again.stderr
    assert (venv / "mine").exists(), "a working virtualenv must be reused as it is"


def test_a_directory_that_is_not_a_venv_is_left_alone(fakes, tmp_path):
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "notes.txt").write_text("mine")
    result = fakes.run(tmp_path / ".venv", py=sys.executable)
    assert result.returncode != 0
    assert "not a virtualenv" in one_line(result.stderr)
    assert (tmp_path / ".venv" / "notes.txt").read_text() == "mine"


def test_a_missing_python_is_named(fakes, tmp_path):
    result = fakes.run(tmp_path / ".venv", py=tmp_path / "python9")
    assert result.returncode != 0
    assert str(tmp_path / "python9") in one_line(result.stderr)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_stops_before_pip_when_no_venv_can_be_made(fakes, tmp_path):
    env = clean_env(PATH=f"{fakes.bin}{os.pathsep}{os.environ['PATH']}", UV=str(fakes.bin / "no-uv"))
    args = ["make", "--no-print-directory", "-C", str(REPO), "install", f"PY={fakes.python}", f"VENV={tmp_path / 'v'}"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert FIX.search(result.stderr), result.stderr
    assert "pip install" not in result.stdout + result.stderr, "no install may be attempted without a virtualenv"


# ---------------------------------------------------------------- `make demo` on the system Python (slow)


def externally_managed(py: Path) -> bool:
    """PEP 668: the interpreter's stdlib directory holds an EXTERNALLY-MANAGED marker."""
    code = "import sysconfig; print(sysconfig.get_path('stdlib'))"
    out = subprocess.run([py, "-I", "-c", code], capture_output=True, text=True)
    return out.returncode == 0 and (Path(out.stdout.strip()) / "EXTERNALLY-MANAGED").exists()


def make(clone: Path, *targets: str, dry: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    args = ["make", "--no-print-directory", *(["-n"] if dry else []), *targets, f"PY={SYSTEM_PY}"]
    start = time.perf_counter()
    result = subprocess.run(args, cwd=clone, env=clean_env(), capture_output=True, text=True, timeout=1800)
    return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A fresh clone of this commit, `make demo` run in it twice on the system Python."""
    if not SYSTEM_PY.exists():
        pytest.skip(f"no {SYSTEM_PY}")
    if not externally_managed(SYSTEM_PY):
        pytest.skip(f"{SYSTEM_PY} is not externally managed (PEP 668), so it would not show the set-up's point")
    if shutil.which("make") is None or shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs make, git and this repository's git checkout")
    clone = tmp_path_factory.mktemp("setup") / "pythia-interp"
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", REPO, clone], check=True)
    subprocess.run(["git", "-C", clone, "checkout", "--quiet", "--detach", head.stdout.strip()], check=True)
    first, first_s = make(clone, "demo")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    stamp = (clone / ".venv" / ".install-stamp").stat().st_mtime_ns
    second, second_s = make(clone, "demo")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    print(f"make demo on {SYSTEM_PY}: fresh {first_s:.0f} s, again {second_s:.0f} s")
    yield dict(clone=clone, first=first, second=second, stamp=stamp)
    shutil.rmtree(clone)  # a virtualenv with torch: gigabytes


@pytest.mark.slow
def test_make_demo_writes_the_report(demo):
    html = (demo["clone"] / "report" / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<title>pythia-interp report: toy" in html and "<section" in html
    assert len(html) > 100_000, "plotly.js is inlined, so a real report is large"


@pytest.mark.slow
def test_make_demo_installs_into_the_venv_not_the_system_python(demo, tmp_path):
    clone = demo["clone"]
    assert (clone / ".venv" / "bin" / "pythia-interp").exists()
    where = "import importlib.util as u; s = u.find_spec('interp'); print(s.origin if s else '')"
    system = subprocess.run([SYSTEM_PY, "-c", where], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert system.returncode == 0 and system.stdout.strip() == "", f"the system python sees interp: {system.stdout}"
    venv = subprocess.run([clone / ".venv/bin/python", "-c", where], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True)
    assert Path(venv.stdout.strip()).is_relative_to(clone / "interp"), venv.stdout + venv.stderr
    prefix = "import sys; print(sys.base_prefix)"
    made_from, system_prefix = (subprocess.run([py, "-c", prefix], capture_output=True, text=True).stdout
                                for py in (clone / ".venv/bin/python", SYSTEM_PY))
    assert made_from == system_prefix, "the venv must be made from the PY given to make"


@pytest.mark.slow
def test_a_second_make_demo_reuses_the_venv(demo):
    assert (demo["clone"] / ".venv" / ".install-stamp").stat().st_mtime_ns == demo["stamp"]
    out = demo["second"].stdout + demo["second"].stderr
    assert "pip install" not in out and "installing" not in out, out
    assert "pip install" in demo["first"].stdout


@pytest.mark.slow
def test_the_wheel_ships_the_toy_suite(demo, tmp_path):
    clone, python = demo["clone"], demo["clone"] / ".venv" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path, clone],
                   env=clean_env(), check=True, capture_output=True)
    (wheel,) = tmp_path.glob("pythia_interp-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "-C", clone, "ls-files", "interp/toy/models"], capture_output=True, text=True)
    wanted = set(tracked.stdout.split())
    assert any(p.endswith("model.safetensors") for p in wanted) and any(p.endswith("tokenizer.json") for p in wanted)
    assert wanted <= shipped, f"missing from the wheel: {sorted(wanted - shipped)[:5]}"
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); import interp; print(interp.__file__); "
            "m = interp.load('toy'); print(tuple(m('The cat sat. The cat').shape))")
    out = subprocess.run([python, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    origin, shape = out.stdout.split("\n")[:2]
    assert Path(origin).is_relative_to(tmp_path / "site"), "the toy suite must load from the wheel, not the clone"
    assert shape.startswith("(1, ")


@pytest.mark.slow
def test_a_changed_pyproject_reinstalls_and_clean_removes_everything(demo):
    clone = demo["clone"]
    stamp = clone / ".venv" / ".install-stamp"
    assert "pip install" not in make(clone, "demo", dry=True)[0].stdout
    later = stamp.stat().st_mtime + 10
    os.utime(clone / "pyproject.toml", (later, later))
    assert "pip install" in make(clone, "demo", dry=True)[0].stdout
    cleaned, _ = make(clone, "clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (clone / ".venv").exists() and not (clone / "report").exists()
    assert not list(clone.rglob("__pycache__"))
