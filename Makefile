# Two commands on a fresh machine:
#   make dev    run the tier on its embedded default (local nats-server + two edges)
#   make test   run the linters and the whole test suite against real components
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test lint pytest install clean js bundle dist bench

$(BIN)/switchboard: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/switchboard

dev: install
	$(BIN)/switchboard dev

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: install
	$(BIN)/pytest

# The browser SDK (clients/js): dev tools from the npm registry, exactly as locked.
JS := clients/js

$(JS)/node_modules/.package-lock.json: $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error

js: $(JS)/node_modules/.package-lock.json
	cd $(JS) && npm run --silent build

# After changing clients/js/src: the bundle the edge serves (committed; a test compares).
bundle: js
	cp $(JS)/dist/switchboard.min.js edge/static/switchboard.js

test: lint js pytest

# Release artifacts in $(DIST)/: the Python distribution `switchboard-ws` (sdist, and
# the wheel built from that sdist, offline with this venv's setuptools) and the Helm
# chart as `helm package` makes it (Helm's own engine, from helm-python-sdk).
DIST ?= dist

dist: install
	rm -rf $(DIST)
	$(BIN)/python -m build --no-isolation --outdir $(DIST) .
	$(BIN)/python -c 'import sys, helm_python; print(helm_python.package(sys.argv[1], destination=sys.argv[2]))' charts/switchboard $(DIST)

# Issue 15's comparison (docs/benchmarks.md, "Against Centrifugo"): the edge, nats-server's
# WebSocket listener and Centrifugo, driven by the Go load generator in bench/loadgen.
# Needs Go; builds Centrifugo once into ~/.cache/switchboard-bench. BENCH_ARGS=--quick
# for a short smoke run (docs untouched).
bench: install
	$(BIN)/python bench/compare.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info $(JS)/node_modules $(JS)/dist dist
