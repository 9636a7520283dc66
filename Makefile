# Two commands a user needs: `make demo` and `make test`. Both build their own virtualenv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test unit integration e2e venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

integration: $(STAMP)
	$(PY) -m pytest tests/integration -q -m integration

e2e: $(STAMP)
	$(PY) -m pytest tests/e2e tests/testbed -q -m e2e

test: $(STAMP)
	$(PY) -m pytest tests -q --durations=25

demo: $(STAMP)
	$(PY) -m tests.demo

clean:
	rm -rf $(VENV) .pytest_cache
