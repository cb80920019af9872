# Two entry points for a fresh Linux machine with Python 3.11+:
#   make demo   set up, then run the quick side-by-side comparison and write its report
#   make test   set up (Python and Debian packages included), then lint and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the tests and benchmarks run for real (installed if missing, as root).
SYSTEM_PACKAGES := wrk prometheus docker-compose chromium valgrind wget
# PostgreSQL for the database routes: stackbench starts a throwaway cluster from it
# (loadtest/orchestrator/postgres.py), as do the tests.
SYSTEM_PACKAGES += postgresql
# The native tier's toolchains and libraries, built offline from Debian's packages (servers/native/).
# The Dockerfile's build stage installs the same list (`make -s native-packages`).
NATIVE_PACKAGES := golang-go golang-github-prometheus-client-golang-dev \
  rustc cargo librust-tokio-dev librust-hyper-dev librust-prometheus-dev \
  librust-prometheus+process-dev librust-sha2-dev librust-serde-json-dev librust-form-urlencoded-dev \
  librust-flate2-dev
SYSTEM_PACKAGES += $(NATIVE_PACKAGES)

.PHONY: demo serve live test lint bench system-deps native-packages venv clean

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

system-deps:
	@missing=""; for pkg in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

native-packages:
	@echo $(NATIVE_PACKAGES)

demo: venv
	$(BIN)/stackbench run --profile quick

serve: venv
	$(BIN)/stackbench demo

# The live view without Docker: servers, Locust's web UI, Prometheus (Grafana if installed).
live: venv system-deps
	$(BIN)/stackbench live

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv system-deps lint
	$(BIN)/python dashboards/generate.py --check
	$(BIN)/python -m loadtest.records --check
	$(BIN)/python -m servers.native
	$(BIN)/pytest

bench: venv system-deps
	$(BIN)/python benchmarks/wrk_servers.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
