# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test test-fast lint lint-fix clean serve-demo docs docs-serve

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: these exact builds are the ones torchvision works with here.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# every extra: the tests cover serve and ONNX too
	$(PY) -m pip install --quiet -e '.[all,dev,docs]'
	# The web page test drives the system chromium (Playwright cannot download browsers here); as root with apt-get,
	# install it when missing; elsewhere that test skips and says why.
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "chromium not installed: the web page test will be skipped"
	# The sweep's PostgreSQL test starts a throwaway server from the Debian binaries (initdb, pg_ctl); installed the
	# same way when missing, else that test skips and says why.
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || \
		echo "postgresql not installed: the sweep's PostgreSQL test will be skipped"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/maskstatus demo --out demo

# Serve the newest demo run (after `make demo`) on http://127.0.0.1:8000/
serve-demo: $(STAMP)
	$(VENV)/bin/maskstatus serve "$$(ls -d demo/runs/demo-* | tail -n 1)"

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The documentation site (mkdocs-material, the `docs` extra). The reference and benchmark pages are generated on
# every build (docs/generate.py); --strict fails on broken links and missing pages.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Port 8001: serve-demo takes 8000.
docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8001

# ruff (lint rules and formatting) and mypy; the settings are in pyproject.toml
LINT_PATHS ?= src
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

# Applies ruff's safe fixes, then formats (--exit-zero: what it cannot fix is listed, and fixed by hand)
lint-fix: $(STAMP)
	$(VENV)/bin/ruff check --fix --exit-zero $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

clean:
	rm -rf demo runs .cache .pytest_cache site

# Install the wheel into a fresh virtual environment and run --help and a tiny demo there (minutes: torch is
# installed anew); .ci/run runs it after the tests.
.PHONY: wheel-check
wheel-check: $(STAMP)
	PYTHON=$(PY) .ci/wheel-check
