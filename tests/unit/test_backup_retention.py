"""Scheduled and pre-change backups on a long-running host (issue 15, defect 8): every kind of backup
is pruned to backup_keep, and each compose project has its own systemd units. The shell runs for
real in a temporary directory; the unit files are parsed as systemd reads them (key=value lines)."""

import configparser
import os
import subprocess
from dataclasses import replace

import pytest

from tasks.gateway import backup, verify

STAMPS = [f"202611{day:02d}T030000Z" for day in range(1, 7)]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script, "litellm-backup", *args], capture_output=True, text=True, timeout=60)


def seed(directory, names):
    directory.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"old dump")
        (directory / f"{name}.sha256").write_text("x  name\n")


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("purpose", ["before-upgrade", "before-rotation"])
def test_a_pre_change_backup_prunes_its_own_kind_to_backup_keep(tmp_path, purpose):
    directory = tmp_path / "backups"
    upgrades = [f"litellm-{s}-before-upgrade.dump" for s in STAMPS[:4]]
    rotations = [f"litellm-{s}-before-rotation.dump" for s in STAMPS[:4]]
    scheduled = [f"{s}.dump" for s in STAMPS[:4]]
    restore_copy = "restore-0123456789abcdef.dump"
    seed(directory, upgrades + rotations + scheduled + [restore_copy])
    path = str(directory / f"litellm-{STAMPS[5]}-{purpose}.dump")

    result = run(backup.backup_script("printf 'new dump'", "cat", path, keep=2))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    same_kind = upgrades if purpose == "before-upgrade" else rotations
    other_kind = rotations if purpose == "before-upgrade" else upgrades
    kept = {same_kind[-1], os.path.basename(path)}
    assert [n for n in names(directory) if n.endswith(f"{purpose}.dump")] == sorted(kept)
    for name in same_kind[:-1]:
        assert not (directory / f"{name}.sha256").exists()
    assert set(other_kind + scheduled + [restore_copy]) <= set(names(directory))  # other kinds: untouched
    assert (directory / os.path.basename(path)).read_bytes() == b"new dump"


def test_without_keep_a_pre_change_backup_prunes_nothing(tmp_path):
    directory = tmp_path / "backups"
    seed(directory, [f"litellm-{s}-before-upgrade.dump" for s in STAMPS[:4]])
    result = run(backup.backup_script("printf d", "cat", str(directory / f"litellm-{STAMPS[5]}-before-upgrade.dump")))
    assert result.returncode == 0, result.stderr
    assert len([n for n in names(directory) if n.endswith(".dump")]) == 5


def test_a_failed_pre_change_backup_prunes_nothing(tmp_path):
    directory = tmp_path / "backups"
    old = [f"litellm-{s}-before-upgrade.dump" for s in STAMPS[:4]]
    seed(directory, old)
    result = run(backup.backup_script("false", "cat", str(directory / f"litellm-{STAMPS[5]}-before-upgrade.dump"), 1))
    assert result.returncode == 1 and "pg_dump did not complete" in result.stderr
    assert [n for n in names(directory) if n.endswith(".dump")] == old


def test_the_scheduled_script_prunes_only_scheduled_backups(tmp_path):
    directory = tmp_path / "backups"
    pre_change = [f"litellm-{s}-before-upgrade.dump" for s in STAMPS[:3]]
    seed(directory, [f"{s}.dump" for s in STAMPS[:4]] + pre_change)
    result = run(backup.host_script("printf d", "cat >/dev/null", str(directory), 2), STAMPS[5])
    assert result.returncode == 0, result.stderr
    assert [n for n in names(directory) if n.endswith("Z.dump")] == [f"{STAMPS[3]}.dump", f"{STAMPS[5]}.dump"]
    assert set(pre_change) <= set(names(directory))


