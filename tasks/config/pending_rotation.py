"""The controller's side of a rotation: the pending key in the secrets file (LITELLM_MASTER_KEY_NEXT),
its completion, and the guard every runbook gets (what it does while a rotation is pending)."""

from __future__ import annotations

import time
from pathlib import Path

from pyinfra import logger
from pyinfra.api import State

from tasks.config import secrets as S
from tasks.config.registry import first_time
from tasks.config.settings import GATEWAYS, MIN_KEY_LENGTH, ConfigError


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
    """(the pending key, whether it was generated now). Only read here: a generated key is written
    by record_pending_key when the run executes (before any host operation), so `--dry`, or a run
    declined at pyinfra's prompt, leaves the secrets file as it was."""
    existing = S.read_secrets(path).get(S.MASTER_KEY_NEXT)
    if existing:
        problems = next_key_problems(current, existing, salt)
        if problems:
            raise ConfigError(problems)
        return existing, False
    return S.new_master_key(), True


def record_pending_key(path: Path, key: str) -> None:
    """Write the generated key as LITELLM_MASTER_KEY_NEXT, so an interrupted run is finished with the
    same key. Every gateway of the run asks; the first one writes."""
    existing = S.read_secrets(path).get(S.MASTER_KEY_NEXT)
    if existing == key:
        return
    if existing:
        # Raised while the run executes (python.call fails this host), so not a ConfigError.
        raise RuntimeError(
            f"{S.MASTER_KEY_NEXT} appeared in {path} after this run was planned, so it is not "
            f"this run's new key — no gateway was changed; fix: run rotate.py again"
        )
    S.rewrite_secrets(path, {S.MASTER_KEY_NEXT: key}, {S.MASTER_KEY_NEXT: pending_comment()})


def pending_comment() -> str:
    return (
        f"pending master-key rotation, started {_utc_now()}; becomes {S.MASTER_KEY} once every gateway "
        f"has it — until then {S.MASTER_KEY} is the previous key. Finish with: pyinfra inventory rotate.py"
    )


def complete(path: Path, new_key: str) -> bool:
    """Make the new key LITELLM_MASTER_KEY and drop the pending entry, in one atomic rewrite.
    Refuses (False) if the pending entry no longer holds this key (the file changed meanwhile)."""
    values = S.read_secrets(path)
    if values.get(S.MASTER_KEY) == new_key and S.MASTER_KEY_NEXT not in values:
        return True
    if values.get(S.MASTER_KEY_NEXT) != new_key:
        return False
    S.rewrite_secrets(
        path,
        {S.MASTER_KEY: new_key, S.MASTER_KEY_NEXT: None},
        {S.MASTER_KEY: f"rotated by litellm-deploy on {_utc_now()} (pyinfra inventory rotate.py)"},
    )
    return True


def pending_rotation_problem(path: Path, runbook: str) -> str | None:
    if S.read_secrets(path).get(S.MASTER_KEY_NEXT):
        return (
            f"{S.MASTER_KEY_NEXT} is set in {path}: a master-key rotation is pending — finish it with "
            f"`pyinfra inventory rotate.py` before running {runbook} (see docs/rotation.md)"
        )
    return None


def secrets_file_of(state: State) -> Path:
    """The secrets file tasks.context reads for this inventory."""
    gateways = list(state.inventory.get_group(GATEWAYS, default=[]))
    configured = gateways[0].data.get("secrets_file") if gateways else None
    return S.secrets_path(configured)


# What each runbook does while a rotation is pending (tasks.context.runbook_settings asks here, so
# no runbook has to remember it, and a new runbook must be added here to run at all):
#   refuse  stop while its operations are planned, naming the fix; nothing is touched
#   report  a warning, then run
#   finish  rotate.py: it is what finishes the rotation
DURING_ROTATION = {
    # The previous key would go back on gateways that already have the new one.
    "deploy.py": "refuse",
    # The restored database is re-linked to LITELLM_MASTER_KEY, the previous key, while a gateway that
    # already has the new key keeps it in its .env: a proxy whose master key the database does not know.
    "restore.py": "refuse",
    # pg_dump reads the database; no key, .env or link changes, so the rotation is no worse after it.
    # The dump holds whichever master-key link the host has now; a later restore re-links it to the
    # current key (and refuses while the rotation is pending).
    "backup.py": "report",
    # Changes nothing; gateways already on the new key refuse the previous one, which the report explains.
    "verify.py": "report",
    # Talks to each proxy with the master key its own container runs with, whichever that is.
    "keys.py": "report",
    "rotate.py": "finish",
}


def rotation_guard(state: State, runbook: str) -> None:
    """Before any operation of `runbook` is added: refuse (ConfigError, the usual "nothing was changed"
    report) or report a pending rotation, as DURING_ROTATION says for it."""
    if runbook not in DURING_ROTATION:
        raise ConfigError(
            [
                f"{runbook}: not in tasks/config/pending_rotation.py DURING_ROTATION — "
                "fix: say there what it does while a master-key rotation is pending"
            ]
        )
    if DURING_ROTATION[runbook] == "finish":
        return
    problem = pending_rotation_problem(secrets_file_of(state), runbook)
    if problem is None:
        return
    if DURING_ROTATION[runbook] == "refuse":
        raise ConfigError([problem])
    if first_time(state, "pending rotation reported"):  # once per run, not once per host
        logger.warning(
            f"--> {problem}; {runbook} runs meanwhile. Gateways the rotation already reached refuse "
            f"{S.MASTER_KEY} (the previous key) and accept {S.MASTER_KEY_NEXT}."
        )


def _utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
