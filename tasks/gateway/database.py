"""The database stage: run psql where the database is, and put the LiteLLM bootstrap in place.

Values reach psql only on its stdin, as `\\set` lines followed by templates/gateway/bootstrap.sql, so no
value is ever part of a command line (visible in `ps` on the host and in pyinfra's -vv output)
and none is ever spliced into SQL text (psql quotes `:'name'` itself).

The master key itself never enters this module: callers pass its sha256 hash (what LiteLLM
stores as the token) and its abbreviated display name, neither of which can authenticate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shlex
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, HiddenValue, StringCommand, operation
from pyinfra.api.operation import OperationMeta

from tasks.config import pgservice
from tasks.lib.compose import DB_SERVICE, compose_cmd
from tasks.lib.envfile import EnvLineHashes, line_hash
from tasks.lib.render import ENV_FILE

BOOTSTRAP_SQL = Path(__file__).resolve().parents[2] / "templates" / "gateway" / "bootstrap.sql"
MASTER_KEY_ALIAS = "master-key"
# Lines the check query prints; anything else (including no output) means "not in place".
IN_PLACE = "bootstrap: in place"
NOT_IN_PLACE = "bootstrap: not in place"
VARIABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


# --- values -------------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    """What LiteLLM stores as a key's token: sha256 hex of the whole `sk-...` string."""
    return hashlib.sha256(key.encode()).hexdigest()


def abbreviate_key(key: str) -> str:
    """LiteLLM's display name for a key (litellm.proxy.auth.auth_utils.abbreviate_api_key)."""
    # LiteLLM shows nothing of keys shorter than its MINIMUM_CUSTOM_KEY_LENGTH (16).
    return "sk-..." if len(key) < 16 else f"sk-...{key[-4:]}"


def psql_literal(value: str) -> str:
    """Quote `value` as one argument of a psql meta-command (`\\set name '...'`).

    Inside single quotes psql reads `''` as `'` and C-like backslash escapes, so `\\` is doubled;
    a raw newline would end the meta-command, so line breaks are written as escapes.
    """
    if "\x00" in value:
        raise ValueError("a psql variable cannot hold a NUL character")
    escaped = value.replace("\\", "\\\\").replace("'", "''").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


def psql_variables(values: dict[str, str]) -> str:
    """`\\set` lines for psql's stdin; names are checked because they are not quoted."""
    lines = []
    for name, value in values.items():
        if not VARIABLE_NAME.match(name):
            raise ValueError(f"not a psql variable name: {name!r}")
        lines.append(f"\\set {name} {psql_literal(value)}")
    return "\n".join(lines) + "\n"


def bootstrap_values(
    admin_user_id: str, admin_email: str, master_key_hash: str, master_key_name: str
) -> dict[str, str]:
    """The variables templates/gateway/bootstrap.sql and the check query read, validated once."""
    if not admin_user_id:
        raise ValueError("admin_user_id must not be empty")
    if not SHA256_HEX.match(master_key_hash):
        raise ValueError("master_key_hash must be a sha256 hex digest (use database.hash_key)")
    return {
        "admin_user_id": admin_user_id,
        "admin_email": admin_email or "",
        "key_hash": master_key_hash,
        "key_name": master_key_name,
        "key_alias": MASTER_KEY_ALIAS,
    }


# pyinfra writes stdin as UTF-8; say so, whatever locale psql runs under on the host or image.
PRELUDE = "\\encoding UTF8\n"


def bootstrap_input(values: dict[str, str]) -> str:
    """psql's whole stdin for the bootstrap: the variables, then the SQL file."""
    return PRELUDE + psql_variables(values) + BOOTSTRAP_SQL.read_text(encoding="utf-8")


