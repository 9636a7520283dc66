"""A database backup on the gateway host: pg_dump's custom format, 0600, checked readable.

The dump runs where the database is reachable the way the proxy reaches it: inside the bundled
Postgres service (local socket, no password), or, for an external database, in a one-shot
container of the Postgres image with libpq's service and password files of the project (the same
way the bootstrap's psql runs: tasks.gateway.database.psql). No value is ever on a command line. The file is written under a temporary name and renamed once pg_restore
has read all of it back, so a file at the final path is a complete, readable dump.

Restore (see docs/rotation.md):
  bundled   docker compose --project-directory /opt/litellm exec -T db \
              pg_restore -U litellm -d litellm --clean --if-exists --single-transaction < FILE
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import Callable

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, deploy, operation
from pyinfra.facts.files import FindInFile
from pyinfra.operations import files, systemd

from tasks.config.settings import Settings
from tasks.gateway import database
from tasks.lib import uploads
from tasks.lib.compose import DB_SERVICE, changed, compose_cmd
from tasks.lib.render import environment

STAMP_PATTERN = r"[0-9]{8}T[0-9]{6}Z"
PRE_CHANGE_NAME = re.compile(rf"litellm-{STAMP_PATTERN}-([a-z-]+)\.dump")


def pre_change_backup_path(settings: Settings, stamp: str, purpose: str = "before-rotation") -> str:
    """Where rotate.py (and an upgrade, purpose "before-upgrade") puts its backup: the gateway's
    backup_dir. Each purpose is its own kind for retention: backup_script keeps the newest
    backup_keep of it."""
    return f"{settings.backup_dir.rstrip('/')}/litellm-{stamp}-{purpose}.dump"


def dump_command(settings: Settings) -> str:
    """pg_dump --format=custom of the gateway's database to stdout, run where psql runs."""
    if not settings.has_database:
        raise ValueError(f"database_mode {settings.database_mode!r} has no database to back up")
    return database.psql(settings, "--format=custom", program="pg_dump")


def read_back_command(settings: Settings) -> str:
    """pg_restore reading a whole dump from stdin (every data block, not only the table of contents,
    into /dev/null): a truncated or corrupted file fails here."""
    if settings.database_mode == "bundled":
        return f"{db_exec(settings)} pg_restore --file=/dev/null"
    return f"docker run --rm -i --entrypoint pg_restore {shlex.quote(settings.postgres_image)} --file=/dev/null"


def backup_script(dump: str, check: str, path: str, keep: int | None = None) -> str:
    """Shell that writes the output of `dump` to `path` (0600, directory 0700) once `check` has read
    it back from stdin, or fails naming the cause and leaves nothing at `path`. With `keep`, older
    backups of the same kind (litellm-<stamp>-<purpose>.dump, same purpose) beyond the newest
    `keep` are deleted afterwards."""
    directory = shlex.quote(path.rsplit("/", 1)[0])
    final = shlex.quote(path)
    part = shlex.quote(path + ".part")
    kind = PRE_CHANGE_NAME.fullmatch(path.rsplit("/", 1)[-1])
    prune = ""
    if keep is not None and kind:  # the purpose is [a-z-]+: nothing in it is special to grep -E
        prune = prune_shell(directory, rf"^litellm-{STAMP_PATTERN}-{kind[1]}\.dump$", keep) + " && "
    return (
        f"umask 077 && mkdir -p {directory} && chmod 700 {directory} && "
        f"{{ {dump} > {part} || "
        f"{{ rm -f {part}; echo 'database backup failed: pg_dump did not complete (output above)' >&2; exit 1; }}; }} && "
        f"{{ {check} < {part} > /dev/null || "
        f"{{ rm -f {part}; echo 'database backup failed: pg_restore cannot read the dump back' >&2; exit 1; }}; }} && "
        f"chmod 600 {part} && mv -f {part} {final} && {prune}echo {shlex.quote('database backup written: ' + path)}"
    )


