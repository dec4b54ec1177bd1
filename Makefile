# Two entry points: `make run` serves on the SQLite default, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest tools bench clean production

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/conductor-api serve

# The server alone, for a production machine (deploy/'s unit runs it): not editable, and none
# of the test and lint tools. Run it again after updating the code.
production:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -c constraints.txt .

# wrk drives the benchmark smoke test; nginx and prometheus (with promtool) the deployment
# tests. They come from Debian's packages. The services those packages may start are
# stopped and disabled at once: the tests run their own, on free loopback ports.
tools:
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=""; \
	command -v nginx >/dev/null 2>&1 || missing="$$missing nginx"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
		for service in $$missing; do \
			systemctl disable --now $$service >/dev/null 2>&1 || true; \
		done; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collects nothing; that must not pass silently, nor fail CI.
pytest: $(STAMP) tools
	$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test: lint typecheck pytest

bench: $(STAMP) tools
	$(BIN)/python bench/run.py --db both --workers 1,2 --out bench/RESULTS.md

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
