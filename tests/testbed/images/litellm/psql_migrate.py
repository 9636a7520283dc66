#!/usr/bin/env python3
"""Apply LiteLLM's database migrations with `psql`, recorded exactly as `prisma migrate deploy` does.

The offline test image cannot run Prisma (its engines download from a host these machines cannot
reach), so this script stands in for LiteLLM's migration job there: it is copied into the image as
/app/litellm/proxy/prisma_migration.py. It uses only the Python standard library and `psql`.

What it does, and why each part is the way it is:
- The migrations are the `<name>/migration.sql` files shipped in the installed
  `litellm-proxy-extras` package, the very files Prisma would apply, in lexical order of `<name>`
  (Prisma's order). Some names contain spaces, so paths never pass through a shell.
- Each file is sent to the server as ONE query string, as Prisma does: the server runs a
  multi-statement file in one implicit transaction, and a single-statement file outside any
  transaction, which is what `CREATE INDEX CONCURRENTLY` needs. psql runs in autocommit (no `-1`).
- Each applied migration gets the row Prisma writes in `_prisma_migrations`: a uuid4 `id`,
  `checksum` = sha256 hex of the file's bytes, `migration_name` = directory name, `started_at`,
  `finished_at`, `logs` NULL and `applied_steps_count` 1. A migration that already has a finished,
  not rolled-back row is skipped, so a second run changes nothing; litellm-proxy-extras' own
  recovery code reads these rows as completed Prisma migrations (tests/integration checks it).
- Not done here: the request-log indexes LiteLLM's migration job builds after `migrate deploy`
  (litellm_proxy_extras/request_log_indexes.py); they are performance indexes, not schema.
- The whole run holds Prisma's advisory lock (72707369), so it serialises with another copy of
  itself and with Prisma/LiteLLM migrating the same database. It is taken with
  pg_try_advisory_lock and retried from here, never waited for inside the server: a session
  blocked in pg_advisory_lock is an open transaction, which a `CREATE INDEX CONCURRENTLY` of the
  lock holder waits for in turn, a deadlock (seen, and covered by a test).
- The database password never appears on a command line: DATABASE_URL is split into libpq's PG*
  environment variables for the psql child. Every value reaches psql as a psql variable
  (`\\set`), never spliced into SQL text.

Usage: DATABASE_URL=postgresql://user:pass@host:5432/db python3 psql_migrate.py
(PSQL_MIGRATE_DIR=<dir> applies the `*/migration.sql` of another directory instead; for tests.)
Exit status 0 when every migration is applied; otherwise non-zero with the failing migration's name
and psql's error on stderr.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

PRISMA_ADVISORY_LOCK = 72707369  # the key `prisma migrate deploy` locks on PostgreSQL
LOCK_TIMEOUT = 600.0  # seconds to wait for another migration run (Prisma's migrate deploy limit)
LOCK_RETRY_INTERVAL = 0.5

# Prisma's own ledger definition (prisma-engines' Postgres flavour; also what
# litellm_proxy_extras/migration_recovery.py creates when it baselines a database).
LEDGER_DDL = (
    'CREATE TABLE IF NOT EXISTS "_prisma_migrations" ('
    '"id" varchar(36) PRIMARY KEY NOT NULL, '
    '"checksum" varchar(64) NOT NULL, '
    '"finished_at" timestamptz, '
    '"migration_name" varchar(255) NOT NULL, '
    '"logs" text, '
    '"rolled_back_at" timestamptz, '
    '"started_at" timestamptz NOT NULL DEFAULT now(), '
    '"applied_steps_count" integer NOT NULL DEFAULT 0);'
)

# libpq connection parameters a URL may carry, and the environment variable psql reads each from.
# Prisma-only parameters (connection_limit, pool_timeout, pgbouncer, sslaccept, ...) mean nothing
# to libpq and are dropped, as LiteLLM itself does before handing a URL to libpq.
LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "sslsni": "PGSSLSNI",
    "channel_binding": "PGCHANNELBINDING",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}


class MigrationError(RuntimeError):
    def __init__(self, migration: str | None, detail: str):
        self.migration = migration
        self.detail = detail
        where = f'migration "{migration}" failed' if migration else "migrating the database failed"
        super().__init__(f"{where}: {detail}")


def libpq_environment(database_url: str) -> dict[str, str]:
    """The PG* variables that make a bare `psql` connect where `database_url` points.

    Returns them together with a `schema` entry (Prisma's `?schema=`) when the URL names one.
    """
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("DATABASE_URL must start with postgresql:// or postgres://")
    env: dict[str, str] = {}
    userinfo, at, hostspec = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            env["PGUSER"] = unquote(user)
        if colon:
            env["PGPASSWORD"] = unquote(password)
    hosts, ports = _split_hosts(hostspec)
    if any(hosts):
        env["PGHOST"] = ",".join(hosts)
    if any(ports):
        env["PGPORT"] = ",".join(port or "5432" for port in ports)
    if parts.path.strip("/"):
        env["PGDATABASE"] = unquote(parts.path[1:])
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            env["schema"] = value
        elif key in LIBPQ_ENV:
            env[LIBPQ_ENV[key]] = value
    return env


def _split_hosts(hostspec: str) -> tuple[list[str], list[str]]:
    """`h1:5432,[::1]:5433` -> (["h1", "::1"], ["5432", "5433"]); libpq takes both as lists."""
    hosts, ports = [], []
    for entry in hostspec.split(",") if hostspec else []:
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = entry.partition(":")
        hosts.append(unquote(host))
        ports.append(port)
    return hosts, ports


def psql_meta_quote(value: str) -> str:
    """Quote `value` as one argument of a psql meta-command such as `\\set`.

    Inside single quotes psql reads `''` as `'` and C-like backslash escapes; a newline would end
    the meta-command, so it is written as `\\n`.
    """
    if "\x00" in value:
        raise ValueError("psql variables cannot hold a NUL character")
    escaped = value.replace("\\", "\\\\").replace("'", "''").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


def find_migrations_dir() -> Path:
    """`migrations/` of the installed litellm_proxy_extras, found without importing it (its import
    pulls in psycopg, which this script does not need)."""
    spec = importlib.util.find_spec("litellm_proxy_extras")
    if spec is None or not spec.submodule_search_locations:
        raise MigrationError(None, "the litellm-proxy-extras package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "migrations"


def list_migrations(migrations_dir: Path) -> list[tuple[str, Path]]:
    """(name, migration.sql) for every migration directory, in Prisma's (lexical) order."""
    found = [(path.parent.name, path) for path in migrations_dir.glob("*/migration.sql")]
    if not found:
        raise MigrationError(None, f"no */migration.sql under {migrations_dir}")
    return sorted(found)


APPLY_MARK = "@@psql_migrate applying"
BUSY_MARK = "@@psql_migrate busy"


def build_script(migrations: list[tuple[str, Path]], schema: str | None) -> str:
    """The psql script for one session: lock, ledger, then each pending migration and its row."""
    lines = [
        "\\set ON_ERROR_STOP on",
        # Held by this session until it ends; when another run holds it, say so and stop.
        f"SELECT pg_try_advisory_lock({PRISMA_ADVISORY_LOCK}) AS locked \\gset",
        "\\if :locked",
        "\\else",
        f"\\echo {psql_meta_quote(BUSY_MARK)}",
        "\\quit",
        "\\endif",
        # Keep psql's stderr for errors: IF NOT EXISTS notices would bury the one that matters.
        "SET client_min_messages TO warning;",
    ]
    if schema:
        lines += [f"\\set schema {psql_meta_quote(schema)}",
                  "CREATE SCHEMA IF NOT EXISTS :\"schema\";", "SET search_path TO :\"schema\";"]
    lines.append(LEDGER_DDL)
    for name, path in migrations:
        script = path.read_bytes()
        lines += [
            f"\\set name {psql_meta_quote(name)}",
            f"\\set checksum {hashlib.sha256(script).hexdigest()}",
            f"\\set id {uuid.uuid4()}",
            # The check runs under the lock, so a concurrent runner's work is seen, not repeated.
            'SELECT NOT EXISTS (SELECT 1 FROM "_prisma_migrations" WHERE migration_name = :\'name\' '
            "AND finished_at IS NOT NULL AND rolled_back_at IS NULL) AS pending \\gset",
            "\\if :pending",
            f"\\echo {psql_meta_quote(APPLY_MARK)} :name",
            f"\\set sql {psql_meta_quote(script.decode('utf-8'))}",
            "SELECT clock_timestamp() AS started_at \\gset",
            # \gexec sends the whole file as one query string, exactly as Prisma does.
            "SELECT :'sql' \\gexec",
            'INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, logs, '
            "rolled_back_at, started_at, applied_steps_count) VALUES (:'id', :'checksum', "
            "clock_timestamp(), :'name', NULL, NULL, :'started_at', 1);",
            "\\endif",
        ]
    lines.append(f"SELECT pg_advisory_unlock({PRISMA_ADVISORY_LOCK});")
    return "\n".join(lines) + "\n"


def child_environment(database_url: str) -> tuple[dict[str, str], str | None]:
    """os.environ without inherited PG* settings, plus the ones from the URL: what psql sees is
    exactly what DATABASE_URL says, and the password travels in the environment, not in argv."""
    target = libpq_environment(database_url)
    schema = target.pop("schema", None)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(target)
    env["PGCLIENTENCODING"] = "UTF8"  # the script is sent as UTF-8 whatever the locale says
    return env, schema


def apply_migrations(database_url: str, migrations_dir: Path | str | None = None) -> list[str]:
    """Apply every pending migration; return the names applied now (empty when none was pending)."""
    directory = Path(migrations_dir) if migrations_dir else find_migrations_dir()
    migrations = list_migrations(directory)
    env, schema = child_environment(database_url)
    script = build_script(migrations, schema).encode("utf-8")
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        result = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"], input=script, capture_output=True, env=env
        )
        stdout = result.stdout.decode("utf-8", "replace")
        if result.returncode != 0 or BUSY_MARK not in stdout.splitlines():
            break
        if time.monotonic() > deadline:
            raise MigrationError(None, f"another migration run held the lock for more than {LOCK_TIMEOUT:.0f}s")
        time.sleep(LOCK_RETRY_INTERVAL)
    # \echo joins its arguments with one space: "<mark> <name>".
    applied = [line[len(APPLY_MARK) + 1 :] for line in stdout.splitlines() if line.startswith(APPLY_MARK + " ")]
    if result.returncode != 0:
        failed = applied.pop() if applied else None
        detail = result.stderr.decode("utf-8", "replace").strip() or f"psql exited {result.returncode}"
        raise MigrationError(failed, detail)
    return applied


def main() -> int:
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url:
        print("psql_migrate: DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        applied = apply_migrations(database_url, os.environ.get("PSQL_MIGRATE_DIR") or None)
    except (MigrationError, ValueError, OSError) as error:
        print(f"psql_migrate: {error}", file=sys.stderr)
        return 1
    print(f"psql_migrate: applied {len(applied)} migration(s)" + (f", last {applied[-1]}" if applied else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
