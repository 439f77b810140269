# Two commands do all setup on a fresh machine with Python 3.11+ and make:
#   make up     run a local cluster (embedded Valkey + 3 nodes), web UI at http://127.0.0.1:8000
#   make test   create .venv, install, lint, type-check and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install up test lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/tidings up --nodes 3

lint: $(STAMP)
	$(BIN)/ruff check server client tests
	$(BIN)/ruff format --check server client tests

# mypy cannot follow setuptools' editable import hook, so it reads the packages through symlinks.
typecheck: $(STAMP)
	mkdir -p build/typecheck/tidings
	ln -sfn ../../../server build/typecheck/tidings/server
	ln -sfn ../../../client build/typecheck/tidings/client
	MYPYPATH=build/typecheck $(BIN)/mypy -p tidings.server -p tidings.client

test: lint typecheck
	PYTHONASYNCIODEBUG=$${PYTHONASYNCIODEBUG:-0} $(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
