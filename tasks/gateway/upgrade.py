"""Upgrading a gateway's LiteLLM image: a backup first, the new image migrated and started, and, when
it does not verify, the previous image and the data from before the attempt put back by themselves.

A run is an upgrade (or a downgrade: the same path) when the gateway already runs another image
than `litellm_image`. Which one comes from the host, read when the run is planned:
  1. .state/verified-image, written by every deploy whose verification passed;
  2. else the image of the project's proxy container (hosts deployed before that marker existed,
     or never verified);
  neither: a first deploy, no upgrade.

On an upgrade, in deploy order (tasks.deploy_gateway, then run_stages here):
  image     pulled or loaded and checked before anything else (tasks.gateway.stack.get_images): a mistyped
            tag or an unreachable registry fails the host with the proxy still serving on the
            previous image, its files unchanged and no backup taken
  backup    database modes: pg_dump before the new files are written, into backup_dir as
            litellm-<UTC stamp>-before-upgrade.dump (out of the scheduled retention); a failed
            backup stops the host before anything changed
  attempt   the runbook's stages (files, database, migrations, bootstrap, proxy, verification) run
            with their errors held (_ignore_errors): a failure skips the rest of the attempt and
            starts the rollback. The stages know nothing of this: run_stages wraps the list.
  rollback  the files for the previous image; bundled: the proxy stopped, the database replaced by
            the backup (the whole schema, so the new image's migrations are undone too), migrations
            and bootstrap for the previous image; the proxy on the previous image; verification
  report    the host fails (non-zero exit) naming the new image, the cause, and whether the
            rollback verified healthy — the group data still names the new image, so the next run
            tries again; pin `litellm_image` back to stay on the previous one

Interrupted (the run killed, the connection lost) between the backup and the end of verification, the
gateway is left part-way: the new image's migrations may have run. The backup records itself as the
interrupted upgrade's (.state/upgrade-pending, bundled mode); the next run, again an upgrade from the same
verified image, takes a fresh copy of what the database holds then (purpose "before-upgrade-rerun", out of
the other backups' retention) but rolls back, if it must, to the first backup: the one from before any of
the new image's migrations. A verified run, or a completed rollback, clears the record.

An external database is backed up but not restored by the rollback (restore.py is for the bundled
database): the report names the backup to restore with the database's own tooling.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass

from pyinfra import host, logger, state
from pyinfra.api import FactBase, deploy, operation
from pyinfra.api.operation import OperationMeta

from tasks.config.settings import Settings
from tasks.gateway import backup, restore, stack, verify
from tasks.lib.compose import PROXY_SERVICE, ImageId, compose_cmd
from tasks.lib.attempt import Attempt
from tasks.lib.outcome import failing_command
from tasks.lib.stages import Stage, run_plainly

STATE_DIR = ".state"
VERIFIED_MARKER = "verified-image"
PENDING_RECORD = "upgrade-pending"  # previous image, target image, backup path: one per line


def marker_path(install_dir: str) -> str:
    return f"{install_dir.rstrip('/')}/{STATE_DIR}/{VERIFIED_MARKER}"


def pending_path(install_dir: str) -> str:
    return f"{install_dir.rstrip('/')}/{STATE_DIR}/{PENDING_RECORD}"


def replaced_file(path: str, lines: list[str]) -> str:
    """Shell writing `lines` to `path` whole or not at all."""
    quoted = shlex.quote(path)
    return (
        f"mkdir -p \"$(dirname {quoted})\" && printf '%s\\n' {' '.join(map(shlex.quote, lines))} > {quoted}.part && "
        f"mv -f {quoted}.part {quoted}"
    )


class DeployedImage(FactBase):
    """("verified", image) from the marker, ("running", image) from the proxy container, or None."""

    def command(self, project: str, install_dir: str) -> str:
        marker = shlex.quote(marker_path(install_dir))
        labels = (
            f"--filter label=com.docker.compose.project={shlex.quote(project)} "
            f"--filter label=com.docker.compose.service={PROXY_SERVICE}"
        )
        return (
            f'if [ -s {marker} ]; then echo "verified $(head -n1 {marker})"; '
            f"else id=$(docker ps --all --quiet {labels} 2>/dev/null | head -n1); "
            'if [ -n "$id" ]; then echo "running $(docker inspect --format \'{{.Config.Image}}\' "$id")"; fi; fi; true'
        )

    def process(self, output: list[str]) -> tuple[str, str] | None:
        for line in output:
            source, _, image = line.strip().partition(" ")
            if source in ("verified", "running") and image:
                return source, image
        return None


class VerifiedImage(FactBase):
    """The image the last verified deploy ran, from the marker only."""

    def command(self, install_dir: str) -> str:
        return f"head -n1 {shlex.quote(marker_path(install_dir))} 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output and output[0].strip() else None


@dataclass(frozen=True)
class Pending:
    """An upgrade interrupted after its backup (the record), and whether that backup is still there."""

    previous: str
    target: str
    backup_path: str
    backup_present: bool


class PendingUpgrade(FactBase):
    """The record of an interrupted upgrade (Pending), or None."""

    def command(self, install_dir: str) -> str:
        record = shlex.quote(pending_path(install_dir))
        return (
            f"if [ -s {record} ]; then head -n3 {record}; "
            f'if [ -s "$(sed -n 3p {record})" ]; then echo present; else echo missing; fi; fi; true'
        )

    def process(self, output: list[str]) -> Pending | None:
        lines = [line.strip() for line in output]
        if len(lines) != 4 or not all(lines):
            return None
        return Pending(lines[0], lines[1], lines[2], lines[3] == "present")


@dataclass
class Upgrade:
    """One gateway's upgrade in this run; the attempt's operations are added as the deploy plans them."""

    host_name: str
    previous: str
    target: str
    source: str  # "verified" or "running": how the previous image was known
    database_mode: str
    backup_path: str | None = None
    # The backup of an earlier, interrupted attempt from the same previous image: the rollback restores
    # it, as the database may hold that attempt's migrations by now.
    interrupted_backup: str | None = None
    attempt: Attempt = dataclasses.field(default_factory=Attempt)  # the runbook's stages (tasks/lib/attempt.py)
    rollback_verified: OperationMeta | None = None

    @property
    def restore_path(self) -> str | None:
        return self.interrupted_backup or self.backup_path


def upgrade_for(settings: Settings) -> Upgrade | None:
    """The upgrade this run makes on the current host, or None when the image is unchanged."""
    found = host.get_fact(DeployedImage, project=settings.compose_project, install_dir=settings.install_dir)
    if found is None or found[1] == settings.litellm_image:
        return None
    source, previous = found
    upgrade = Upgrade(settings.host_name, previous, settings.litellm_image, source, settings.database_mode)
    known = "last verified" if source == "verified" else "its proxy container's"
    host.log(f"upgrade: {previous} ({known} image) -> {settings.litellm_image}", logger.info)
    if not host.get_fact(ImageId, image=previous):
        host.log(
            f"upgrade: the previous image {previous} is no longer on this host, so a rollback could not "
            "start it; pull or load it first if you want the safety net",
            logger.warning,
        )
    pending = pending_upgrade(settings)
    if pending and pending.previous == previous and settings.database_mode == "bundled":
        if pending.backup_present:
            upgrade.interrupted_backup = pending.backup_path
            host.log(
                f"upgrade: an earlier upgrade from {previous} to {pending.target} was interrupted after its "
                f"backup; a rollback restores that backup ({pending.backup_path})",
                logger.warning,
            )
        else:
            host.log(
                f"upgrade: an earlier upgrade from {previous} to {pending.target} was interrupted, and its "
                f"backup {pending.backup_path} is gone: a rollback can only restore this run's backup, which "
                "may hold that attempt's migrations",
                logger.warning,
            )
    return upgrade


def pending_upgrade(settings: Settings) -> Pending | None:
    pending = host.get_fact(PendingUpgrade, install_dir=settings.install_dir)
    if pending and pending.target != settings.litellm_image and pending.previous == settings.litellm_image:
        host.log(
            f"an upgrade to {pending.target} was interrupted and the image is {settings.litellm_image} again: "
            f"the database may hold {pending.target}'s migrations; the backup from before that upgrade is "
            f"{pending.backup_path}",
            logger.warning,
        )
    return pending


def run_stages(settings: Settings, stages: list[Stage]) -> None:
    """The runbook's stages: plainly on a first deploy or a re-run (the first failure stops the
    host); on an upgrade as its attempt, between the backup and the rollback-or-report."""
    upgrading = upgrade_for(settings)
    if upgrading is None:
        pending_upgrade(settings)
        run_plainly(stages)
        return
    backed_up(settings, upgrading)
    for stage in stages:
        upgrading.attempt.add(stage.label, stage(**upgrading.attempt.args()))
    # Only after a failure: the previous image, data from before it, verified; then the host fails.
    rolled_back(settings=settings, upgrade=upgrading, _if=[upgrading.attempt.rolling_back])
    upgrade_reported(name=f"Upgrade to {settings.litellm_image}", upgrade=upgrading)


def backed_up(settings: Settings, upgrade: Upgrade) -> None:
    """The backup before the upgrade (database modes); a failure stops this host before any change."""
    if not settings.has_database:
        return
    # A rerun's own copy is a kind of its own for retention: it never prunes the interrupted one's backup.
    purpose = "before-upgrade-rerun" if upgrade.interrupted_backup else "before-upgrade"
    upgrade.backup_path = backup.pre_change_backup_path(settings, backup.utc_stamp(), purpose)
    if settings.database_mode == "bundled":
        record = (
            None
            if upgrade.interrupted_backup
            else replaced_file(
                pending_path(settings.install_dir), [upgrade.previous, upgrade.target, upgrade.backup_path]
            )
        )
        quiet_backup(
            name=f"Proxy stopped, database backed up before the upgrade to {upgrade.target}: {upgrade.backup_path}",
            settings=settings,
            path=upgrade.backup_path,
            record=record,
        )
    else:
        backup.database_backup(
            name=f"Database backup before the upgrade to {upgrade.target}: {upgrade.backup_path}",
            settings=settings,
            path=upgrade.backup_path,
        )


@operation(is_idempotent=False)
def quiet_backup(settings: Settings, path: str, record: str | None = None):
    """The proxy stopped first: a rollback restores this backup, and a key or spend row written
    after it would be lost. The upgrade replaces the proxy anyway; if the backup fails, the proxy
    is started again and the host stops there, unchanged. `record`: shell run once the backup is
    written, in the same command (the interrupted-upgrade record: no window between the two)."""
    proxy = f"{compose_cmd(settings.compose_project, settings.install_dir)} %s {PROXY_SERVICE}"
    dump = backup.backup_script(
        backup.dump_command(settings), backup.read_back_command(settings), path, settings.backup_keep
    )
    recorded = f" && {record}" if record else ""
    yield (
        f"{proxy % 'stop'} && ( {dump} ){recorded} || {{ {proxy % 'start'} >/dev/null 2>&1; "
        "echo 'upgrade not started: the backup before it failed (above); the proxy was started again' >&2; exit 1; }"
    )


@deploy("Rollback to the previous image")
def rolled_back(settings: Settings, upgrade: Upgrade) -> None:
    """Runs only when the attempt failed (the caller passes _if=upgrade.attempt.rolling_back). A failed file
    write or restore stops the host there; the proxy and verification hold their errors, so the
    report says whether the previous image came back healthy."""
    previous = dataclasses.replace(settings, litellm_image=upgrade.previous)
    changes = stack.Changes()
    stack.write_files(settings=previous, changes=changes)
    if previous.database_mode == "bundled":
        # Stops the proxy; start_proxy below starts it again, as it is not running.
        label = (
            "the backup taken before the interrupted upgrade"
            if upgrade.interrupted_backup
            else "the backup taken before the upgrade"
        )
        # backed_up, called before this, set backup_path: a bundled database is a database.
        assert upgrade.restore_path is not None
        restore.database_replaced(settings=previous, path=upgrade.restore_path, label=label)
        # Restored: a later upgrade starts from this data, not from the interrupted attempt's backup.
        pending_cleared(name="Interrupted upgrade's record cleared", install_dir=settings.install_dir)
    stack.start_proxy(settings=previous, changes=changes, _ignore_errors=True)
    upgrade.rollback_verified = verify.verify_gateway(settings=previous, _ignore_errors=True)


@operation(is_idempotent=True)
def upgrade_reported(upgrade: Upgrade):
    if not state.is_executing:
        host.noop("reported when the deploy runs")
        return
    cause = upgrade.attempt.failure()
    if cause is None:
        saved = f"; backup from before it: {upgrade.backup_path}" if upgrade.backup_path else ""
        host.log(f"upgraded {upgrade.previous} -> {upgrade.target}, verified{saved}", logger.info)
        host.noop("upgraded")
        return
    healthy = (
        upgrade.rollback_verified is not None
        and upgrade.rollback_verified.is_complete()
        and upgrade.rollback_verified.did_succeed()
    )
    if upgrade.backup_path is None:
        data = "no database to restore"
    elif upgrade.interrupted_backup:
        data = (
            f"database restored from {upgrade.interrupted_backup}, taken before the interrupted attempt; "
            f"what it held when this run started is in {upgrade.backup_path}"
        )
    elif upgrade.database_mode == "bundled":
        data = f"database restored from {upgrade.backup_path}"
    else:
        data = (
            f"the external database was NOT restored: if the new image's migrations ran, restore "
            f"{upgrade.backup_path} with the database's own tooling"
        )
    state_now = (
        "the gateway verified healthy on the previous image again"
        if healthy
        else "the rollback did NOT verify healthy (see the operations above)"
    )
    message = (
        f"upgrade to {upgrade.target} FAILED on {upgrade.host_name}: {cause}. Rolled back to {upgrade.previous} "
        f"({data}); {state_now}. The group data still names {upgrade.target}, so the next deploy tries again: "
        f"fix the cause, or set litellm_image back to {upgrade.previous}."
    )
    yield failing_command(message)


@operation(is_idempotent=True)
def verified_image_recorded(install_dir: str, image: str):
    """What the next run compares with to know it is an upgrade (see DeployedImage). Verified, the
    gateway is no longer part-way through an interrupted upgrade: its record goes too."""
    pending = host.get_fact(PendingUpgrade, install_dir=install_dir) is not None
    if host.get_fact(VerifiedImage, install_dir=install_dir) == image and not pending:
        host.noop(f"{image} is the verified image")
        return
    yield f"{replaced_file(marker_path(install_dir), [image])} && rm -f {shlex.quote(pending_path(install_dir))}"


@operation(is_idempotent=False)
def pending_cleared(install_dir: str):
    """Always run (only a rollback calls it): the record it clears is written during this same run, after
    the facts were read."""
    yield f"rm -f {shlex.quote(pending_path(install_dir))}"