# The wanted state of templates/gateway/bootstrap.sql, read back. Missing tables (migrations not applied
# yet) answer "not in place" instead of failing, so the fact can run before the schema exists.
CHECK_SQL = f"""\\set ON_ERROR_STOP on
SELECT to_regclass('"LiteLLM_UserTable"') IS NOT NULL
   AND to_regclass('"LiteLLM_VerificationToken"') IS NOT NULL AS schema_ready \\gset
\\if :schema_ready
SELECT CASE WHEN
    EXISTS (SELECT 1 FROM "LiteLLM_UserTable"
             WHERE user_id = :'admin_user_id' AND user_role = 'proxy_admin'
               AND (:'admin_email' = '' OR user_email = :'admin_email'))
    AND (SELECT count(*) FROM "LiteLLM_VerificationToken" WHERE key_alias = :'key_alias') = 1
    AND EXISTS (SELECT 1 FROM "LiteLLM_VerificationToken"
                 WHERE key_alias = :'key_alias' AND token = :'key_hash'
                   AND user_id = :'admin_user_id' AND key_name = :'key_name'
                   AND models = ARRAY['all-proxy-models']::text[]
                   AND permissions = '{{"allow_all": true}}'::jsonb)
  THEN '{IN_PLACE}' ELSE '{NOT_IN_PLACE}' END;
\\else
SELECT '{NOT_IN_PLACE}';
\\endif
"""


def check_input(values: dict[str, str]) -> StringIO:
    """psql's stdin for BootstrapState. A StringIO, not a str: pyinfra prints a fact's arguments
    at -v, and a StringIO prints as its type, never its content. One per call: it is consumed."""
    return StringIO(PRELUDE + psql_variables(values) + CHECK_SQL)


# --- where psql runs ----------------------------------------------------------------------------

# Mode "external": libpq's own service and password files, made from DATABASE_URL on the controller
# (tasks/config/pgservice.py) and written 0600 beside the project's .env, seen read-only by a one-shot
# container of the Postgres image. psql takes a URL only as an argument, which `ps` would show.
CONTAINER_PG_DIR = "/run/litellm-deploy"


def psql(settings, *psql_args: str, program: str = "psql") -> str:
    """The psql (or pg_dump: `program`) invocation on a gateway host for its database; the SQL and
    its variables go on its stdin, no value is in the command.

    bundled   inside the compose project's Postgres service: the official image trusts local socket
              connections, so no password is involved at all.
    external  a one-shot container of `postgres_image` with the project's libpq files mounted
              read-only; like the proxy's container it sits on a bridge network with
              host.docker.internal mapped, so the database's address resolves as it does for the proxy.
    """
    args = " ".join(shlex.quote(arg) for arg in psql_args)
    if settings.database_mode == "bundled":
        return compose_psql(
            settings.compose_project,
            settings.install_dir,
            settings.postgres_user,
            settings.postgres_db,
            *psql_args,
            program=program,
        )
    if settings.database_mode == "external":
        install_dir = settings.install_dir.rstrip("/")
        mounts = " ".join(
            f"-v {shlex.quote(f'{install_dir}/{name}:{CONTAINER_PG_DIR}/{name}:ro')}"
            for name in (pgservice.SERVICE_FILE, pgservice.PASSWORD_FILE)
        )
        flags = "-X -q -v ON_ERROR_STOP=1 " if program == "psql" else ""
        return (
            f"docker run --rm -i --add-host host.docker.internal:host-gateway {mounts} "
            f"-e PGSERVICEFILE={CONTAINER_PG_DIR}/{pgservice.SERVICE_FILE} -e PGPASSFILE={CONTAINER_PG_DIR}/{pgservice.PASSWORD_FILE} "
            f"-e PGSERVICE={pgservice.SERVICE} --entrypoint {program} {shlex.quote(settings.postgres_image)} "
            f"{flags}{args}"
        ).rstrip()
    raise ValueError(f"database_mode {settings.database_mode!r} has no database")


def compose_psql(project: str, install_dir: str, user: str, db: str, *psql_args: str, program: str = "psql") -> str:
    """psql (or `program`) inside a compose project's Postgres service: a gateway's bundled one, or
    the db host's (tasks/state_hosts.py). Its local socket is trusted: no password involved."""
    args = " ".join(shlex.quote(arg) for arg in psql_args)
    flags = "-X -q -v ON_ERROR_STOP=1 " if program == "psql" else ""
    return (
        f"{compose_cmd(project, install_dir)} exec -T {DB_SERVICE} {program} "
        f"-U {shlex.quote(user)} -d {shlex.quote(db)} {flags}{args}"
    ).rstrip()


# --- fact and operation -------------------------------------------------------------------------


