# costline — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint dashboards bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/costline demo

# One pytest worker per core (pytest-xdist); work stealing evens out the long tests. The end-to-end runs marked
# `slow` (whole costline processes: demo, kill -9, overload, a real Prometheus) are `make test-slow`; CI runs both.
PYTEST := $(BIN)/pytest -q -n auto --dist worksteal

test: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Regenerates grafana/ and prometheus/ from dashboards/; RUNBOOK_BASE_URL=https://… sets where alerts link.
dashboards: $(STAMP)
	$(BIN)/python -m dashboards $(if $(RUNBOOK_BASE_URL),--runbook-base-url $(RUNBOOK_BASE_URL))
	@if command -v promtool >/dev/null; then \
		promtool check rules prometheus/rules/*.yml && promtool test rules prometheus/tests/*.yml; \
	else echo "promtool not found (apt-get install prometheus): rules generated but not checked"; fi

# Ingest, router overhead, reports and scrapes at a scale that runs in a few minutes; bench/README.md has the
# flags for the full 10M runs and the latest figures.
bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/router_overhead.py
	$(BIN)/python bench/reports.py

# The long fault and fuzz run (tests/test_faults_*.py, tests/test_fuzz_otlp.py at scale, kill -9 rounds, atheris when
# it installs); prints spans sent/acknowledged/stored, duplicates, lost, faults injected, inputs fuzzed, crashes.
soak: $(STAMP)
	@$(BIN)/pip install --quiet atheris 2>/dev/null || echo "atheris does not install here: coverage-guided fuzzing is skipped"
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
