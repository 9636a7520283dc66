"""Issue 15, defect 4: a POSTGRES_PASSWORD changed in the secrets file reaches the existing role
(ALTER ROLE through psql, the value on its stdin as a SCRAM verifier), before the .env changes; or
the host fails with the steps and nothing changed. Through pyinfra's API on @local against the
suite's real PostgreSQL (psql on this machine; the role changes its own password, as in bundled mode
the image's POSTGRES_USER does)."""

from __future__ import annotations

import base64
import logging
import os
import secrets
import shlex
import subprocess

import pytest
from pyinfra.api import Config, HiddenValue, Inventory, State, output
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops

from tasks.config.filters import dotenv_quote
from tasks.gateway import database

pytestmark = pytest.mark.integration


@pytest.fixture
def role(pg_server, tmp_path, monkeypatch):
    """(name, password): a login role of its own, its password for psql in a pgpass file."""
    name = f"r{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(18)
    pg_server.db("postgres").psql(f"\\set r {name}\n\\set p '{password}'\nCREATE ROLE :\"r\" LOGIN PASSWORD :'p';\n")
    for variable in [v for v in os.environ if v.startswith("PG")]:
        monkeypatch.delenv(variable)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_server.port}:*:{name}:{password}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    yield name, password
    pg_server.db("postgres").psql(f"\\set r {name}\nDROP ROLE IF EXISTS :\"r\";\n")


def logs_in(pg_server, name: str, password: str) -> bool:
    """A TCP login (scram-sha-256 in pg_hba) with this password, given in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSWORD": password}
    result = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", name, "-d", "postgres",
                             "-w", "-c", "SELECT 1"], env=env, capture_output=True, text=True)
    return result.returncode == 0


def write_env(install_dir, password: str) -> None:
    install_dir.mkdir(exist_ok=True)
    (install_dir / ".env").write_text(f"POSTGRES_USER=x\nPOSTGRES_PASSWORD={dotenv_quote(password)}\n")


def run_op(pg_server, role_name: str, install_dir, password: str, port: int | None = None):
    state = State(Inventory((["@local"], {})), Config())
    for flag in ("print_noop_info", "print_fact_info", "print_input", "print_fact_input", "print_output",
                 "print_fact_output"):
        setattr(state, flag, True)
    connect_all(state)
    try:
        # psql on this machine as the role itself (its current password from PGPASSFILE), as the
        # bundled mode's psql runs inside the Postgres container.
        psql = " ".join(shlex.quote(arg) for arg in (
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port or pg_server.port),
            "-U", role_name, "-d", "postgres"))
        (meta,) = add_op(
            state, database.role_password, name="Database role password", psql=psql,
            install_dir=str(install_dir), compose_project="litellm", role=role_name, password=HiddenValue(password),
        ).values()
        try:
            run_ops(state)
        except PyinfraError:  # "No hosts remaining!": the only host failed
            pass
        return meta, bool(state.failed_hosts)
    finally:
        disconnect_all(state)


@pytest.mark.parametrize("new", [secrets.token_urlsafe(24), "pä$s 'wörd\\\" ${HOME}"], ids=["ascii", "unicode"])
def test_changed_password_is_applied_to_the_role_then_noop(pg_server, role, tmp_path, new, monkeypatch, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    echoed: list[str] = []
    monkeypatch.setattr(output, "_echo", lambda message=None, **_: echoed.append(str(message)))
    name, old = role
    install_dir = tmp_path / "opt"
    write_env(install_dir, old)
    assert logs_in(pg_server, name, old)

    meta, failed = run_op(pg_server, name, install_dir, new)
    assert not failed and meta.did_change()
    assert logs_in(pg_server, name, new)
    assert not logs_in(pg_server, name, old)

    # The deploy writes the new .env next; from then on nothing changes.
    write_env(install_dir, new)
    (tmp_path / "pgpass").write_text(f"127.0.0.1:{pg_server.port}:*:{name}:{new}\n")  # psql's own login
    meta, failed = run_op(pg_server, name, install_dir, new)
    assert not failed and not meta.will_change and not meta.did_change()

    printed = "\n".join(echoed) + "".join(capfd.readouterr()) + caplog.text
    assert ">>>" in printed, "pyinfra's command echo was captured"
    assert new not in printed and old not in printed and "SCRAM-SHA-256$" not in printed


def test_new_database_is_left_to_the_image(pg_server, role, tmp_path):
    """No .env on the host yet (or no POSTGRES_PASSWORD line): Postgres initialises with it, no change."""
    name, old = role
    meta, failed = run_op(pg_server, name, tmp_path / "absent", "another-password-123")
    assert not failed and not meta.did_change()
    assert logs_in(pg_server, name, old)


def test_unreachable_database_fails_with_the_steps_and_changes_nothing(pg_server, role, tmp_path, monkeypatch,
                                                                        capfd, caplog):
    echoed: list[str] = []
    monkeypatch.setattr(output, "_echo", lambda message=None, **_: echoed.append(str(message)))
    name, old = role
    install_dir = tmp_path / "opt"
    write_env(install_dir, old)
    env_before = (install_dir / ".env").read_bytes()
    closed_port = 1
    meta, failed = run_op(pg_server, name, install_dir, "another-password-123", port=closed_port)
    assert failed
    printed = "\n".join(echoed) + "".join(capfd.readouterr()) + caplog.text
    assert "POSTGRES_PASSWORD changed in the secrets file but could not be set on role" in printed
    assert "up -d db) and deploy again" in printed
    assert (install_dir / ".env").read_bytes() == env_before
    assert logs_in(pg_server, name, old)


def test_verifier_is_what_postgres_computes(pg_server, role):
    """Our SCRAM verifier, given the server's salt and iterations, equals the one it stored."""
    name, old = role
    stored = pg_server.db("postgres").psql(
        f"\\set r {name}\nSELECT rolpassword FROM pg_authid WHERE rolname = :'r';\n").stdout.strip()
    iterations, salt = stored.split("$")[1].split(":")
    assert database.scram_sha256(old, base64.b64decode(salt), int(iterations)) == stored
