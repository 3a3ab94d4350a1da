# The two quick-start targets: `make demo` (the main job on built-in defaults) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make EDITABLE= test` installs promptgrid as a user would (CI does), so tests import the installed package.
EDITABLE ?= -e

.PHONY: demo test test-slow test-all test-fast lint typecheck layers bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(EDITABLE) '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/promptgrid run configs/demo.yaml --sandbox

# The README's test command: unit and quick integration tests, one worker per core (pytest-xdist). A test
# needing a system package that is missing (fonts, Chromium, redis-server) skips, naming the install command.
test: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -m "not slow" -n auto

# The slow tier alone (real `prefect server` and workers, killed and resumed runs): CI runs it after `make test`.
test-slow: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -m slow -n auto

# Everything: `make test` and the slow tier in one go.
test-all: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -n auto

# The unit tests alone: no Prefect server, killed process, browser or Redis; one worker per core.
test-fast: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -m "not integration" -n auto

lint: $(STAMP) typecheck layers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy and import-linter read the source tree itself (src/promptgrid is the package, import path = file path).
typecheck: $(STAMP)
	$(BIN)/mypy

# The layer rules in pyproject.toml's [tool.importlinter]: no stage imports a stage above it, no cycles.
layers: $(STAMP)
	PYTHONPATH=$(CURDIR)/src $(BIN)/lint-imports pyproject.toml --no-cache
