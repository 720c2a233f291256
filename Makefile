# Two commands on a fresh machine:  `make demo` (the main job on the embedded toy suite) and `make test`.
PY ?= python3
OUT ?= report

.PHONY: install demo test test-all bench browser

install: .install-stamp

# torch first and pinned: an unpinned dependency would pull a CUDA build.
.install-stamp: pyproject.toml
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch .install-stamp

demo: install
	pythia-interp report --model toy --out $(OUT)
	@echo "open $(OUT)/report.html"

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

bench: install
	$(PY) bench/cache_overhead.py

# Debian's Chromium, for PNG export and the browser tests.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
