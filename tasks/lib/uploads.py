"""Move files to and from a host without ever showing them, readable by root only on the host.

files.put prints whole files under --diff and, over SSH with `_sudo`, writes through a temp file
the SSH user uploads with the server's umask (world-readable) and pyinfra's get_file copies a
root-only file to a temp file and runs `chmod +r` on it; for a `.env` full of keys or a database
dump neither is acceptable. Here the SSH user (root, or a sudoer such as `ubuntu`) moves data only
through a fresh 0700 directory of its own, and root (through the host's sudo settings) installs the
file in place with its final owner and mode, or copies it out 0600 to the SSH user.
"""

from __future__ import annotations

import hashlib
import shlex
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, ConnectorArguments, pop_global_arguments
from pyinfra.facts.files import File, Sha256File

# What a command or transfer of the SSH user itself runs with: no sudo, and no sudo password
# handed to a command that has no use for it.
AS_SSH_USER: ConnectorArguments = {"_sudo": False, "_sudo_password": ""}


def connector_arguments(state, hst) -> dict:
    """The host's own privilege settings (_sudo, _sudo_password, ... from its data and the config),
    for commands run straight through the connector outside an operation, which pyinfra would
    otherwise run without them."""
    arguments, _ = pop_global_arguments(state, hst, {})
    return {key: value for key, value in arguments.items() if key in CONNECTOR_ARGUMENT_KEYS}


def private_directory_command(path: str) -> str:
    """Make a new directory only its owner can enter; fails when the path exists (never reuse one
    another user prepared)."""
    return f"umask 077 && mkdir -m 700 {shlex.quote(path)}"


def installed_upload(src, dest: str, mode: str = "600", user: str = "root", group: str = "root"):
    """Commands for an operation: `src` (path or file object) ends up at `dest` with owner and mode.

    The SSH user uploads into a fresh 0700 directory of its own under pyinfra's temp dir; the last
    command, run as root (the operation's sudo), installs it and removes the directory. `dest`
    should sit in a root-only directory and be moved into place by the caller.
    """
    private_dir = host.get_temp_filename()
    carried = f"{private_dir}/upload"
    quoted = shlex.quote(private_dir)
    yield StringCommand(private_directory_command(private_dir), **AS_SSH_USER)
    yield FileUploadCommand(src, carried, **AS_SSH_USER)
    yield (
        f"install -m {mode} -o {user} -g {group} {shlex.quote(carried)} {shlex.quote(dest)}; "
        f"installed=$?; rm -rf {quoted}; exit $installed"
    )


def private_file_reads(dest: str) -> list:
    """What private_file reads of a file that is up to date: [(fact, arguments)] (tasks/lib/fact_cache.py)."""
    return [(File, {"path": dest}), (Sha256File, {"path": dest})]


@operation()
def private_file(content: str, dest: str, staging_dir: str, mode: str = "600", user: str = "root", group: str = "root"):
    """Ensure dest holds content with mode/owner; report a change only when something differs.

    The new file is installed in `staging_dir` (root-only, on dest's filesystem) and renamed over
    dest, so dest is never a half-written or looser file."""
    data = content.encode()
    wanted = hashlib.sha256(data).hexdigest()
    current = host.get_fact(File, path=dest)
    same_content = bool(current) and host.get_fact(Sha256File, path=dest) == wanted
    same_meta = (
        (current["mode"] == int(mode) and (current["user"], current["group"]) == (user, group)) if current else False
    )
    if same_content and same_meta:
        host.noop(f"{dest} is up to date")
        return
    target = shlex.quote(dest)
    if not same_content:
        staged = f"{staging_dir}/{wanted[:16]}.upload"
        yield f"umask 077 && mkdir -p {shlex.quote(staging_dir)}"
        yield from installed_upload(BytesIO(data), staged, mode=mode, user=user, group=group)
        yield f"mv -f {shlex.quote(staged)} {target}"
    else:
        yield f"chown {user}:{group} {target} && chmod {mode} {target}"


def downloaded(state, hst, remote: str, handle) -> bool:
    """Copy the root-only file `remote` into `handle` on the controller.

    Root copies it (0600, owned by the SSH user) into a fresh 0700 directory the SSH user made,
    the SSH user downloads it and removes the directory: never a world-readable copy on the host.
    """
    as_root = connector_arguments(state, hst)
    as_user = {**as_root, **AS_SSH_USER}
    private_dir = hst.get_temp_filename()
    copy = f"{private_dir}/download"
    quiet = {"print_output": False, "print_input": False}
    made, _ = hst.run_shell_command(private_directory_command(private_dir), **quiet, **as_user)
    if not made:
        return False
    try:
        # The directory's owner is the SSH user, whoever sudo made the command's user.
        quoted = shlex.quote(private_dir)
        copied, _ = hst.run_shell_command(
            f'install -m 600 -o "$(stat -c %u {quoted})" -g "$(stat -c %g {quoted})" '
            f"{shlex.quote(remote)} {shlex.quote(copy)}",
            **quiet,
            **as_root,
        )
        return bool(copied) and hst.get_file(copy, handle, **as_user)
    finally:
        hst.run_shell_command(f"rm -rf {shlex.quote(private_dir)}", **quiet, **as_user)