def test_every_operation_that_takes_a_pre_change_backup_passes_backup_keep(build):
    """database_backup (rotation, upgrade) and the upgrade's quiet backup both prune."""
    from tasks.gateway import upgrade

    settings = build(backup_keep=4)
    path = backup.pre_change_backup_path(settings, STAMPS[0], "before-upgrade")
    pruning = "tail -n +5 | while read -r old"
    assert pruning in "".join(backup.database_backup._inner(settings, path))  # noqa: SLF001
    assert pruning in "".join(str(c) for c in upgrade.quiet_backup._inner(settings, path))  # noqa: SLF001


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string(text)
    return parser


def test_units_and_script_are_named_after_the_compose_project(build):
    settings = build(compose_project="team-a", backup_schedule="Mon..Fri 02:30")
    files = backup.unit_files(settings)
    assert set(files) == {"/usr/local/sbin/litellm-backup-team-a", "/etc/systemd/system/litellm-backup-team-a.service",
                          "/etc/systemd/system/litellm-backup-team-a.timer"}
    service = unit(files["/etc/systemd/system/litellm-backup-team-a.service"])
    timer = unit(files["/etc/systemd/system/litellm-backup-team-a.timer"])
    assert service["Service"]["ExecStart"] == "/usr/local/sbin/litellm-backup-team-a"
    assert timer["Timer"]["OnCalendar"] == "Mon..Fri 02:30"
    assert "--project-name team-a " in files["/usr/local/sbin/litellm-backup-team-a"]


def test_two_projects_on_one_host_write_no_file_of_the_other(build):
    one = build(compose_project="litellm")
    two = build(compose_project="second", install_dir="/opt/second", backup_dir="/opt/second/backups")
    assert not set(backup.unit_files(one)) & set(backup.unit_files(two))


def test_old_named_units_are_removed_only_when_they_back_up_this_project(build, tmp_path):
    """The old script (the same text under /usr/local/sbin/litellm-backup) is matched with the very
    fact command the operation uses, run by sh."""
    from pyinfra.facts.files import FindInFile

    settings = build()
    other = build(compose_project="second", install_dir="/opt/second")
    old_script = tmp_path / "litellm-backup"
    old_script.write_text("#!/bin/sh\n" + backup.gateway_script(settings))

    def fact(for_settings):
        found = FindInFile()
        command = found.command(path=str(old_script), pattern=backup.legacy_owner_pattern(for_settings))
        output = subprocess.run(["sh", "-c", str(command.get_raw_value())], capture_output=True, text=True)
        return found.process(output.stdout.splitlines())

    assert fact(settings)  # lines found: this project's, removed
    assert fact(other) == []  # another project's: left alone
    assert backup.legacy_removal_command() == (
        "systemctl disable --now litellm-backup.timer; rm -f /etc/systemd/system/litellm-backup.timer "
        "/etc/systemd/system/litellm-backup.service /usr/local/sbin/litellm-backup && systemctl daemon-reload")


def test_a_stale_backup_note_names_this_projects_timer(build):
    settings = build(compose_project="team-a")
    note = verify.host_backup_note(settings, ("20261101T030000Z.dump", 5 * 86400))
    assert "STALE" in note and "systemctl status litellm-backup-team-a.timer" in note
    fresh = verify.host_backup_note(replace(settings, backup_schedule="weekly"), ("x.dump", 5 * 86400))
    assert "STALE" not in fresh


def test_the_interrupted_upgrade_record_is_written_only_after_the_backup_in_the_same_command(build):
    from tasks.gateway import upgrade

    settings = build()
    path = backup.pre_change_backup_path(settings, STAMPS[0], "before-upgrade")
    record = upgrade.replaced_file(upgrade.pending_path(settings.install_dir), ["img:old", "img:new", path])
    command = "".join(str(c) for c in upgrade.quiet_backup._inner(settings, path, record=record))  # noqa: SLF001
    assert command.index("database backup written") < command.index(record)
    assert record not in "".join(str(c) for c in upgrade.quiet_backup._inner(settings, path))  # noqa: SLF001
