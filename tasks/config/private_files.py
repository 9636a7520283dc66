"""Files on the controller that hold secrets (the secrets file, the TLS authority's keys): written whole
or not at all, never readable by anyone else for a moment, and on disk before the call returns."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically: a new file beside it (same filesystem, so the rename is
    atomic) created with `mode` from the start, synced, renamed over it, and the directory synced."""
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = _new_temporary(path, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed O_CREAT's mode; never widened it
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_all(fd: int, data: bytes) -> None:
    # os.write may write less than it is given
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _new_temporary(path: Path, mode: int) -> tuple[int, str]:
    for _ in range(100):
        name = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), str(name)
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a temporary file beside {path}")
