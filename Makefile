# gatekeeper — two commands matter: `make run` (install and start with the example config)
# and `make test` (install what the tests need, lint, type-check, test).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= config/gatekeeper.yaml

# Programs the tests drive as real peers (and gcc, which builds the benchmarks' C load
# generator for its smoke test), installed from Debian's packages when missing.
SYSTEM_TOOLS ?= curl chromium gcc

.PHONY: run test bench soak check lint typecheck system-deps systemd-analyze install clean

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
test: $(BIN)/gatekeeper system-deps systemd-analyze lint typecheck
	$(BIN)/gatekeeper check -c $(CONFIG)
	$(BIN)/pytest -q

## gatekeeper against HAProxy, nginx, socat and C baselines: one table of targets (~15 min).
## Installs HAProxy, socat and nginx's stream module from Debian when missing.
bench: $(BIN)/gatekeeper
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.run_all

## The soak mode: tests/fuzz with a large example budget (about 200,000 cases an hour on 2
## cores, millions overnight), then the hard-to-break integration tests in a loop until the
## time is up (benchmarks/soak.py). SOAK_MINUTES=1 is a quick check.
SOAK_MINUTES ?= 60
soak: $(BIN)/gatekeeper system-deps
	$(BIN)/python -m benchmarks.soak --minutes $(SOAK_MINUTES)

## systemd-analyze, for the tests of the units in systemd/ (verify, security): Debian's
## systemd package, installed only when the program is missing (nothing is started).
systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  echo "installing: systemd (for systemd-analyze)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends systemd; }

# -- install on a Linux host (README, "Install"); scripts/install.sh does the work --------
PREFIX         ?= /opt/gatekeeper
DESTDIR        ?=
CONFDIR        ?= /etc/gatekeeper
UNITDIR        ?= /etc/systemd/system
SYSUSERSDIR    ?= /etc/sysusers.d
INSTALL_PYTHON ?=
SYSTEM_SETUP   ?=

## A virtualenv in $(DESTDIR)$(PREFIX) with gatekeeper installed (not editable), the units,
## and an example $(CONFDIR) that never replaces an existing file.
install:
	DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' CONFDIR='$(CONFDIR)' UNITDIR='$(UNITDIR)' \
	SYSUSERSDIR='$(SYSUSERSDIR)' INSTALL_PYTHON='$(INSTALL_PYTHON)' SYSTEM_SETUP='$(SYSTEM_SETUP)' \
	  sh scripts/install.sh

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
