# The two quick-start targets: `make demo` (the main job on built-in defaults) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/promptgrid run configs/demo.yaml --sandbox

test: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest

lint: $(STAMP) typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow package-dir (tasks/, flows/ and sandbox/ install beneath promptgrid), so it checks a
# farm of links laid out as the installed package.
TYPECHECK := build/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK)/promptgrid && mkdir -p $(TYPECHECK)/promptgrid
	cp -rs $(CURDIR)/src/promptgrid/. $(TYPECHECK)/promptgrid/
	for d in tasks flows sandbox; do cp -rs $(CURDIR)/$$d $(TYPECHECK)/promptgrid/$$d; done
	find $(TYPECHECK) -name __pycache__ -prune -exec rm -rf {} +
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p promptgrid