@operation()
def database_backup(settings: Settings, path: str, needed: bool | Callable[[], bool] | None = None):
    """Dump the gateway's database to `path` on the host. `needed=False` skips it (host.noop).

    `needed` may also be a callable, asked when the operation runs: a re-run that finds the host
    already rotated has nothing to protect and takes no new backup.
    """
    wanted = needed() if callable(needed) else needed
    if wanted is False:
        host.noop("no change is due on this host's database: no backup needed")
        return
    yield backup_script(dump_command(settings), read_back_command(settings), path, settings.backup_keep)


# === `pyinfra inventory backup.py` and the scheduled backup (issue 7) =============================
#
# Host side: one shell script (below) does dump -> full read-back check -> 0600 file + sha256 ->
# retention. backup.py runs it inline with the run's UTC stamp; the systemd timer runs the same
# text installed as /usr/local sbin script. Controller side: the dump is downloaded into a 0600
# file under backup_local_dir/<host>/, its sha256 compared with the one the host recorded, then
# the controller's retention applies. Retention keeps the newest backup_keep of each kind: the
# scheduled <UTC stamp>.dump files here, and each purpose of litellm-<stamp>-<purpose>.dump
# (before-rotation, before-upgrade) in backup_script when such a backup is written.
# The script and its systemd units are named after the compose project, so two projects on one
# host each keep their own timer.

DUMP_NAME = re.compile(rf"^{STAMP_PATTERN}\.dump$")
LEGACY_UNIT = "litellm-backup"  # the one name every project shared before issue 15
LEGACY_SCRIPT = "/usr/local/sbin/litellm-backup"
UNIT_DIR = "/etc/systemd/system"


def unit_name(settings: Settings) -> str:
    """litellm-backup-<compose project>: the name of the script, the .service and the .timer."""
    return f"{LEGACY_UNIT}-{settings.compose_project}"


def script_path(settings: Settings) -> str:
    return f"/usr/local/sbin/{unit_name(settings)}"


def prune_shell(directory: str, pattern: str, keep: int) -> str:
    """POSIX sh: in `directory` (a shell word), of the files whose names match the extended regex
    `pattern` (one kind: their names sort by UTC stamp), delete all but the newest `keep`, each
    with its .sha256. Exits 0 when nothing matches."""
    return (
        f"ls -1 {directory} | grep -E {shlex.quote(pattern)} | sort -r | tail -n +{int(keep) + 1} | "
        f'while read -r old; do rm -f {directory}/"$old" {directory}/"$old.sha256"; done'
    )


def utc_stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def db_exec(settings: Settings) -> str:
    """`docker compose ... exec -T db` of the bundled Postgres (local socket, trust: no password)."""
    return f"{compose_cmd(settings.compose_project, settings.install_dir)} exec -T {DB_SERVICE}"


def host_script(dump: str, check: str, backup_dir_: str, keep: int) -> str:
    """POSIX sh: `script [STAMP]` writes <dir>/<STAMP>.dump (0600, dir 0700) and <STAMP>.dump.sha256,
    after `check` has read the dump back; then keeps the newest `keep` <stamp>.dump files.
    Prints one line `database backup written: PATH sha256 SUM`; fails naming the cause."""
    prune = prune_shell('"$dir"', rf"^{STAMP_PATTERN}\.dump$", keep)
    return f"""set -eu
umask 077
dir={shlex.quote(backup_dir_)}
stamp=${{1:-$(date -u +%Y%m%dT%H%M%SZ)}}
final="$dir/$stamp.dump"
part="$final.part"
mkdir -p "$dir"
chmod 700 "$dir"
trap 'rm -f "$part"' EXIT
{dump} > "$part" || {{ echo 'database backup failed: pg_dump did not complete (output above)' >&2; exit 1; }}
{check} < "$part" || {{ echo 'database backup failed: pg_restore cannot read the dump back' >&2; exit 1; }}
chmod 600 "$part"
sum=$(sha256sum "$part" | cut -d' ' -f1)
mv -f "$part" "$final"
printf '%s  %s\\n' "$sum" "$stamp.dump" > "$final.sha256.part"
chmod 600 "$final.sha256.part"
mv -f "$final.sha256.part" "$final.sha256"
{prune}
echo "database backup written: $final sha256 $sum"
"""


