"""Run-scoped state lives on the run's State (tasks/config/registry.py), in one place."""

import re
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.context import ctx_state, state as state_proxy

from tasks.config.registry import first_time, run_get, run_value, the_run

TASKS = Path(__file__).resolve().parents[2] / "tasks"


def new_state() -> State:
    return State(Inventory((["@local"], {})), Config())


def test_each_run_has_its_own_values_and_makes_each_once():
    first, second = new_state(), new_state()
    made = []
    assert run_value(first, "k", lambda: made.append(1) or "one") == "one"
    assert run_value(first, "k", lambda: made.append(2) or "again") == "one"
    assert run_value(second, "k", lambda: "two") == "two"
    assert made == [1] and run_get(new_state(), "k") is None


def test_pyinfra_context_proxy_means_the_run_it_stands_for():
    """pyinfra's `state` is one proxy object for every run: keyed by its id, two runs shared entries."""
    first, second = new_state(), new_state()
    with ctx_state.use(first):
        assert the_run(state_proxy) is first
        run_value(state_proxy, "k", lambda: "first run")
    with ctx_state.use(second):
        assert run_get(state_proxy, "k") is None
    assert run_get(first, "k") == "first run"


def test_a_warning_once_per_run():
    run = new_state()
    assert [first_time(run, "warned") for _ in range(3)] == [True, False, False]
    assert first_time(new_state(), "warned")


def test_not_a_state_is_refused():
    with pytest.raises(TypeError):
        the_run(object())


def test_no_module_keeps_run_state_by_id():
    keyed_by_id = [f"{path.relative_to(TASKS.parent)}:{n}" for path in TASKS.rglob("*.py")
                   for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\bid\((state|st)\)", line)]
    assert keyed_by_id == []
