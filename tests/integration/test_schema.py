"""The real LiteLLM schema, built with psql from the pinned litellm-proxy-extras migrations, and a
migration ledger Prisma (and LiteLLM's own recovery code) would take for its own."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

LEDGER = """SELECT coalesce(json_agg(json_build_object(
    'id', id, 'checksum', checksum, 'migration_name', migration_name, 'logs', logs,
    'rolled_back_at', rolled_back_at, 'started_at', started_at, 'finished_at', finished_at,
    'applied_steps_count', applied_steps_count, 'ordered', started_at <= finished_at)
    ORDER BY migration_name), '[]') FROM "_prisma_migrations";"""

# Prisma's ledger definition (also litellm_proxy_extras/migration_recovery.py's baseline DDL).
PRISMA_LEDGER_COLUMNS = [
    ["id", "character varying", 36, "NO", None],
    ["checksum", "character varying", 64, "NO", None],
    ["finished_at", "timestamp with time zone", None, "YES", None],
    ["migration_name", "character varying", 255, "NO", None],
    ["logs", "text", None, "YES", None],
    ["rolled_back_at", "timestamp with time zone", None, "YES", None],
    ["started_at", "timestamp with time zone", None, "NO", "now()"],
    ["applied_steps_count", "integer", None, "NO", "0"],
]

CATALOG = """SELECT json_build_object(
  'columns', (SELECT json_agg(json_build_array(table_name, column_name, data_type, is_nullable, column_default)
                ORDER BY table_name, ordinal_position) FROM information_schema.columns WHERE table_schema = 'public'),
  'indexes', (SELECT json_agg(json_build_array(indexname, indexdef) ORDER BY indexname)
                FROM pg_indexes WHERE schemaname = 'public'),
  'constraints', (SELECT json_agg(json_build_array(conname, pg_get_constraintdef(oid)) ORDER BY conname)
                FROM pg_constraint WHERE connamespace = 'public'::regnamespace));"""


def packaged_migrations(psql_migrate) -> dict[str, str]:
    """migration name -> sha256 of its migration.sql, straight from the installed package."""
    directory = psql_migrate.find_migrations_dir()
    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("*/migration.sql")}


def test_suite_builds_the_real_schema_from_the_pinned_migrations(litellm_schema, psql_migrate):
    """Acceptance 1: own PostgreSQL, real schema from the pinned litellm-proxy-extras."""
    db, applied = litellm_schema
    # Pinned: the installed proxy-extras is exactly the one the installed litellm requires.
    extras = importlib.metadata.version("litellm-proxy-extras")
    pins = [r for r in importlib.metadata.requires("litellm") if r.startswith("litellm-proxy-extras")]
    assert pins and pins[0].split(";")[0].strip() == f"litellm-proxy-extras=={extras}"

    # Every shipped migration was applied now, in lexical (Prisma's) order.
    names = sorted(packaged_migrations(psql_migrate))
    assert len(names) >= 200 and names[0].endswith("_baseline")
    assert applied == names
    assert any(" " in name for name in names), "the set includes directory names with spaces"

    # The tables the bootstrap writes exist with LiteLLM's columns.
    columns = db.json("""SELECT json_object_agg(table_name, cols) FROM (
        SELECT table_name, json_agg(column_name ORDER BY column_name) AS cols FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name IN ('LiteLLM_UserTable', 'LiteLLM_VerificationToken')
         GROUP BY table_name) t;""")
    assert {"user_id", "user_role", "user_email"} <= set(columns["LiteLLM_UserTable"])
    assert {"token", "key_name", "key_alias", "models", "permissions", "user_id"} <= set(
        columns["LiteLLM_VerificationToken"]
    )
    # Indexes built CONCURRENTLY by some migrations are there and valid.
    invalid = db.json("SELECT count(*) FROM pg_index WHERE NOT indisvalid;")
    assert invalid == 0


def test_ledger_matches_prismas_format_and_a_second_run_changes_nothing(schema_db, psql_migrate):
    """Acceptance 6: one row per migration, checksum = sha256 of its migration.sql, finished."""
    expected = packaged_migrations(psql_migrate)
    rows = schema_db.json(LEDGER)
    assert [row["migration_name"] for row in rows] == sorted(expected)
    for row in rows:
        assert row["checksum"] == expected[row["migration_name"]]
        assert row["finished_at"] is not None and row["ordered"]
        assert row["applied_steps_count"] == 1
        assert row["logs"] is None and row["rolled_back_at"] is None
        assert uuid.UUID(row["id"]).version == 4
    assert len({row["id"] for row in rows}) == len(rows)

    columns = schema_db.json("""SELECT json_agg(json_build_array(column_name, data_type, character_maximum_length,
        is_nullable, column_default) ORDER BY ordinal_position) FROM information_schema.columns
        WHERE table_name = '_prisma_migrations';""")
    assert columns == PRISMA_LEDGER_COLUMNS

    catalog = schema_db.json(CATALOG)
    assert psql_migrate.apply_migrations(schema_db.url) == []
    assert schema_db.json(LEDGER) == rows
    assert schema_db.json(CATALOG) == catalog


def test_litellms_own_recovery_code_reads_the_ledger_as_prismas(schema_db, psql_migrate):
    """Acceptance 6, from LiteLLM's side: its migration-recovery helpers see every migration as
    completed with a matching checksum, as they would after `prisma migrate deploy`."""
    psycopg = pytest.importorskip("psycopg")
    from litellm_proxy_extras import migration_recovery

    package_dir = Path(migration_recovery.__file__).parent
    directory = psql_migrate.find_migrations_dir()
    with psycopg.connect(schema_db.url) as connection:
        ledger = set(connection.execute("SELECT migration_name, checksum FROM _prisma_migrations").fetchall())
        assert ledger == set(migration_recovery.migration_files(package_dir))
        for path in sorted(directory.glob("*/migration.sql"))[:: 20]:
            (record,) = migration_recovery._migration_records(connection, "public", path)
            assert record.finished and record.confirms_completion(path.read_bytes())


def test_concurrent_runs_apply_each_migration_once(empty_db, psql_migrate):
    """Two migration jobs against one database (two gateways on an external one) serialise on
    Prisma's advisory lock: every migration is applied and recorded exactly once."""
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run():
        try:
            results.append(psql_migrate.apply_migrations(empty_db.url))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(len(names) for names in results) == [0, len(packaged_migrations(psql_migrate))]
    assert empty_db.json("SELECT to_json(count(*) = count(DISTINCT migration_name)) FROM _prisma_migrations;") is True


