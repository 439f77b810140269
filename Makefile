# Two commands do all setup on a fresh machine with Python 3.11+ and make:
#   make up     run a local cluster (embedded Valkey + 3 nodes), web UI at http://127.0.0.1:8000
#   make test   create .venv, install, lint, type-check and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

BENCH_SCENARIOS ?= steady burst rooms idle

.PHONY: install up test lint typecheck loadtest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/tidings up --nodes 3

lint: $(STAMP)
	$(BIN)/ruff check server client tests loadtest
	$(BIN)/ruff format --check server client tests loadtest

# mypy cannot follow setuptools' editable import hook, so it reads the packages through symlinks.
typecheck: $(STAMP)
	mkdir -p build/typecheck/tidings
	ln -sfn ../../../server build/typecheck/tidings/server
	ln -sfn ../../../client build/typecheck/tidings/client
	MYPYPATH=build/typecheck $(BIN)/mypy -p tidings.server -p tidings.client

test: lint typecheck
	PYTHONASYNCIODEBUG=$${PYTHONASYNCIODEBUG:-0} $(BIN)/pytest $(PYTEST_ARGS)

# A short headless locust run against a fresh `tidings up --nodes 3`; the exit code is the verdict.
loadtest: $(STAMP)
	mkdir -p loadtest/reports
	$(BIN)/python -m loadtest.run_cluster --nodes 3 -- \
	    $(BIN)/locust -f loadtest/locustfile.py --headless -u 150 -r 50 -t 30s \
	    --html loadtest/reports/run.html ChatUser ReconnectingChatUser BroadcastPublisher BroadcastListener

# The four fan-out scenarios of BENCHMARKS.md against a fresh local 2-node cluster each.
bench: $(STAMP)
	for scenario in $(BENCH_SCENARIOS); do \
	    $(BIN)/python -m loadtest.run_cluster --nodes 2 -- \
	        $(BIN)/python -m loadtest.fanout --scenario $$scenario || exit 1; \
	done

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
