"""Issue 15, defect 1: a non-root SSH user with sudo (`ssh_user: ubuntu`, `_sudo`, maybe `_sudo_password`).

pyinfra's SSH connector (3.10, connectors/ssh.py) moves a file under `_sudo` through a temp file the
SSH user writes with the server's umask (put_file) or that root copies and `chmod +r`s (get_file):
readable by every user of the host while it exists. So every transfer of a secret or a dump must run
as the SSH user itself (no effective `_sudo`), through a 0700 directory the SSH user made in the same
step, and every command that needs root must carry the host's own sudo settings, password included.

The commands are checked as pyinfra builds them, then run for real on this machine (@local; `sudo`
is a pass-through stand-in on PATH here, where the tests already run as root and no sudo is installed).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
from pathlib import Path

import pytest
from pyinfra.api import Config, FileUploadCommand, Inventory, State, StringCommand
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.files import File, Sha256File

from tasks.context import read_host_env
from tasks.gateway import backup, restore
from tasks.lib import uploads

SUDO_PASSWORD = "not-a-real-password-" + "x" * 8

# Options pyinfra's make_unix_command gives sudo; the stand-in drops them and runs the rest as root.
SUDO_STANDIN = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in -H|-n|-A|-k|-E|-i) shift ;; -u) shift 2 ;; *) break ;; esac
done
printf '%s\\n' "askpass=${SUDO_ASKPASS:+yes}" >> "$SUDO_STANDIN_LOG"
exec "$@"
"""


@pytest.fixture
def sudo_standin(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text(SUDO_STANDIN)
    (bin_dir / "sudo").chmod(0o755)
    log = tmp_path / "sudo.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SUDO_STANDIN_LOG", str(log))
    return log


def sudo_host(tmp_path, **data):
    """A connected @local host whose data says what a cloud image's inventory says."""
    temp_dir = tmp_path / "pyinfra-tmp"
    temp_dir.mkdir(exist_ok=True)
    # pyinfra memoizes a host's temp directory by the host's name ("@local"), across States: an
    # earlier test's @local would hand this one its temp directory, not TEMP_DIR below.
    from pyinfra.api.host import Host
    Host._get_temp_directory.cache.clear()  # noqa: SLF001
    state = State(Inventory((["@local"], {"_sudo": True, "_sudo_password": SUDO_PASSWORD, **data})),
                  Config(TEMP_DIR=str(temp_dir)))
    connect_all(state)
    return state, state.inventory.get_host("@local")


def effective(command, key: str, host):
    """What a command runs with: its own connector argument, else the host's."""
    return command.connector_arguments.get(key, host.data.get(key))


def check_transfers_as_the_ssh_user(commands, host):
    """Every upload is done by the SSH user itself into a 0700 directory it made before; every
    other command needing root runs with the host's sudo settings."""
    made_private: set[str] = set()
    uploads_seen = 0
    for command in commands:
        if isinstance(command, FileUploadCommand):
            uploads_seen += 1
            assert effective(command, "_sudo", host) is False, (
                f"upload to {command.dest} under sudo: pyinfra stages it in a world-readable temp file")
            assert command.dest.rsplit("/", 1)[0] in made_private, (
                f"upload to {command.dest}: not a directory the SSH user made 0700 in this operation")
        elif isinstance(command, StringCommand):
            text = str(command)
            made = re.fullmatch(r"umask 077 && mkdir -m 700 (\S+)", text)
            if made and effective(command, "_sudo", host) is False:
                made_private.add(shlex.split(made.group(1))[0])
    assert uploads_seen == 1
    return made_private


def op_commands(state, host, op, **kwargs):
    add_op(state, op, **kwargs)
    (op_hash,) = state.get_op_order()
    with ctx_state.use(state), ctx_host.use(host):
        return list(state.get_op_data_for_host(host, op_hash).command_generator())


def new_file_facts(monkeypatch):
    from pyinfra.api.host import Host

    real = Host.get_fact
    monkeypatch.setattr(Host, "get_fact", lambda self, fact, *a, **k: None if fact in (File, Sha256File)
                        else real(self, fact, *a, **k))


def test_private_file_over_sudo_uploads_as_the_ssh_user_into_its_own_0700_directory(tmp_path, monkeypatch):
    new_file_facts(monkeypatch)
    state, host = sudo_host(tmp_path)
    try:
        staging = "/opt/litellm/.staging"
        commands = op_commands(state, host, uploads.private_file, name="Write .env", content="KEY=value\n",
                               dest="/opt/litellm/.env", staging_dir=staging)
    finally:
        disconnect_all(state)
    (private_dir,) = check_transfers_as_the_ssh_user(commands, host)
    assert not private_dir.startswith(staging) and private_dir.startswith(str(tmp_path / "pyinfra-tmp") + "/")
    texts = [str(c) for c in commands]
    installs = [t for t in texts if t.startswith("install ")]
    assert installs == [f"install -m 600 -o root -g root {private_dir}/upload {staging}/"
                        f"{hashlib.sha256(b'KEY=value' + bytes([10])).hexdigest()[:16]}.upload; "
                        f"installed=$?; rm -rf {private_dir}; exit $installed"]
    (install,) = [c for c in commands if str(c) == installs[0]]
    assert effective(install, "_sudo", host) is True  # root installs it: as the operation runs
    assert texts[-1].startswith("mv -f ") and texts[-1].endswith(" /opt/litellm/.env")


