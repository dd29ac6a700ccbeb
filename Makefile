# UICI: `make demo` runs the main job end to end, `make test` runs every check.
# Both set themselves up: a virtual environment in .venv at the repository root.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help venv install lint format docker-engine packages logql test test-slow test-postgres serve up down demo bench clean

help:
	@echo "make demo   diagnose two broken services end to end through Prefect (UI stays up)"
	@echo "make up     start Prefect (server, work pool, deployments, worker); make down stops it"
	@echo "make serve  run the agent service (uici serve): webhook, API, events, metrics"
	@echo "make stack  UICI, Prefect, PostgreSQL and monitoring in Docker Compose; make stack-down stops it"
	@echo "make drill  break a container on that stack and wait for UICI's diagnosis"
	@echo "make test   lint, type-check and run the test suite (make test-slow: the slow tests;"
	@echo "            make test-postgres: the service and flow tests with the store on PostgreSQL)"
	@echo "make image  build the container image uici:<version> (deployments/docker/build.sh)"
	@echo "make bench  run the benchmarks in bench/"
	@echo "make format apply ruff formatting"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "UICI needs Python 3.11 or newer; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

venv install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A real Docker engine for the tests (on Debian as root it is installed and started if needed).
docker-engine:
	tests/infra/ensure_docker.sh

# pytest exits 5 when a selection (PYTEST_ARGS="-k ...") collects nothing: say so, don't fail.
# Debian's prometheus, prometheus-alertmanager (end-to-end alert tests) and postgresql (Prefect's
# database with UICI_PREFECT_DB=postgres), installed if missing.
packages:
	tests/infra/ensure_packages.sh

# Grafana's LogQL grammar (npm @grafana/lezer-logql, pinned in tests/logql) checks every LogQL
# query UICI can write; Node and npm must be installed.
logql:
	tests/infra/ensure_logql.sh

test: lint docker-engine packages logql
	@rc=0; $(BIN)/python -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected for PYTEST_ARGS='$(PYTEST_ARGS)'"; exit 0; fi; \
	exit $$rc

# The slow tests (marked `slow`: minutes each, e.g. every Docker scenario of the evaluation
# corpus created for real); .ci/run runs them after `make test`.
test-slow: docker-engine packages logql
	@rc=0; $(BIN)/python -m pytest -m slow $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no slow tests were collected for PYTEST_ARGS='$(PYTEST_ARGS)'"; exit 0; fi; \
	exit $$rc

# The service, dispatch, flow, gate and approval tests again with every store on PostgreSQL
# (tests/store_backend.py: a database per test on one cluster); .ci/run runs them too. The flow
# tests that only diagnose (the store is written as by any other test) run on SQLite only.
POSTGRES_TESTS := tests/test_api.py tests/test_dispatch.py tests/test_flows.py \
	tests/test_gate.py tests/test_approvals.py tests/test_e2e_alertmanager.py
POSTGRES_SKIP := not each_failure_yields and not the_ui_gets_phase and not unreachable_daemon
test-postgres: docker-engine packages logql
	@rc=0; UICI_TEST_STORE=postgresql $(BIN)/python -m pytest $(POSTGRES_TESTS) -k "$(POSTGRES_SKIP)" $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no PostgreSQL tests were collected for PYTEST_ARGS='$(PYTEST_ARGS)'"; exit 0; fi; \
	exit $$rc

# The agent service (Alertmanager webhook, API, events, metrics) on platform.yml's host and port.
serve: $(STAMP)
	$(BIN)/uici serve

# Prefect server + work pool + deployments + worker on 127.0.0.1 (state under .uici/).
up: $(STAMP) docker-engine
	deployments/prefect/up.sh

down:
	deployments/prefect/down.sh

# The whole system in Docker Compose (deployments/compose/README.md): the API, Prefect server,
# deployments and workers, PostgreSQL, Prometheus, Alertmanager, Loki and Grafana. Builds the
# image first when it is missing; makes .env and the keys (deployments/compose/secrets.sh).
.PHONY: stack stack-down drill
stack: docker-engine
	@deployments/compose/stack.sh has-image || $(MAKE) image
	deployments/compose/stack.sh up

# Stops and removes the stack's containers; its volumes (databases, metrics) are kept.
stack-down:
	deployments/compose/stack.sh down

# A crash-looping container, its alert through Alertmanager, UICI's diagnosis printed.
drill:
	deployments/compose/drill.sh

# The main job end to end: two broken services diagnosed through Prefect; the UI stays up.
demo: up
	PREFECT_API_URL=http://127.0.0.1:$${UICI_PREFECT_PORT:-4200}/api $(BIN)/python deployments/demo/demo.py

# The one production image (deployments/docker/README.md): `uici serve`, the Prefect worker and
# the CLI. BASE_IMAGE=... picks the base (default python:3.11-slim, else the local Debian base).
.PHONY: image
image: $(STAMP) docker-engine
	deployments/docker/build.sh $(if $(BASE_IMAGE),--base $(BASE_IMAGE))

bench: $(STAMP) docker-engine packages
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/docker_ops.py
	$(BIN)/python bench/flow_ops.py
	$(BIN)/python bench/webhook_ingest.py
	$(BIN)/python bench/scale_out.py
	$(BIN)/python bench/idle_service.py
	$(BIN)/python bench/webhook_to_operation.py
	$(BIN)/python bench/eval_corpus.py
	$(BIN)/python bench/observability_prompt.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
