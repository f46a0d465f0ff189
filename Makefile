# Envoi — `make run` starts the service on the embedded default; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
BENCH_DATABASE_URL := $(or $(ENVOI_BENCH_DATABASE_URL),postgresql+psycopg://postgres@127.0.0.1/envoi_bench)

.PHONY: install run test bench clean browser

# Debian's chromium for the browser test (Playwright drives it; never `playwright install`).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@echo "installing chromium with apt"
	@apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  chromium fonts-dejavu-core >/dev/null

browser: $(CHROMIUM)

# wrk, the load generator of bench/bench_signup.py.
WRK := /usr/bin/wrk
$(WRK):
	@echo "installing wrk with apt"
	@apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null

# The venv with the pinned requirements; redone only when a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt
	@if [ -z "$(PYTHON)" ] || ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
	  echo "installing python3 and python3-venv with apt"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev; fi
	@test -x $(BIN)/python || $(or $(PYTHON),python3) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

# Redis from the venv (unless ENVOI_REDIS_URL), migrations, first admin, then web + worker +
# scheduler (Procfile) until Ctrl-C.
run: $(STAMP)
	@$(BIN)/python -m envoi.run

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Every bench/bench_*.py in order, on PostgreSQL (started or installed when nothing answers).
bench: $(STAMP) $(WRK)
	@$(BIN)/python -m envoi.run postgres "$(BENCH_DATABASE_URL)"
	@shopt -s nullglob; scripts=(bench/bench_*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no bench/bench_*.py yet"; exit 0; fi; \
	for script in "$${scripts[@]}"; do \
	  echo "== $$script"; \
	  ENVOI_BENCH_DATABASE_URL="$(BENCH_DATABASE_URL)" PYTHONPATH=$(CURDIR) $(BIN)/python "$$script" || exit 1; \
	done; echo "benchmarks written to BENCHMARKS.md"

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
