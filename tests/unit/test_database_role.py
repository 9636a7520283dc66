"""The ALTER ROLE pieces of tasks/database.py that need no database (the role itself is proven
against PostgreSQL in tests/integration/test_role_password.py)."""

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.facts import get_facts

from tasks import database, envfile
from tasks.render import render_files


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
