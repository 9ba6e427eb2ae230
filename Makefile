# EDPO — two commands: `make demo` and `make test`. Every install step lives here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EDPO := $(BIN)/edpo
STAMP := .run/stamps

.PHONY: setup up down status demo compose-check test test-unit test-integration test-e2e test-scale test-faults fuzz bench docs clean

$(STAMP):
	@mkdir -p $(STAMP)

# Each install step prints one line (what, how long) and keeps its output in .run/logs/NAME.log,
# shown only when it fails (infra/step.sh). A step already done prints nothing.

# System packages (JDK, Maven, PostgreSQL) — only what is missing.
$(STAMP)/system: infra/setup-system.sh | $(STAMP)
	@infra/step.sh setup-system "system packages (Debian)" bash infra/setup-system.sh
	@touch $@

# Virtualenv with the project and its test tools.
$(STAMP)/python: pyproject.toml | $(STAMP)
	@infra/step.sh setup-python "Python packages (.venv)" bash -c 'set -e; test -x $(BIN)/python || \
		$(PYTHON) -m venv $(VENV); $(BIN)/pip install --upgrade pip; $(BIN)/pip install -e ".[test]"'
	@touch $@

# Maven artifacts: the Kafka classpath and the Camunda engine jar.
$(STAMP)/maven: infra/kafka/pom.xml infra/camunda/pom.xml $(shell find infra/camunda/src -type f 2>/dev/null) $(STAMP)/system | $(STAMP)
	@mkdir -p .run/kafka
	@infra/step.sh mvn-kafka "Kafka from Maven Central" \
		mvn -B -f infra/kafka/pom.xml dependency:build-classpath -Dmdep.outputFile=$(CURDIR)/.run/kafka/classpath.txt
	@infra/step.sh mvn-camunda "Camunda engine built with Maven" mvn -B -f infra/camunda/pom.xml -DskipTests package
	@touch $@

# docker-compose.yml is checked in seconds without Docker by tests/unit/test_compose.py (the
# Compose schema, infra/compose/). Where the docker compose plugin is installed, ask it too.
compose-check:
	@docker compose config -q && echo "docker-compose.yml: valid (docker compose config)"

setup: $(STAMP)/system $(STAMP)/python $(STAMP)/maven

up: setup
	@$(EDPO) up

down:
	@if [ -x $(EDPO) ]; then $(EDPO) down; fi

status:
	@$(EDPO) status

demo: up
	@$(EDPO) demo

# Short simulated durations for the suite (they also apply to the stack `up` starts here).
test test-e2e test-scale: export EDPO_FACTORY_LEAD_TIME ?= 1
test test-e2e test-scale: export EDPO_COURIER_TIME ?= 0.5
test test-e2e test-scale: export EDPO_DELIVERY_RETRY_BACKOFF ?= 0.5
# Deadlines of seconds: the escalation tests raise dispatcher tasks without waiting minutes.
test test-e2e test-scale: export EDPO_DELIVERY_TIMEOUT ?= PT5S
test test-e2e test-scale: export EDPO_STOCK_TIMEOUT ?= PT5S
# An order unfinished after 30 s raises "Investigate order" (tests/e2e/test_escalation.py sees one).
test test-e2e test-scale: export EDPO_ORDER_DEADLINE ?= PT30S
# The suite's stack requires an API token, so the token checks are tested: a random one per
# checkout (.run/test-api-token), never committed. Another token is taken from EDPO_API_TOKEN.
test test-e2e test-scale fuzz: export EDPO_API_TOKEN ?= $(shell mkdir -p .run && (test -s .run/test-api-token || \
	$(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))' > .run/test-api-token) && cat .run/test-api-token)
test: up
	@$(BIN)/pytest -q -rfE

test-unit: $(STAMP)/python
	@$(BIN)/pytest -q tests/unit

test-integration: setup
	@$(EDPO) infra up
	@$(BIN)/pytest -q tests/integration

test-e2e: up
	@$(BIN)/pytest -q tests/e2e

# The end-to-end suite again, against two workers per service (and the one monitor): scale-out as
# users do it. The stack is restarted with --instances 2 and left running. The suite runs twice in
# a row: its tests make their own stock and assert what they changed, so a stack that has served
# them once serves them again.
test-scale: setup
	@$(EDPO) down >/dev/null
	@$(EDPO) up --instances 2
	@for run in 1 2; do echo "e2e suite, run $$run of 2"; \
		EDPO_TEST_NO_START=1 $(BIN)/pytest -q -rfE tests/e2e || exit 1; done

# Fuzzing only, longer than in `make test` (FUZZ_EXAMPLES per operation and mode; 60 there).
fuzz: export FUZZ_EXAMPLES ?= 500
fuzz: export EDPO_FACTORY_LEAD_TIME ?= 1
fuzz: export EDPO_COURIER_TIME ?= 0.5
fuzz: export EDPO_DELIVERY_RETRY_BACKOFF ?= 0.5
fuzz: export EDPO_DELIVERY_TIMEOUT ?= PT5S
fuzz: export EDPO_STOCK_TIMEOUT ?= PT5S
fuzz: export EDPO_ORDER_DEADLINE ?= PT30S
fuzz: up
	@$(BIN)/pytest -q -rfE tests/fuzz

# Fault injection on a stack of its own (.run/faults, other ports): kill -9 of every worker at
# its crash points and of every server, scale-out, duplicated and bad records (tests/faults).
test-faults: setup
	@$(BIN)/pytest -q -rfE tests/faults

# Zero simulated durations, so the figures measure EDPO itself; workers restart with them.
# A burst of ORDERS (default 600), the engine ceiling, and with RATES=5,10,20 an open-loop sweep
# of DURATION s per rate; the JSON result goes to .run/bench.json (see docs/benchmarks.md).
bench: setup
	@$(EDPO) down >/dev/null
	@EDPO_FACTORY_LEAD_TIME=0 EDPO_COURIER_TIME=0 EDPO_DELIVERY_RETRY_BACKOFF=0 $(EDPO) up
	@$(EDPO) bench --orders $${ORDERS:-600} --warmup $${WARMUP:-600} $${RATES:+--rate $$RATES --duration $${DURATION:-30}} --out .run/bench.json
	@if [ -n "$$RATES" ]; then $(EDPO) bench plot .run/bench.json -o .run/bench.png; fi

docs: $(STAMP)/python
	@$(BIN)/python -m edpo.topics > docs/messages.md
	@$(BIN)/python -m edpo.dev.diagram

clean: down
	rm -rf .run
