"""Upload rendered text to a host without ever showing it.

files.put prints whole files under --diff and writes through a world-readable temp file; for a
`.env` full of keys neither is acceptable. This compares checksums only and stages the upload in a
private directory on the same filesystem, so the file never exists with looser permissions.
"""

from __future__ import annotations

import hashlib
import shlex
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.files import File, Sha256File


@operation()
def private_file(content: str, dest: str, staging_dir: str, mode: str = "600", user: str = "root", group: str = "root"):
    """Ensure dest holds content with mode/owner; report a change only when something differs."""
    data = content.encode()
    wanted = hashlib.sha256(data).hexdigest()
    current = host.get_fact(File, path=dest)
    same_content = bool(current) and host.get_fact(Sha256File, path=dest) == wanted
    same_meta = bool(current) and current["mode"] == int(mode) and (current["user"], current["group"]) == (user, group)
    if same_content and same_meta:
        host.noop(f"{dest} is up to date")
        return
    target = shlex.quote(dest)
    if not same_content:
        staged = f"{staging_dir}/{wanted[:16]}.upload"
        yield f"umask 077 && mkdir -p {shlex.quote(staging_dir)}"
        yield FileUploadCommand(BytesIO(data), staged, remote_temp_filename=staged + ".part")
        quoted = shlex.quote(staged)
        yield f"chown {user}:{group} {quoted} && chmod {mode} {quoted} && mv -f {quoted} {target}"
    else:
        yield f"chown {user}:{group} {target} && chmod {mode} {target}"
