"""An external database reached through libpq's own files (tasks/config/pgservice.py), against the real
PostgreSQL: a hostile role name and password, written by the controller, read by psql as it is, and
never on a command line."""

from __future__ import annotations

import os
import subprocess

import pytest

from tasks.config import pgservice
from tasks.config.filters import url_component
from tasks.gateway import database

pytestmark = pytest.mark.integration

USER = "li'te llm@x:y"
PASSWORD = "p'a\"s$s\\w%o@r:d/?#&=+ ;$$ ünï `id` $(id) "


@pytest.fixture
def hostile_role(empty_db):
    admin = empty_db.server.db("postgres")
    admin.psql(database.psql_variables({"user": USER, "password": PASSWORD})
               + "CREATE ROLE :\"user\" LOGIN PASSWORD :'password';\n")
    yield empty_db
    admin.psql(database.psql_variables({"user": USER}) + "DROP OWNED BY :\"user\"; DROP ROLE :\"user\";\n")


def run_psql(db, url: str, tmp_path, script: str) -> subprocess.CompletedProcess:
    service_file, password_file = tmp_path / "pg_service.conf", tmp_path / "pgpass"
    for path, text in ((service_file, pgservice.service_file(url)), (password_file, pgservice.password_file(url))):
        path.write_text(text)
        path.chmod(0o600)  # libpq ignores a password file others can read
    env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    env.update(PGSERVICEFILE=str(service_file), PGPASSFILE=str(password_file), PGSERVICE=pgservice.SERVICE)
    return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t"],
                          input=script, capture_output=True, text=True, env=env, timeout=60)


def url_for(db, password: str = PASSWORD, query: str = "?sslmode=disable&connection_limit=5&schema=public") -> str:
    return (f"postgresql://{url_component(USER)}:{url_component(password)}@127.0.0.1:{db.server.port}"
            f"/{url_component(db.name)}{query}")


def test_psql_logs_in_with_the_files_alone_and_no_command_line_shows_the_password(hostile_role, tmp_path):
    url = url_for(hostile_role)
    assert pgservice.problems(url) == []
    result = run_psql(hostile_role, url, tmp_path, "SELECT current_user, current_database();\n"
                      "SHOW search_path;\n\\! ps -eo args\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{USER}|{hostile_role.name}"
    assert lines[1] == "public"
    assert "psql -X -q" in result.stdout, "ps listed the running psql"
    assert PASSWORD.strip() not in result.stdout and url_component(PASSWORD) not in result.stdout


def test_a_wrong_password_is_refused(hostile_role, tmp_path):
    result = run_psql(hostile_role, url_for(hostile_role, password="not-" + PASSWORD), tmp_path, "SELECT 1;\n")
    assert result.returncode != 0 and "password authentication failed" in result.stderr
