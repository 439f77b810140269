# Two commands do all setup on a fresh machine with Python 3.11+ and make:
#   make up     run a local cluster (embedded Valkey + 3 nodes), web UI at http://127.0.0.1:8000
#   make test   create .venv, install, lint, type-check and run the tests (the browser client's with Node)
#   make env    random secrets for docker compose into ./.env (untracked; never overwritten)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
ENV_FILE ?= .env

BENCH_SCENARIOS ?= steady burst rooms idle
# Many rooms (1,000) on one Redis and on a local Redis Cluster of 3 primaries: Redis CPU per shard.
BENCH_SHARDED_SCENARIO ?= rooms1000
BENCH_SHARDS ?= 1 3

WEB_STAMP := web/node_modules/.installed

.PHONY: install up env test lint typecheck web-test loadtest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/tidings up --nodes 3

# docker-compose.yml has no default secrets and refuses to start without them. This writes strong
# random ones once (O_EXCL, mode 600): an existing file, with secrets the cluster already uses, is kept.
env:
	@if [ -e "$(ENV_FILE)" ]; then \
	    echo "$(ENV_FILE) exists: left as it is (remove it to make new secrets)"; \
	else \
	    $(PYTHON) -c 'import os, secrets, sys; \
	        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600); \
	        os.write(fd, ("# docker compose secrets, written by make env: keep out of version control\n" \
	            f"TIDINGS_JWT_SECRET={secrets.token_urlsafe(48)}\n" \
	            f"TIDINGS_API_KEYS={secrets.token_urlsafe(32)}\n").encode()); \
	        os.close(fd)' "$(ENV_FILE)" && \
	    echo "wrote random TIDINGS_JWT_SECRET and TIDINGS_API_KEYS to $(ENV_FILE)"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check server client tests loadtest examples
	$(BIN)/ruff format --check server client tests loadtest examples

# mypy cannot follow setuptools' editable import hook, so it reads the packages through symlinks.
typecheck: $(STAMP)
	mkdir -p build/typecheck/tidings
	ln -sfn ../../../server build/typecheck/tidings/server
	ln -sfn ../../../client build/typecheck/tidings/client
	MYPYPATH=build/typecheck $(BIN)/mypy -p tidings.server -p tidings.client
	MYPYPATH=build/typecheck $(BIN)/mypy examples

# The browser client as the package tidings-client (web/package.json): its dev dependencies from the
# committed lock file, tsc over tidings.d.ts and examples/typed.ts, and its tests under Node's runner
# against a live `tidings serve` node. Runs before pytest, so pytest's summary is the last line.
$(WEB_STAMP): web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund
	touch $(WEB_STAMP)

# Without Node.js (npm) the browser client's checks are skipped with a notice; in CI (CI=true) that fails.
web-test: $(STAMP)
	@if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then \
	    if [ "$$CI" = "true" ]; then echo "web-test: node and npm are required in CI" >&2; exit 1; fi; \
	    echo "web-test: SKIPPED (install Node.js 18+ with npm to type-check and test web/)"; exit 0; \
	fi; \
	$(MAKE) --no-print-directory $(WEB_STAMP) && \
	web/node_modules/.bin/tsc --noEmit -p web/ && \
	TIDINGS_BIN=$(abspath $(BIN))/tidings node --test web/test/*.test.js

test: lint typecheck web-test
	PYTHONASYNCIODEBUG=$${PYTHONASYNCIODEBUG:-0} $(BIN)/pytest $(PYTEST_ARGS)

# A short headless locust run against a fresh `tidings up --nodes 3`; the exit code is the verdict.
loadtest: $(STAMP)
	mkdir -p loadtest/reports
	$(BIN)/python -m loadtest.run_cluster --nodes 3 -- \
	    $(BIN)/locust -f loadtest/locustfile.py --headless -u 150 -r 50 -t 30s \
	    --html loadtest/reports/run.html ChatUser ReconnectingChatUser BroadcastPublisher BroadcastListener

# The four fan-out scenarios of BENCHMARKS.md against a fresh local 2-node cluster each (one embedded
# Valkey), then many rooms on 1 shard (the one Valkey) and on a 3-primary Redis Cluster.
bench: $(STAMP)
	for scenario in $(BENCH_SCENARIOS); do \
	    $(BIN)/python -m loadtest.run_cluster --nodes 2 -- \
	        $(BIN)/python -m loadtest.fanout --scenario $$scenario || exit 1; \
	done
	for shards in $(BENCH_SHARDS); do \
	    $(BIN)/python -m loadtest.run_cluster --nodes 2 --shards $$shards -- \
	        $(BIN)/python -m loadtest.fanout --scenario $(BENCH_SHARDED_SCENARIO) || exit 1; \
	done

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache web/node_modules

# Issue 16 (round 2 of performance): what a connect costs (2 nodes, 5,000 connects with 200 in flight,
# Redis commands per connect) and a reconnect storm (3 nodes, 6,000 clients, one node SIGKILLed; the
# storm starts its own Valkey and nodes). `make bench` runs them first, then the fan-out scenarios.
.PHONY: bench-round2 baseline-connects
bench: bench-round2
bench-round2: $(STAMP)
	$(BIN)/python -m loadtest.run_cluster --nodes 2 -- $(BIN)/python -m loadtest.fanout --scenario connects
	$(BIN)/python -m loadtest.storm

# The same connects against socket.io 4 + its Redis adapter (loadtest/baseline/README.md; needs Node.js),
# plain, then with the app announcing each join to the room's members (Tidings' join push).
baseline-connects: $(STAMP)
	cd loadtest/baseline/socketio && npm ci --no-audit --no-fund
	$(BIN)/python loadtest/baseline/socketio_bench.py --scenario connects
	$(BIN)/python loadtest/baseline/socketio_bench.py --scenario connects --announce-joins
