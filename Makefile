# Two commands on a fresh machine:  `make demo` (the main job on the embedded toy suite) and `make test`.
# Both install into a project virtualenv, .venv, and run from it; the interpreter that makes it is left untouched,
# so they work on a distribution's own Python too (Debian 12+, Ubuntu 23.04+ and Fedora refuse `pip install` there).

# The interpreter that makes .venv (any Python >= 3.10): `make demo PY=python3.12`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= report
# Installed first and pinned to the tested release, so the package's `torch>=2.4` is already met and pip pulls
# no other build (the newest on the registry is a CUDA build of several GB). `make demo TORCH=torch==X.Y` changes it.
TORCH ?= torch==2.13.0
# Touched once .venv holds everything; a pyproject.toml newer than it means: install again.
STAMP := $(VENV)/.install-stamp

.PHONY: install demo test test-all bench browser clean

install: $(STAMP)

# tools/venv.sh reuses a working .venv, or makes one (installing Debian's python3-venv first when run as root,
# else stopping with one line that names it).
$(STAMP): pyproject.toml
	@sh tools/venv.sh "$(PY)" "$(VENV)"
	@echo "installing $(TORCH), then this package with its dev extra, into $(VENV) (a few minutes, once)"
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

demo: install
	$(BIN)/pythia-interp report --model toy --out $(OUT)
	@echo "open $(OUT)/report.html"

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: install
	$(BIN)/python bench/cache_overhead.py

# Debian's Chromium, for PNG export and the browser tests.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Everything the commands above made: the virtualenv, the report, build output and caches.
clean:
	rm -rf "$(VENV)" .install-stamp report build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
