"""Mode "external" for real: psql and pg_dump as tasks.gateway.database.psql runs them on a gateway host (a
one-shot container of the Postgres image with the project's libpq files mounted read-only), against
a Postgres container of the test bed's image holding a role with a hostile name and password.

The controller renders the files (tasks/config/pgservice.py, via render_files); nothing on the host parses
DATABASE_URL, and no value is on any command line.
"""

from __future__ import annotations

import os
import subprocess
import time
from types import SimpleNamespace

import docker
import pytest

from tasks.config import pgservice
from tasks.config.filters import url_component
from tasks.gateway import backup, database
from tests.libpq_files import write_libpq_files

USER = "li'te llm@x:y"
PASSWORD = "p'a\"s$s\\w%o@r:d/?#&=+ ;$$ ünï `id` $(id) end"
DB = "gw data"


@pytest.fixture(scope="module")
def external_db(bed):
    image = bed.postgres_image()
    client = docker.from_env()
    container = client.containers.run(
        image, detach=True, labels={"litellm-deploy.testbed": "1"}, name=f"litellm-deploy-testbed-ext-pg-{os.getpid()}",
        environment={"POSTGRES_USER": "admin", "POSTGRES_PASSWORD": "admin-password-not-used"},
    )
    try:
        deadline = time.monotonic() + 120
        while container.exec_run(["pg_isready", "-h", "127.0.0.1", "-U", "admin", "-d", "admin"]).exit_code != 0:
            container.reload()
            assert container.status == "running", container.logs()[-2000:].decode(errors="replace")
            assert time.monotonic() < deadline, "the bed's Postgres did not get ready in 120 s"
            time.sleep(0.5)
        # initdb refuses such a name for the superuser, so the hostile role is made afterwards.
        sql = (database.psql_variables({"user": USER, "password": PASSWORD, "db": DB})
               + "CREATE ROLE :\"user\" LOGIN PASSWORD :'password';\nCREATE DATABASE :\"db\" OWNER :\"user\";\n")
        subprocess.run(["docker", "exec", "-i", container.name, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-U", "admin", "-d", "admin"], input=sql, check=True, capture_output=True, text=True, timeout=60)
        container.reload()
        yield image, container.attrs["NetworkSettings"]["IPAddress"]
    finally:
        container.remove(force=True)


def gateway(tmp_path, image: str, address: str, password: str = PASSWORD) -> SimpleNamespace:
    """A gateway's install directory with the libpq files as the deploy writes them (0600)."""
    url = (f"postgresql://{url_component(USER)}:{url_component(password)}@{address}:5432/{url_component(DB)}"
           "?sslmode=disable&connection_limit=5")
    assert pgservice.problems(url) == []
    write_libpq_files(tmp_path, url)
    return SimpleNamespace(database_mode="external", install_dir=str(tmp_path), postgres_image=image,
                           has_database=True)


def test_psql_logs_in_through_the_mounted_files_with_no_value_in_its_arguments(external_db, tmp_path):
    image, address = external_db
    settings = gateway(tmp_path, image, address)
    command = database.psql(settings, "-A", "-t")
    assert PASSWORD not in command and url_component(PASSWORD) not in command
    result = subprocess.run(command, shell=True, input="SELECT current_user, current_database();\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{USER}|{DB}"


def test_a_wrong_password_is_refused(external_db, tmp_path):
    image, address = external_db
    settings = gateway(tmp_path, image, address, password="not-the-password-at-all")
    result = subprocess.run(database.psql(settings), shell=True, input="SELECT 1;\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "password authentication failed" in result.stderr


def test_the_backup_dumps_and_reads_back_through_the_same_files(external_db, tmp_path):
    image, address = external_db
    settings = gateway(tmp_path, image, address)
    subprocess.run(database.psql(settings), shell=True, input="CREATE TABLE IF NOT EXISTS kept (v text);\n"
                   "INSERT INTO kept VALUES ('row');\n", check=True, capture_output=True, text=True, timeout=120)
    path = tmp_path / "backups" / "litellm-20261202T000000Z-before-upgrade.dump"
    script = backup.backup_script(backup.dump_command(settings), backup.read_back_command(settings), str(path), 2)
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert path.read_bytes()[:5] == b"PGDMP" and (path.stat().st_mode & 0o777) == 0o600
