# gatekeeper — two commands matter: `make run` (install and start with the example config)
# and `make test` (install what the tests need, lint, type-check, test).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= config/gatekeeper.yaml

# Programs the tests drive as real peers, installed from Debian's packages when missing.
SYSTEM_TOOLS ?= curl

.PHONY: run test check lint typecheck system-deps clean

$(BIN)/gatekeeper: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## Install into ./.venv and run the daemon in the foreground with the example config.
run: $(BIN)/gatekeeper
	$(BIN)/gatekeeper run -c $(CONFIG)

## Validate the example configuration.
check: $(BIN)/gatekeeper
	$(BIN)/gatekeeper check -c $(CONFIG)

lint: $(BIN)/gatekeeper
	$(BIN)/ruff check gatekeeper tests benchmarks
	$(BIN)/ruff format --check gatekeeper tests benchmarks

typecheck: $(BIN)/gatekeeper
	$(BIN)/mypy

## Install the system programs the tests use (skipped when already present).
system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## Everything CI runs.
test: $(BIN)/gatekeeper system-deps lint typecheck
	$(BIN)/gatekeeper check -c $(CONFIG)
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
