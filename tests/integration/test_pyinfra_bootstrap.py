"""The bootstrap fact and operation through pyinfra's own API (State/Inventory with @local), against
the suite's PostgreSQL: psql runs on "the host" (@local), its password from PGPASSFILE."""

from __future__ import annotations

import logging
import os
import secrets

import pytest
from pyinfra.api import Config, Inventory, State, output
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.facts import get_facts
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops

from tasks.gateway import database
from tests.integration.litellm_data import direct_command, values_for

pytestmark = pytest.mark.integration


@pytest.fixture
def client_env(monkeypatch, pg_server):
    """@local runs psql as a child of this process: give it the pgpass file, and nothing else."""
    for name in [name for name in os.environ if name.startswith("PG")]:
        monkeypatch.delenv(name)
    for name, value in pg_server.client_env().items():
        monkeypatch.setenv(name, value)


def new_state() -> State:
    state = State(Inventory((["@local"], {})), Config())
    # Everything pyinfra can print at -vvv, so the test below sees what a user's terminal would.
    for flag in ("print_noop_info", "print_fact_info", "print_input", "print_fact_input", "print_output",
                 "print_fact_output"):
        setattr(state, flag, True)
    connect_all(state)
    return state


def target(db) -> dict:
    return {"psql": direct_command(db)}


def in_place(db, values: dict[str, str]) -> bool:
    """BootstrapState as an operation (or `pyinfra INVENTORY fact`) would read it."""
    state = new_state()
    try:
        kwargs = {**target(db), "_stdin": database.check_input(values)}
        (result,) = get_facts(state, database.BootstrapState, kwargs=kwargs).values()
        assert not state.failed_hosts, "the fact must answer, not fail the host"
        return result
    finally:
        disconnect_all(state)


def run_bootstrap_op(db, values: dict[str, str]):
    """One deploy: a fresh State holding the bootstrap operation, run; its OperationMeta."""
    state = new_state()
    try:
        (meta,) = add_op(
            state, database.bootstrap, name="LiteLLM admin user and master key", **target(db),
            admin_user_id=values["admin_user_id"], admin_email=values["admin_email"],
            master_key_hash=values["key_hash"], master_key_name=values["key_name"],
        ).values()
        run_ops(state)
        (host,) = state.inventory.get_active_hosts()
        assert state.results[host].error_ops == 0 and not state.failed_hosts
        assert state.meta[host].ops_change == (1 if meta.did_change() else 0)
        return meta
    finally:
        disconnect_all(state)


def test_fact_and_noop_through_pyinfra(empty_db, schema_db, client_env, monkeypatch, capfd, caplog):
    """Acceptance 5: "not in place" without tables and before the bootstrap, "in place" after it,
    "not in place" once the key changes; the operation is a no-op while in place."""
    caplog.set_level(logging.DEBUG)
    # What the CLI prints goes through pyinfra.api.output.echo (silent in API mode): collect it.
    echoed: list[str] = []
    monkeypatch.setattr(output, "_echo", lambda message=None, **_: echoed.append(str(message)))
    email = f"admin-{secrets.token_hex(4)}@example.com"
    values_a = values_for("sk-" + secrets.token_urlsafe(32), admin_email=email)
    values_b = values_for("sk-" + secrets.token_urlsafe(32), admin_email=email)

    assert in_place(empty_db, values_a) is False  # no LiteLLM tables at all: an answer, no error
    assert in_place(schema_db, values_a) is False  # the schema, but no bootstrap yet

    first = run_bootstrap_op(schema_db, values_a)
    assert first.will_change and first.did_change()
    assert in_place(schema_db, values_a) is True

    again = run_bootstrap_op(schema_db, values_a)
    assert not again.will_change and not again.did_change()  # no-op, seen at prepare already

    # The key changed (rotation): not in place until the operation runs with the new key.
    assert in_place(schema_db, values_b) is False
    assert run_bootstrap_op(schema_db, values_b).did_change()
    assert in_place(schema_db, values_b) is True
    assert in_place(schema_db, values_a) is False
    assert not run_bootstrap_op(schema_db, values_b).did_change()

    # Nothing pyinfra printed or logged, even at -vvv, holds a value: they travel on stdin only.
    printed = "\n".join(echoed) + "".join(capfd.readouterr()) + caplog.text
    assert ">>>" in printed, "pyinfra's command echo was captured"
    for values in (values_a, values_b):
        for secretish in (values["admin_email"], values["key_hash"], values["key_name"]):
            assert secretish not in printed
