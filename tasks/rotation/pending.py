"""The controller's side of a rotation: the pending key in the secrets file (LITELLM_MASTER_KEY_NEXT),
its completion, and the guard for runbooks that must not run while a rotation is pending."""

from __future__ import annotations

import time
from pathlib import Path

from pyinfra.api import State

from tasks import secrets as S
from tasks.settings import GATEWAYS, MIN_KEY_LENGTH, ConfigError


def next_key_problems(current: str, pending: str, salt: str | None) -> list[str]:
    name = S.MASTER_KEY_NEXT
    problems = []
    if not pending.startswith("sk-"):
        problems.append(f"{name}: must start with 'sk-' — fix: delete it to have one generated")
    if len(pending) < MIN_KEY_LENGTH:
        problems.append(f"{name}: shorter than {MIN_KEY_LENGTH} characters — fix: delete it to have one generated")
    if pending == current:
        problems.append(f"{name}: equals {S.MASTER_KEY}, so there is nothing to rotate — fix: delete {name}")
    if salt is not None and pending == salt:
        problems.append(f"{name}: equals {S.SALT_KEY} — fix: delete {name} to have a new key generated")
    if S.is_published(pending):
        problems.append(f"{name}: this value was published — fix: delete it to have one generated")
    return problems


def pending_key(path: Path, current: str, salt: str | None) -> tuple[str, bool]:
    """(the pending key, whether it was generated now). Written to the secrets file before any host
    is touched, so an interrupted run is finished with the same key."""
    existing = S.read_secrets(path).get(S.MASTER_KEY_NEXT)
    if existing:
        problems = next_key_problems(current, existing, salt)
        if problems:
            raise ConfigError(problems)
        return existing, False
    key = S.new_master_key()
    S.rewrite_secrets(path, {S.MASTER_KEY_NEXT: key}, {S.MASTER_KEY_NEXT: pending_comment()})
    return key, True


def pending_comment() -> str:
    return (f"pending master-key rotation, started {_utc_now()}; becomes {S.MASTER_KEY} once every gateway "
            f"has it — until then {S.MASTER_KEY} is the previous key. Finish with: pyinfra inventory rotate.py")


def complete(path: Path, new_key: str) -> bool:
    """Make the new key LITELLM_MASTER_KEY and drop the pending entry, in one atomic rewrite.
    Refuses (False) if the pending entry no longer holds this key (the file changed meanwhile)."""
    values = S.read_secrets(path)
    if values.get(S.MASTER_KEY) == new_key and S.MASTER_KEY_NEXT not in values:
        return True
    if values.get(S.MASTER_KEY_NEXT) != new_key:
        return False
    S.rewrite_secrets(
        path, {S.MASTER_KEY: new_key, S.MASTER_KEY_NEXT: None},
        {S.MASTER_KEY: f"rotated by litellm-deploy on {_utc_now()} (pyinfra inventory rotate.py)"},
    )
    return True


def pending_rotation_problem(path: Path) -> str | None:
    """For deploy.py: a deploy during a pending rotation would put the previous key back on gateways
    that already have the new one."""
    if S.read_secrets(path).get(S.MASTER_KEY_NEXT):
        return (f"{S.MASTER_KEY_NEXT} is set in {path}: a master-key rotation is pending — finish it with "
                f"`pyinfra inventory rotate.py` before deploying (see docs/rotation.md)")
    return None


def secrets_file_of(state: State) -> Path:
    """The secrets file tasks.context reads for this inventory."""
    gateways = list(state.inventory.get_group(GATEWAYS, default=[]))
    configured = gateways[0].data.get("secrets_file") if gateways else None
    return S.secrets_path(configured)


def refuse_during_rotation(state: State) -> None:
    """For deploy.py (one line after settings_for): stop before any operation while a rotation is
    pending, with the usual "nothing was changed" report."""
    problem = pending_rotation_problem(secrets_file_of(state))
    if problem:
        raise ConfigError([problem])


def _utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

