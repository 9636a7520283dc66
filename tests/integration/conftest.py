"""Fixtures of the integration tier: one real PostgreSQL for the session, the real LiteLLM schema
built once from the pinned litellm-proxy-extras migrations, and a fresh copy of it per test."""

from __future__ import annotations

import importlib.util
import itertools
import os
from pathlib import Path

import pytest

from tests.integration.postgres import Db, PostgresUnavailable, start_server

# litellm_proxy_extras imports litellm, which otherwise fetches a model cost map from the internet
# (retrying for seconds on these machines) unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parents[2]
PSQL_MIGRATE = REPO / "tests" / "testbed" / "images" / "litellm" / "psql_migrate.py"
TEMPLATE_DB = "litellm_schema"
_names = itertools.count(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs a real PostgreSQL started by the suite")


def _load_psql_migrate():
    # A standalone script (it is copied into the LiteLLM test image), so loaded by path.
    spec = importlib.util.spec_from_file_location("psql_migrate", PSQL_MIGRATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def psql_migrate():
    return _load_psql_migrate()


@pytest.fixture(scope="session")
def pg_server():
    try:
        server = start_server()
    except PostgresUnavailable as reason:
        pytest.skip(f"integration tier needs PostgreSQL: {reason}")
    try:
        yield server
    finally:
        server.stop()


def create_database(server, template: str | None = None) -> Db:
    name = f"t{os.getpid()}_{next(_names)}"
    admin = server.db("postgres")
    script = f"\\set name {name}\n"
    if template:
        admin.psql(script + f"\\set template {template}\nCREATE DATABASE :\"name\" TEMPLATE :\"template\";\n")
    else:
        admin.psql(script + "CREATE DATABASE :\"name\";\n")
    return server.db(name)


def drop_database(db: Db) -> None:
    db.server.db("postgres").psql(f"\\set name {db.name}\nDROP DATABASE IF EXISTS :\"name\" WITH (FORCE);\n")


@pytest.fixture(scope="session")
def litellm_schema(pg_server, psql_migrate):
    """(database, names applied): the real schema, built once with psql_migrate; tests copy it."""
    admin = pg_server.db("postgres")
    admin.psql(f"CREATE DATABASE {TEMPLATE_DB};")
    db = pg_server.db(TEMPLATE_DB)
    applied = psql_migrate.apply_migrations(db.url)
    return db, applied


@pytest.fixture
def schema_db(pg_server, litellm_schema):
    """A fresh database holding the real LiteLLM schema (a copy of the session's template)."""
    db = create_database(pg_server, template=litellm_schema[0].name)
    yield db
    drop_database(db)


@pytest.fixture
def empty_db(pg_server):
    """A fresh database with no LiteLLM tables at all (migrations not applied yet)."""
    db = create_database(pg_server)
    yield db
    drop_database(db)


@pytest.fixture(scope="session")
def litellm_keys():
    """LiteLLM's own key helpers from the installed package: (hash_token, abbreviate_api_key)."""
    from litellm.proxy.auth.auth_utils import abbreviate_api_key
    from litellm.proxy.utils import hash_token

    return hash_token, abbreviate_api_key
