"""The one store of run-scoped state: what a run builds once and every host of the run shares (the
inventory's settings, the load balancers, the roll, the rotation, the certificate store, a warning
given once). It is kept on the run's own pyinfra State, so it lives and dies with the run, and a
second run in the same process (the tests, the benchmarks) starts empty.

Why not module-level dicts keyed by the State's id, as before: the `state` a caller holds may be
pyinfra's context proxy, one object with one id for every run of the process, so two runs could share
an entry; and an id is reused once its State is freed. A key of that kind once made a fresh deploy
generate two sets of secrets."""

from __future__ import annotations

from typing import Callable, TypeVar

from pyinfra.api import State
from pyinfra.context import ContextObject

T = TypeVar("T")
_ATTRIBUTE = "_litellm_deploy_run_state"


def the_run(state: State) -> State:
    """The State itself, also when given pyinfra's context proxy for it."""
    if isinstance(state, ContextObject):
        state = state._get_module()
    if not isinstance(state, State):
        raise TypeError(f"not a pyinfra State: {state!r}")
    return state


def _store(state: State) -> dict:
    run = the_run(state)
    store = run.__dict__.get(_ATTRIBUTE)
    if store is None:
        store = run.__dict__[_ATTRIBUTE] = {}
    return store


def run_value(state: State, key: object, make: Callable[[], T]) -> T:
    """The run's value under `key`, made by make() the first time it is asked for. The callers that
    may switch greenlets while making it hold their own lock around this call."""
    store = _store(state)
    if key not in store:
        store[key] = make()
    return store[key]


def run_get(state: State, key: object, default: T | None = None) -> T | None:
    """The run's value under `key`, or `default` when nothing made it."""
    return _store(state).get(key, default)


def first_time(state: State, key: object) -> bool:
    """True once per run for `key` (a warning given once per run, not once per host)."""
    store = _store(state)
    if key in store:
        return False
    store[key] = True
    return True
