"""Restore a gateway's bundled database from a backup: `pyinfra inventory restore.py --data restore_from=...`.

Refusal comes first and touches nothing: on the controller, while the deploy file is read (before
any operation exists), the chosen file must exist, carry its recorded sha256 (written by the
backup next to it as FILE.sha256) and match it, start with pg_dump's custom-format signature and,
when this machine has a pg_restore that knows the format version, read back whole. On the host the
uploaded copy is checked again (sha256, then the database's own pg_restore reading every block)
before the proxy is stopped. Then: proxy stopped, the current database dumped beside the backups
(safety_dump_command: if that fails, nothing is dropped and the proxy starts again), the public schema
replaced by the dump's in one transaction (restore_command: all or nothing), migrations for the
current image (its marker removed so they run), bootstrap again (master-key link = the current key),
proxy started, verification.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host, state
from pyinfra.api import deploy, operation
from pyinfra.api.exceptions import PyinfraError

from tasks.config.settings import GATEWAYS, Settings
from tasks.gateway import backup, database, migrations, verify
from tasks.lib import compose, uploads

MAGIC = b"PGDMP"
LATEST = "latest"


class RestoreRefused(PyinfraError):
    """The backup cannot be restored; raised before any operation exists, so nothing was touched."""


@dataclass(frozen=True)
class Plan:
    dump: Path
    sha256: str
    note: str  # what the controller could check


def choose(settings: Settings, restore_from: str | None) -> Path:
    if not restore_from:
        raise RestoreRefused(
            f"host {settings.host_name}: say which backup: --data restore_from=latest "
            "or --data restore_from=PATH/TO/FILE.dump"
        )
    if restore_from == LATEST:
        found = backup.dumps_in(backup.local_dir(settings))
        if not found:
            raise RestoreRefused(
                f"host {settings.host_name}: no backup under {backup.local_dir(settings)} — "
                "run backup.py first or pass restore_from=PATH"
            )
        return found[-1]
    return Path(restore_from).expanduser().absolute()


def controller_check(path: Path) -> tuple[list[str], str]:
    """(problems, note). Problems empty = the file may go to the host."""
    if not path.is_file():
        return [f"{path}: no such file"], ""
    recorded = backup.recorded_sum(Path(f"{path}.sha256"))
    if recorded is None:
        return [
            f"{path}: no recorded checksum ({path}.sha256 missing or unreadable) — refusing an unverifiable backup"
        ], ""
    actual = backup.sha256_of(path)
    if actual != recorded:
        return [
            f"{path}: checksum mismatch (file {actual}, recorded {recorded}) — the backup is corrupted or truncated"
        ], ""
    with open(path, "rb") as handle:
        if handle.read(len(MAGIC)) != MAGIC:
            return [f"{path}: not a pg_dump custom-format archive (no PGDMP signature)"], ""
    pg_restore = shutil.which("pg_restore")
    if not pg_restore:
        return [], "no pg_restore on the controller: format read back on the host"
    result = subprocess.run([pg_restore, "--file=/dev/null", str(path)], capture_output=True, text=True)
    if result.returncode == 0:
        return [], "read back whole by the controller's pg_restore"
    if "unsupported version" in result.stderr:
        # An older pg_restore than the server that dumped; the host's check decides.
        return [], "controller's pg_restore too old for this archive: format read back on the host"
    return [f"{path}: pg_restore cannot read it: {result.stderr.strip()[:500]}"], ""


def gateways_in_run() -> list[str]:
    """The gateways this pyinfra run targets (all of them without --limit)."""
    return [h.name for h in state.inventory.get_group(GATEWAYS, default=[]) if state.is_host_in_limit(h)]


def plan_for(settings: Settings, restore_from: str | None, targeted: list[str] | None = None) -> Plan:
    """targeted: the gateways of this run (default: from pyinfra's state)."""
    targeted = gateways_in_run() if targeted is None else targeted
    if restore_from and restore_from != LATEST and len(targeted) > 1:
        raise RestoreRefused(
            f"restore_from={restore_from} is one gateway's backup, but this run targets {len(targeted)} gateways "
            f"({', '.join(sorted(targeted))}); nothing was changed on any host — fix: name the one to restore "
            f"with --limit HOST (restore_from=latest picks each host's own latest backup)"
        )
    if settings.db_host:
        raise RestoreRefused(
            f"host {settings.host_name}: its database is the db host {settings.db_host}'s, which "
            "restore.py does not restore yet; nothing was changed on any host — fix: restore it by "
            f"hand on {settings.db_host} (docs/backup.md) with every gateway's proxy stopped"
        )
    if settings.database_mode != "bundled":
        raise RestoreRefused(
            f"host {settings.host_name}: restore.py handles database_mode 'bundled' only "
            f"(this host: {settings.database_mode!r})"
        )
    path = choose(settings, restore_from)
    problems, note = controller_check(path)
    if problems:
        raise RestoreRefused(
            "restore refused, nothing was changed on any host:\n"
            + "\n".join(f"  - host {settings.host_name}: {p}" for p in problems)
        )
    return Plan(path, backup.sha256_of(path), note)


def remote_path(settings: Settings, plan: Plan) -> str:
    return f"{settings.backup_dir.rstrip('/')}/restore-{plan.sha256[:16]}.dump"


@operation(is_idempotent=False)
def dump_uploaded(src: str, dest: str, sha256: str):
    """Upload into the 0700 backup dir through a 0600 .part file; keep it only if its sha256 matches."""
    directory = shlex.quote(dest.rsplit("/", 1)[0])
    part = shlex.quote(dest + ".part")
    yield f"umask 077 && mkdir -p {directory} && chmod 700 {directory} && rm -f {part}"
    yield from uploads.installed_upload(src, dest + ".part", mode="600")
    yield (
        f"chmod 600 {part} && "
        f"if [ \"$(sha256sum < {part} | cut -d' ' -f1)\" = {shlex.quote(sha256)} ]; then mv -f {part} {shlex.quote(dest)}; "
        f"else rm -f {part}; echo 'restore refused: the uploaded copy does not match the backup checksum; "
        "nothing was changed' >&2; exit 1; fi"
    )


@operation(is_idempotent=False)
def dump_readable(settings: Settings, path: str):
    yield (
        f"{backup.read_back_command(settings)} < {shlex.quote(path)} || "
        "{ echo 'restore refused: the database pg_restore cannot read this backup whole "
        "(corrupted, truncated or not a custom-format dump); nothing was changed' >&2; exit 1; }"
    )


@operation(is_idempotent=False)
def proxy_stopped(settings: Settings):
    yield f"{compose.compose_cmd(settings.compose_project, settings.install_dir)} stop {compose.PROXY_SERVICE}"


# Replaces the public schema, not only the tables the dump has: a restore after a newer image's
# migrations (an upgrade rolled back) must not keep that image's extra tables, or its next
# migration run finds them and fails.
SCHEMA_RESET = (
    "DROP SCHEMA IF EXISTS public CASCADE;",
    "CREATE SCHEMA public AUTHORIZATION pg_database_owner;",
    "GRANT USAGE ON SCHEMA public TO PUBLIC;",
)


SAFETY_PURPOSE = "before-restore"


def safety_dump_path(settings: Settings, stamp: str) -> str:
    """Where a restore dumps the database it is about to replace: the backup dir, named as a kind of
    its own for retention (tasks/gateway/backup.py): scheduled backups never prune it, only a later restore's
    safety dump beyond backup_keep of them does."""
    return backup.pre_change_backup_path(settings, stamp, SAFETY_PURPOSE)


def safety_dump_command(dump: str, check: str, path: str, keep: int, restart: str) -> str:
    """Shell: the current database dumped to `path` as a backup is (0600, read back whole), with its
    sha256 beside it as backup.py records one, so restore.py takes it back like any backup. On failure:
    `restart` (the proxy the restore stopped), and exit before anything is dropped."""
    sums = shlex.quote(f"{path}.sha256")
    name = shlex.quote(path.rsplit("/", 1)[-1])
    return (
        f"{{ ( {backup.backup_script(dump, check, path, keep)} ) && "
        f"printf '%s  %s\\n' \"$(sha256sum < {shlex.quote(path)} | cut -d' ' -f1)\" {name} > {sums} && chmod 600 {sums}; }} || "
        f"{{ {restart} >/dev/null 2>&1; rm -f {shlex.quote(path)} {sums}; echo 'restore not started: the safety dump of "
        "the current database failed (above); nothing was dropped, the proxy was started again' >&2; exit 1; }"
    )


def restore_command(pg_restore: str, psql: str, path: str, script: str, safety: str = "") -> str:
    """The restore proper: `safety` first (safety_dump_command: it exits on failure), the dump turned
    into SQL (so a dump pg_restore cannot read whole never reaches the database), then the schema
    dropped and the SQL applied in ONE transaction.
    `script` is a scratch file in a private directory (it holds the data); removed in every case."""
    sql = shlex.quote(script)
    reset = " ".join(shlex.quote(statement) for statement in SCHEMA_RESET)
    first = f"{safety}; " if safety else ""
    return (
        f"umask 077; {first}{pg_restore} --no-owner --no-privileges --file=- < {shlex.quote(path)} > {sql} || "
        f"{{ rm -f {sql}; echo 'restore failed: pg_restore cannot read the backup whole; the database is unchanged' >&2; exit 1; }}; "
        f"{{ printf '%s\\n' {reset}; cat {sql}; }} | {psql} -X -q -v ON_ERROR_STOP=1 --single-transaction > /dev/null; "
        f"rc=$?; rm -f {sql}; [ $rc -eq 0 ] || "
        "{ echo 'restore failed: rolled back as one transaction, the database is as before (psql output above)' >&2; exit 1; }"
    )


@operation(is_idempotent=False)
def database_restored(settings: Settings, path: str, safety_path: str | None = None):
    """safety_path: where the current database is dumped first (None: no safety dump, as in an upgrade's
    rollback, whose backup from before the upgrade is the data it restores)."""
    target = f"-U {shlex.quote(settings.postgres_user)} -d {shlex.quote(settings.postgres_db)}"
    safety = ""
    if safety_path:
        restart = f"{compose.compose_cmd(settings.compose_project, settings.install_dir)} start {compose.PROXY_SERVICE}"
        safety = safety_dump_command(
            backup.dump_command(settings),
            backup.read_back_command(settings),
            safety_path,
            settings.backup_keep,
            restart,
        )
    yield restore_command(
        f"{backup.db_exec(settings)} pg_restore",
        f"{backup.db_exec(settings)} psql {target}",
        path,
        f"{path}.restore.sql",
        safety,
    )


@operation(is_idempotent=False)
def migration_marker_removed(install_dir: str):
    """The restored schema is the backup's, not the image's: make the migrations gate run again."""
    yield f"rm -f {shlex.quote(migrations.marker_path(install_dir))}"


@deploy("Database replaced")
def database_replaced(settings: Settings, path: str, label: str = "the backup", safety_path: str | None = None) -> list:
    """From a dump already on the host (and checked): the proxy stopped, the database restored (after
    a safety dump of it to `safety_path`, when given), the schema migrated for settings' image, the
    bootstrap re-applied. The proxy stays stopped; returns the operations a restart depends on.
    Shared by restore.py and a failed upgrade's rollback."""
    # No writer while the tables are replaced, nor while the safety dump is taken.
    stopped = proxy_stopped(name="LiteLLM proxy stopped for the restore", settings=settings)
    saved = f", after a safety dump of the current one to {safety_path}" if safety_path else ""
    restored = database_restored(
        name=f"Database restored from {label} (single transaction){saved}",
        settings=settings,
        path=path,
        safety_path=safety_path,
    )
    # Schema for the image now configured, then the admin user and current master-key link.
    migration_marker_removed(name="Migration marker cleared after the restore", install_dir=settings.install_dir)
    migrations.schema_migrated(
        name=f"Database schema migrated for {settings.litellm_image}",
        project=settings.compose_project,
        install_dir=settings.install_dir,
        image=settings.litellm_image,
    )
    database.bootstrap_current_key(settings)
    return [stopped, restored]


@deploy("Database restore")
def restore_gateway(settings: Settings, plan: Plan) -> None:
    remote = remote_path(settings, plan)
    safety = safety_dump_path(settings, backup.utc_stamp())
    host.log(
        f"restoring {plan.dump} ({plan.note}); the current database is dumped first to {safety} on the host "
        f"(kept until {settings.backup_keep} later restores; to undo this one, copy it and its .sha256 to "
        "the controller and restore_from=that file)"
    )
    # 1. Nothing touched yet: the copy on the host is verified twice before anything stops.
    dump_uploaded(
        name=f"Backup uploaded to {remote}, checksum verified", src=str(plan.dump), dest=remote, sha256=plan.sha256
    )
    dump_readable(
        name="Backup read back whole by the database's pg_restore (nothing changed yet)", settings=settings, path=remote
    )
    # 2. Restored, migrated, bootstrapped; the proxy back (it was stopped, so this always starts it).
    replaced = database_replaced(settings=settings, path=remote, safety_path=safety)
    compose.service_up(
        name="LiteLLM proxy up and healthy",
        project=settings.compose_project,
        install_dir=settings.install_dir,
        service=compose.PROXY_SERVICE,
        depends_on=replaced,  # type: ignore[arg-type]  # pyinfra types a @deploy's return as OperationMeta
        timeout=settings.start_timeout,
    )
    verify.verify_gateway(settings=settings)