class BootstrapState(FactBase[bool]):
    """True when the admin user (role proxy_admin) exists and exactly one row carries the
    master-key alias, with the current key's hash, linked to that user.

    The wanted values are not arguments (pyinfra prints those): pass them as
    `_stdin=check_input(values)`, or use `bootstrap_in_place()`. Whatever goes wrong (no
    tables yet, database not up, docker missing before the first deploy) reads as "not in
    place": the bootstrap then runs and fails loudly if the database really is unreachable.
    """

    @staticmethod
    def default() -> bool:
        return False

    def command(self, psql: str) -> str:
        return f"{psql} -A -t || true"

    def process(self, output: list[str]) -> bool:
        return any(line.strip() == IN_PLACE for line in output)


def bootstrap_in_place(values: dict[str, str], psql: str) -> bool:
    """BootstrapState on the current host, its wanted values on stdin (see the fact)."""
    return host.get_fact(BootstrapState, psql=psql, _stdin=check_input(values))


@operation()
def bootstrap(
    psql: str,
    admin_user_id: str,
    admin_email: str,
    master_key_hash: str,
    master_key_name: str,
):
    """Admin user + master-key link in LiteLLM's tables (templates/gateway/bootstrap.sql), only when the
    fact says they are not in place, so an unchanged deploy reports no change. `psql`: where psql
    runs (database.psql for a gateway).

    No argument is a secret (the key arrives as its hash); give the operation a `name=` anyway,
    as every operation in this package, so its arguments stay out of the logs.
    """
    values = bootstrap_values(admin_user_id, admin_email, master_key_hash, master_key_name)
    if bootstrap_in_place(values, psql):
        host.noop("LiteLLM admin user and master key link are in place")
        return
    # The values ride on this command's stdin; pyinfra never prints a command's stdin.
    yield StringCommand(psql, _stdin=bootstrap_input(values))


def bootstrap_for_key(
    settings, key: str, name: str = "LiteLLM admin user and master-key link", **op_args
) -> OperationMeta:
    """The bootstrap for a gateway's Settings with the master-key link on `key` (rotation moves it);
    op_args: pyinfra global arguments (_if, _ignore_errors)."""
    return bootstrap(
        name=name,
        psql=psql(settings),
        admin_user_id=settings.admin_user_id,
        admin_email=settings.admin_email,
        master_key_hash=hash_key(key),
        master_key_name=abbreviate_key(key),
        **op_args,
    )


def bootstrap_current_key(settings, **op_args) -> OperationMeta:
    """The bootstrap for the gateway's current master key (deploy, restore, an upgrade's rollback)."""
    return bootstrap_for_key(settings, settings.secrets.master_key, **op_args)


# --- a changed POSTGRES_PASSWORD reaches the existing role ---------------------------------------
#
# The official Postgres image applies POSTGRES_PASSWORD only when it initialises an empty data
# directory. A new value in the secrets file would reach the proxy's DATABASE_URL but not the role,
# and the proxy could no longer log in. So the role gets it first, while the .env on the host still
# holds the old value (write_files comes after): a failure here changes nothing, and a re-run finds
# the old .env line again and retries.

POSTGRES_PASSWORD = "POSTGRES_PASSWORD"
ROLE_PASSWORD_SQL = "ALTER ROLE :\"role\" PASSWORD :'password';\n"
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations


def scram_sha256(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of `password` (RFC 5802/7677, as pg_authid stores it).

    ALTER ROLE stores a verifier as given, so the server never sees the password itself: not in a
    statement log, an error's STATEMENT line, nor pg_stat_activity. Only for printable ASCII, where
    SASLprep changes nothing (see role_password_input)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def role_password_input(role: str, password: str) -> str:
    """psql's stdin for ALTER ROLE: the verifier (or, for a password SASLprep might rewrite, the
    password itself, hashed by the server) as a psql variable, never in a command line."""
    plain_ascii = password.isascii() and password.isprintable()
    value = scram_sha256(password) if plain_ascii else password
    return PRELUDE + psql_variables({"role": role, "password": value}) + ROLE_PASSWORD_SQL


@operation()
def role_password(psql: str, install_dir: str, compose_project: str, role: str, password: HiddenValue):
    """The role's password set to `password` when the .env on the host holds another one (an
    existing database whose POSTGRES_PASSWORD changed in the secrets file). Run it before the
    .env is written. No .env or no POSTGRES_PASSWORD line: a new database, initialised with it."""
    value = password.unmask()
    current = _password_line(install_dir)
    if not current:
        host.noop("no existing database password on the host: Postgres takes it when it initialises")
        return
    if current == line_hash(POSTGRES_PASSWORD, value):
        host.noop(f"{POSTGRES_PASSWORD} unchanged")
        return
    refusal = (
        f"{POSTGRES_PASSWORD} changed in the secrets file but could not be set on role {shlex.quote(role)}, so "
        "nothing was changed (the .env and the proxy keep the old password). Fix: start the database "
        f"({compose_cmd(compose_project, install_dir)} up -d {DB_SERVICE}) and deploy again; or put the previous "
        f"{POSTGRES_PASSWORD} (the one in {install_dir.rstrip('/')}/{ENV_FILE} on this host) back into the secrets file"
    )
    yield StringCommand(
        psql, "||", f"{{ echo {shlex.quote(refusal)} >&2; exit 1; }}", _stdin=role_password_input(role, value)
    )


def _password_line(install_dir: str) -> str | None:
    """The hash of the POSTGRES_PASSWORD line of the host's .env (None: no such line, or no .env)."""
    found = host.get_fact(EnvLineHashes, install_dir=install_dir, names=(POSTGRES_PASSWORD,)) or {}
    return found.get(POSTGRES_PASSWORD)


def db_host_done(run_state, name: str) -> bool:
    """The db host `name` is in this run and has not failed. Its role_password runs before every
    gateway operation (deploy.py: the state hosts, then a barrier), so by a gateway's turn it has
    set the role's password, or failed."""
    db_host = run_state.inventory.get_host(name, None)
    return db_host is not None and db_host in run_state.activated_hosts and db_host not in run_state.failed_hosts


@operation()
def db_host_password_applied(install_dir: str, db_host: str, password: HiddenValue):
    """A gateway on a db host's database takes a changed POSTGRES_PASSWORD (its DATABASE_URL with it)
    only once the db host set it on the role; otherwise it fails here, before its files are written,
    and keeps the password the database has."""
    current = _password_line(install_dir)
    if not current or current == line_hash(POSTGRES_PASSWORD, password.unmask()):
        host.noop(f"{POSTGRES_PASSWORD} unchanged")
        return
    if not host.state.is_executing:
        host.noop(f"changed: the db host {db_host} sets it on the role first, in this run")
        return
    if db_host_done(host.state, db_host):
        host.noop(f"set on the role by the db host {db_host} in this run")
        return
    failed = host.state.inventory.get_host(db_host, None) in host.state.failed_hosts
    why = "failed in this run (its error is above)" if failed else "is not in this run"
    refusal = (
        f"{POSTGRES_PASSWORD} changed in the secrets file, but the db host {db_host} {why}: its database "
        "role still has the previous password, so this gateway keeps it (nothing was written). fix: deploy "
        f"with {db_host} in the run (no --limit that leaves it out), after fixing what failed there"
    )
    yield f"echo {shlex.quote(refusal)} >&2; exit 1"


def role_password_for(settings, **op_args) -> object:
    """role_password for a bundled gateway's Settings (deploy, before its files are written); on a
    db host's database, the check that the db host set it first (tasks/state_hosts.py)."""
    if settings.db_host:
        return db_host_password_applied(
            name=f"{POSTGRES_PASSWORD}: set on the role by the db host {settings.db_host} first",
            install_dir=settings.install_dir,
            db_host=settings.db_host,
            password=HiddenValue(settings.secrets[POSTGRES_PASSWORD]),
            **op_args,
        )
    if settings.database_mode != "bundled":
        return None
    return role_password(
        name=f"Database role {settings.postgres_user}: {POSTGRES_PASSWORD} from the secrets file",
        psql=psql(settings),
        install_dir=settings.install_dir,
        compose_project=settings.compose_project,
        role=settings.postgres_user,
        password=HiddenValue(settings.secrets[POSTGRES_PASSWORD]),
        **op_args,
    )