def gateway_script(settings: Settings) -> str:
    return host_script(dump_command(settings), read_back_command(settings), settings.backup_dir, settings.backup_keep)


def local_dir(settings: Settings) -> Path:
    """Controller directory of this host's backups (relative backup_local_dir = from the cwd)."""
    return Path(settings.backup_local_dir).expanduser().absolute() / settings.host_name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_sum(sum_file: Path) -> str | None:
    try:
        text = sum_file.read_text().split()
    except OSError:
        return None
    return text[0] if text and re.fullmatch(r"[0-9a-f]{64}", text[0]) else None


def dumps_in(directory: Path) -> list[Path]:
    """<stamp>.dump files, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if DUMP_NAME.match(p.name))


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` <stamp>.dump files (and their .sha256). Returns the deleted."""
    old = dumps_in(directory)[:-keep] if keep > 0 else dumps_in(directory)
    for path in old:
        path.unlink(missing_ok=True)
        Path(f"{path}.sha256").unlink(missing_ok=True)
    return old


def fetch_and_verify(state, host, remote: str, directory: str, keep: int) -> bool:
    """FunctionCommand body: download `remote` into a 0600 file in `directory` (0700), compare its
    sha256 with the one the host recorded, keep it only when equal, then prune to `keep`."""
    target_dir = Path(directory)
    target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(target_dir, 0o700)
    name = remote.rsplit("/", 1)[-1]
    final = target_dir / name
    part = target_dir / f".{name}.part"
    ok, output = host.run_shell_command(
        f"cat {shlex.quote(remote + '.sha256')}",
        print_output=False,
        print_input=False,
        **uploads.connector_arguments(state, host),
    )
    recorded = output.stdout_lines[0].split()[0] if ok and output.stdout_lines else ""
    if not re.fullmatch(r"[0-9a-f]{64}", recorded):
        host.log_styled(f"backup copy failed: no checksum recorded next to {remote}", fg="red", log_func=logger.error)
        return False
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            if not uploads.downloaded(state, host, remote, handle):
                raise OSError(f"download of {remote} failed")
        copied = sha256_of(part)
        if copied != recorded:
            host.log_styled(
                f"backup copy failed: checksum of the copy ({copied}) differs from the host's ({recorded})",
                fg="red",
                log_func=logger.error,
            )
            part.unlink(missing_ok=True)
            return False
        os.chmod(part, 0o600)
        os.replace(part, final)
        sum_part = target_dir / f".{name}.sha256.part"
        fd = os.open(sum_part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{recorded}  {name}\n")
        os.replace(sum_part, Path(f"{final}.sha256"))
    except Exception:
        part.unlink(missing_ok=True)
        raise
    removed = prune(target_dir, keep)
    host.log(f"backup copied to {final} (sha256 verified {recorded[:12]}...); pruned {len(removed)} old", logger.info)
    return True


@operation(is_idempotent=False)
def database_backup_taken(script: str, stamp: str):
    """Run the host backup script with this run's stamp (the script is shell, no value in it)."""
    yield f"sh -c {shlex.quote(script)} litellm-backup {shlex.quote(stamp)}"


@operation(is_idempotent=False)
def backup_copied(remote: str, directory: str, keep: int):
    yield FunctionCommand(fetch_and_verify, (remote, directory, keep), {})


@deploy("Database backup")
def backup_gateway(settings: Settings, stamp: str) -> None:
    """pg_dump on the host (0600, sha256, retention), then a verified copy on the controller."""
    if settings.database_mode != "bundled":
        host.noop(f"database_mode {settings.database_mode!r}: no bundled database to back up")
        return
    remote = f"{settings.backup_dir.rstrip('/')}/{stamp}.dump"
    database_backup_taken(name=f"Database backup on the host: {remote}", script=gateway_script(settings), stamp=stamp)
    backup_copied(
        name=f"Backup copied to the controller and checksum verified: {local_dir(settings)}/{stamp}.dump",
        remote=remote,
        directory=str(local_dir(settings)),
        keep=settings.backup_keep,
    )


# --- the scheduled backup ------------------------------------------------------------------------


def unit_files(settings: Settings) -> dict[str, str]:
    """path on the host -> content, for the script, the service and the timer of this project."""
    env = environment()
    values = dict(settings=settings, script_path=script_path(settings))
    unit = f"{UNIT_DIR}/{unit_name(settings)}"
    return {
        script_path(settings): "#!/bin/sh\n# Written by litellm-deploy: database backup of the bundled Postgres "
        f"of compose project {settings.compose_project}.\n" + gateway_script(settings),
        f"{unit}.service": env.get_template(f"systemd/{LEGACY_UNIT}.service.j2").render(**values),
        f"{unit}.timer": env.get_template(f"systemd/{LEGACY_UNIT}.timer.j2").render(**values),
    }


@deploy("Scheduled database backup")
def scheduled_backup(settings: Settings) -> None:
    """systemd timer + service running the host backup script (bundled database, backup_enabled)."""
    timer = f"{unit_name(settings)}.timer"
    wanted = settings.database_mode == "bundled" and settings.backup_enabled
    if not wanted:
        systemd.service(name=f"Backup timer {timer} disabled", service=timer, running=False, enabled=False)
        legacy_units_retired(
            name=f"Backup units of the old name {LEGACY_UNIT}.* removed (if this project's)", settings=settings
        )
        return
    written = []
    for path, content in unit_files(settings).items():
        written.append(
            files.put(
                name=f"Backup unit file {path}",
                src=BytesIO(content.encode()),
                dest=path,
                mode="700" if path == script_path(settings) else "644",
                user="root",
                group="root",
            )
        )
    units_reloaded(name="systemd reloaded for changed backup units", written=written, timer=timer)
    systemd.service(
        name=f"Backup timer {timer} enabled and active ({settings.backup_schedule})",
        service=timer,
        running=True,
        enabled=True,
    )
    legacy_units_retired(
        name=f"Backup units of the old name {LEGACY_UNIT}.* removed (if this project's)", settings=settings
    )


@operation()
def units_reloaded(written: list, timer: str):
    """daemon-reload (and restart an active timer, so a new schedule applies) only when a unit
    file changed in this run: asked at execution time, so an unchanged deploy reports no change."""
    if not _changed(written):
        host.noop("backup units unchanged")
        return
    yield f"systemctl daemon-reload && systemctl try-restart {timer}"


def legacy_owner_pattern(settings: Settings) -> str:
    """A line only this project's old-named backup script holds (its `docker compose ... exec`)."""
    return f"{compose_cmd(settings.compose_project, settings.install_dir)} exec"


def legacy_removal_command() -> str:
    old = f"{UNIT_DIR}/{LEGACY_UNIT}"
    return (
        f"systemctl disable --now {LEGACY_UNIT}.timer; "
        f"rm -f {old}.timer {old}.service {LEGACY_SCRIPT} && systemctl daemon-reload"
    )


@operation()
def legacy_units_retired(settings: Settings):
    """Before issue 15 every project's units were named litellm-backup.*, so a second project on the
    host overwrote the first one's timer. Those files are removed once this project has its own
    units, but only when they back up this project: another project's stay until it is deployed."""
    lines = host.get_fact(FindInFile, path=LEGACY_SCRIPT, pattern=legacy_owner_pattern(settings))
    if lines is None:
        host.noop(f"no {LEGACY_SCRIPT} on this host")
        return
    if not lines:
        host.noop(f"{LEGACY_SCRIPT} backs up another compose project: left alone")
        return
    yield legacy_removal_command()


def _changed(metas) -> bool:
    return changed(metas)
