"""What an operation of this run did, asked while later operations execute (the `_if=` callables of
upgrade and rotation rollbacks, and their reports)."""

from __future__ import annotations

import shlex
from typing import TypeGuard

from pyinfra.api.operation import OperationMeta


def failing_command(message: str) -> str:
    """The command an operation yields to fail this host only, with `message` on stderr (raising
    OperationError while executing would abort every host)."""
    return f"echo {shlex.quote(message)} >&2; exit 1"


def failed(meta: OperationMeta | None) -> TypeGuard[OperationMeta]:
    """True once `meta` ran and failed (with _ignore_errors, so the host went on)."""
    return meta is not None and meta.is_complete() and not meta.did_succeed()


def last_error(meta: OperationMeta) -> str:
    """' (the last three different stderr lines)' of a failed operation, or ''."""
    try:
        lines = [line.strip() for line in meta.stderr_lines if line.strip()]
    except RuntimeError:
        return ""
    last = list(dict.fromkeys(reversed(lines)))[:3][::-1]
    return f" ({' / '.join(last)[:1000]})" if last else ""
