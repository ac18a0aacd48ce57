# Two commands on a fresh machine:
#   make dev    run the tier on its embedded default (local nats-server + two edges)
#   make test   run the linters and the whole test suite against real components
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test lint pytest install clean

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

test: lint pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