def test_failed_migration_is_named_with_psqls_error(empty_db, psql_migrate, tmp_path):
    """The script's failure contract: non-zero exit, failing migration's name and psql's error;
    the failed file leaves no ledger row and, as under Prisma, none of its statements."""
    good, bad = "20990101000000_good", "20990102000000_bad name's \\ dir"
    (tmp_path / good).mkdir()
    (tmp_path / good / "migration.sql").write_text('CREATE TABLE "GoodTable" (id int);\n')
    (tmp_path / bad).mkdir()
    (tmp_path / bad / "migration.sql").write_text('CREATE TABLE "HalfTable" (id int);\nSELEC broken;\n')

    with pytest.raises(psql_migrate.MigrationError) as failure:
        psql_migrate.apply_migrations(empty_db.url, tmp_path)
    assert failure.value.migration == bad
    assert "syntax error" in failure.value.detail
    assert empty_db.json("SELECT json_agg(migration_name) FROM _prisma_migrations;") == [good]
    assert empty_db.json("""SELECT to_json(to_regclass('"HalfTable"') IS NULL
                                       AND to_regclass('"GoodTable"') IS NOT NULL);""")

    env = {**os.environ, "DATABASE_URL": empty_db.url, "PSQL_MIGRATE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, psql_migrate.__file__], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert bad in result.stderr and "syntax error" in result.stderr
    assert empty_db.server.password not in result.stderr + result.stdout
