"""The ALTER ROLE pieces of tasks/gateway/database.py that need no database (the role itself is proven
against PostgreSQL in tests/integration/test_role_password.py)."""

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.facts import get_facts

from tasks.gateway import database
from tasks.lib import envfile
from tasks.lib.render import render_files


def test_ascii_password_travels_as_a_scram_verifier_only():
    password = "Plain-ASCII_password.123"
    stdin = database.role_password_input("litellm", password)
    assert password not in stdin and "\\set password 'SCRAM-SHA-256$4096:" in stdin
    assert stdin.endswith("ALTER ROLE :\"role\" PASSWORD :'password';\n")
    # A fresh salt each time: two verifiers of one password differ.
    assert database.role_password_input("litellm", password) != stdin


def test_a_password_saslprep_may_rewrite_goes_to_the_server_as_a_psql_variable():
    password = "pä$s 'wörd"
    stdin = database.role_password_input("litellm", password)
    assert "\\set password 'pä$s ''wörd'" in stdin and "SCRAM" not in stdin


def test_env_line_hash_matches_the_line_the_deploy_writes(build, tmp_path):
    """EnvLineHashes through the real @local connector, on a .env rendered by the deploy's templates."""
    settings = build(database_mode="bundled")
    install_dir = tmp_path / "opt"
    install_dir.mkdir()
    (install_dir / ".env").write_text(render_files(settings)[".env"])
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    try:
        def fact(directory, *names):
            kwargs = {"install_dir": str(directory), "names": names or ("POSTGRES_PASSWORD",)}
            (value,) = get_facts(state, envfile.EnvLineHashes, kwargs=kwargs).values()
            return value

        wanted = envfile.line_hash("POSTGRES_PASSWORD", settings.secrets["POSTGRES_PASSWORD"])
        assert fact(install_dir) == {"POSTGRES_PASSWORD": wanted}
        assert fact(install_dir, "NOT_IN_THE_FILE") == {}
        assert fact(tmp_path / "absent") is None
    finally:
        disconnect_all(state)


# --- a gateway on a db host's database (tasks/state_hosts.py sets the role there) -------------------


def run_gateway_guard(install_dir, password: str, db_host_in_run: bool, capfd, caplog) -> tuple[bool, bool, str]:
    """db_host_password_applied executed on @local as a gateway of db host "db1": (failed, changed, output)."""
    from pyinfra.api import HiddenValue
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops

    # db1 in the run refuses the connection: a db host that failed.
    hosts = ["@local", ("db1", {"ssh_hostname": "127.0.0.1", "ssh_port": 1})] if db_host_in_run else ["@local"]
    state = State(Inventory((hosts, {})), Config())
    connect_all(state)
    try:
        local = state.inventory.get_host("@local")
        add_op(state, database.db_host_password_applied, name="POSTGRES_PASSWORD on db1 first", host=local,
               install_dir=str(install_dir), db_host="db1", password=HiddenValue(password))
        try:
            run_ops(state)
        except PyinfraError:  # "No hosts remaining!"
            pass
        (op_hash,) = local.op_hash_order
        meta = state.get_op_data_for_host(local, op_hash).operation_meta
        output = "".join(capfd.readouterr()) + caplog.text
        caplog.clear()
        return local in state.failed_hosts, meta.did_change(), output
    finally:
        disconnect_all(state)


def test_a_gateway_keeps_its_postgres_password_when_the_db_host_did_not_set_the_new_one(tmp_path, capfd, caplog):
    from tasks.config.filters import dotenv_quote

    old, new = "the-password-the-database-has", "a-new-password-from-the-secrets-file"
    install_dir = tmp_path / "opt"
    install_dir.mkdir()
    (install_dir / ".env").write_text(f"POSTGRES_PASSWORD={dotenv_quote(old)}\n")
    for in_run, why in ((False, "is not in this run"), (True, "failed in this run")):
        failed, _, output = run_gateway_guard(install_dir, new, in_run, capfd, caplog)
        assert failed, output
        assert f"the db host db1 {why}" in output and "fix:" in output, output
        assert old not in output and new not in output
    # Unchanged: nothing to wait for, whether the db host is in the run or not.
    failed, changed, output = run_gateway_guard(install_dir, old, False, capfd, caplog)
    assert not failed and not changed, output


def test_the_db_host_counts_as_done_only_in_the_run_and_not_failed():
    state = State(Inventory((["gw1", "db1"], {})), Config())
    db1 = state.inventory.get_host("db1")
    assert not database.db_host_done(state, "db1")  # not connected: --limit left it out
    state.activated_hosts.add(db1)
    assert database.db_host_done(state, "db1")
    state.failed_hosts.add(db1)
    assert not database.db_host_done(state, "db1")
    assert not database.db_host_done(state, "db-not-in-the-inventory")
