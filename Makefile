# Two commands a user needs: `make demo` and `make test`. Both build their own virtualenv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The e2e suites spend much of their time waiting on their hosts; two workers overlap that waiting.
# A worker takes whole modules (tests/conftest.py), so a test bed is never split across workers.
WORKERS ?= 2
PARALLEL := -n $(WORKERS)

.PHONY: demo test check lint bench unit integration e2e venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

# Pyflakes' findings (unused or undefined names) and syntax errors, by ruff; the package's code,
# the runbooks and the benchmarks in ruff's format, and type-checked by mypy (the same files: its
# [tool.mypy] section in pyproject.toml).
FORMATTED := tasks bench deploy.py backup.py keys.py restore.py rotate.py verify.py
lint: $(STAMP)
	$(VENV)/bin/ruff check --select F,E9 .
	$(VENV)/bin/ruff format --check --quiet $(FORMATTED)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

integration: $(STAMP)
	$(PY) -m pytest tests/integration -q -m integration

e2e: $(STAMP)
	$(PY) -m pytest tests/e2e tests/testbed -q -m e2e $(PARALLEL)

# What a contributor runs after every change (about 3 minutes on 2 cores): lint, then the unit and
# integration tiers (a real PostgreSQL, no test bed).
check: lint
	$(PY) -m pytest tests/unit tests/integration -q $(PARALLEL)

test: lint
	$(PY) -m pytest tests -q --durations=25 $(PARALLEL)

# What the package costs: converge, no-op and throughput figures on the test bed (bench/__main__.py).
# QUICK=1: fewer hosts and runs, about 25 minutes on 2 cores.
bench: $(STAMP)
	tests/tools/docker-engine.sh
	$(PY) -m bench $(if $(QUICK),--quick)

demo: $(STAMP)
	tests/tools/docker-engine.sh
	$(PY) -m tests.demo

clean:
	rm -rf $(VENV) .pytest_cache