def test_restore_upload_over_sudo_goes_through_the_ssh_users_own_0700_directory(tmp_path):
    state, host = sudo_host(tmp_path)
    try:
        commands = op_commands(state, host, restore.dump_uploaded, name="Upload the backup", src=str(tmp_path / "x.dump"),
                               dest="/opt/litellm/backups/restore-0123.dump", sha256="0" * 64)
    finally:
        disconnect_all(state)
    (private_dir,) = check_transfers_as_the_ssh_user(commands, host)
    assert any(str(c).startswith(f"install -m 600 -o root -g root {private_dir}/upload "
                                 "/opt/litellm/backups/restore-0123.dump.part;") for c in commands)


def test_private_file_runs_and_leaves_only_the_file(tmp_path, monkeypatch, sudo_standin):
    """The same commands, executed: the file in place 0600, the SSH user's directory gone."""
    state, host = sudo_host(tmp_path)
    dest_dir = tmp_path / "opt"
    try:
        add_op(state, uploads.private_file, name="Write .env", content="A=b\n", dest=str(dest_dir / ".env"),
               staging_dir=str(dest_dir / ".staging"))
        dest_dir.mkdir(mode=0o700)
        run_ops(state)
    finally:
        disconnect_all(state)
    assert state.failed_hosts == set(), "the operation failed"
    env = dest_dir / ".env"
    assert env.read_text() == "A=b\n" and stat.S_IMODE(env.stat().st_mode) == 0o600
    left = [p.name for p in (tmp_path / "pyinfra-tmp").iterdir() if not p.name.startswith("pyinfra-sudo-askpass")]
    assert left == [], "the upload directory was left behind"
    assert list((dest_dir / ".staging").iterdir()) == []
    assert "askpass=yes" in sudo_standin.read_text()  # the password reached sudo


class Recorder:
    """Wraps the host's connector calls (they still run) and records what each ran with."""

    def __init__(self, host, monkeypatch):
        self.calls: list[tuple[str, str, dict, dict]] = []
        for method in ("run_shell_command", "get_file"):
            real = getattr(host, method)
            monkeypatch.setattr(host, method, self._wrap(method, real))

    def _wrap(self, method, real):
        def call(*args, **kwargs):
            seen = {}
            if method == "get_file":
                path = Path(args[0])
                seen = {"file_mode": stat.S_IMODE(path.stat().st_mode),
                        "dir_mode": stat.S_IMODE(path.parent.stat().st_mode)}
            self.calls.append((method, str(args[0]), kwargs, seen))
            return real(*args, **kwargs)

        return call


def test_backup_download_over_sudo_never_makes_a_readable_copy(tmp_path, monkeypatch, sudo_standin):
    remote_dir = tmp_path / "host-backups"
    remote_dir.mkdir(mode=0o700)
    dump = remote_dir / "20261202T010203Z.dump"
    dump.write_bytes(b"PGDMP" + os.urandom(4096))
    dump.chmod(0o600)
    recorded = hashlib.sha256(dump.read_bytes()).hexdigest()
    (remote_dir / f"{dump.name}.sha256").write_text(f"{recorded}  {dump.name}\n")
    local = tmp_path / "controller"
    state, host = sudo_host(tmp_path)
    recorder = Recorder(host, monkeypatch)
    try:
        assert backup.fetch_and_verify(state, host, str(dump), str(local), keep=3)
    finally:
        disconnect_all(state)
    assert (local / dump.name).read_bytes() == dump.read_bytes()
    downloads = [c for c in recorder.calls if c[0] == "get_file"]
    assert len(downloads) == 1
    _, path, kwargs, seen = downloads[0]
    assert not kwargs.get("_sudo"), "get_file with _sudo: pyinfra copies the dump and runs chmod +r on it"
    assert path != str(dump) and seen == {"file_mode": 0o600, "dir_mode": 0o700}
    rooted = [c for c in recorder.calls if c[0] == "run_shell_command" and c[2].get("_sudo")]
    assert rooted, "nothing ran as root: the dump cannot have been read"
    assert all(c[2].get("_sudo_password") == SUDO_PASSWORD for c in rooted), "sudo without the host's password"
    assert any(str(c[1]).startswith("install -m 600 -o ") for c in rooted)
    left = [p.name for p in (tmp_path / "pyinfra-tmp").iterdir() if not p.name.startswith("pyinfra-sudo-askpass")]
    assert left == [], "the download directory was left behind"


def test_host_env_is_read_with_the_hosts_sudo_password(tmp_path, monkeypatch, sudo_standin):
    install_dir = tmp_path / "opt"
    install_dir.mkdir(mode=0o700)
    (install_dir / ".env").write_text('LITELLM_MASTER_KEY="sk-abc"\n')
    state, host = sudo_host(tmp_path)
    recorder = Recorder(host, monkeypatch)
    try:
        assert read_host_env(host, str(install_dir), ["LITELLM_MASTER_KEY"]) == {"LITELLM_MASTER_KEY": "sk-abc"}
    finally:
        disconnect_all(state)
    (call,) = [c for c in recorder.calls if ".env" in c[1]]
    assert call[2].get("_sudo") is True and call[2].get("_sudo_password") == SUDO_PASSWORD
