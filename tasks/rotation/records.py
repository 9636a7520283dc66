"""This run's rotation as the controller keeps it: one Rotation per run, one HostRun per gateway,
filled in as the operations execute."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra import logger, state
from pyinfra.api import State
from pyinfra.api.operation import OperationMeta

from tasks.config import secrets as S
from tasks.config.pending_rotation import complete, pending_key, record_pending_key, secrets_file_of
from tasks.config.registry import run_value
from tasks.config.secrets import Secrets
from tasks.config.settings import ConfigError, Settings
from tasks.context import all_settings
from tasks.lib.attempt import Attempt
from tasks.rotation.interrupt import STAGES, STOP_ENV
from tasks.rotation.window import Window


@dataclass
class HostRun:
    """One gateway's rotation in this run; filled in as its operations execute."""

    name: str
    old: Settings
    new: Settings
    backup_path: str | None = None
    backup: OperationMeta | None = None
    # The switch (.env, database link, restart) and its proof: rolled back when one failed (tasks/lib/attempt.py).
    attempt: Attempt = field(default_factory=Attempt)
    proof_problem: str | None = None
    rollback_problem: str | None = None
    rollback_proven: bool = False
    window: Window | None = None


@dataclass
class Rotation:
    secrets_file: Path
    old_key: str = field(repr=False)
    new_key: str = field(repr=False)
    generated: bool
    stamp: str
    gateways: tuple[str, ...]  # every gateway of the inventory, rotated in this run or not
    runs: dict[str, HostRun] = field(default_factory=dict)
    preflight_problems: dict[str, str] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)
    completed: bool = False

    def host_run(self, settings: Settings) -> HostRun:
        if settings.host_name not in self.runs:
            secrets = Secrets(values={**settings.secrets.values, S.MASTER_KEY: self.new_key})
            self.runs[settings.host_name] = HostRun(
                settings.host_name, settings, dataclasses.replace(settings, secrets=secrets)
            )
        return self.runs[settings.host_name]

    def record_pending(self) -> None:
        """Controller side, the run's first operation on every gateway: a generated new key goes into
        the secrets file (pending.record_pending_key). Not while planning: `--dry` writes nothing."""
        record_pending_key(self.secrets_file, self.new_key)

    def confirm(self, host_name: str) -> None:
        """Controller side, after a gateway proved the new key: when every gateway of the inventory
        has, the new key becomes LITELLM_MASTER_KEY in the secrets file."""
        self.confirmed.add(host_name)
        active = {h.name for h in state.inventory.get_active_hosts()} & set(self.gateways)
        waiting = sorted(active - self.confirmed)
        if waiting:
            return  # another gateway of this run still confirms after this one
        missing = sorted(set(self.gateways) - self.confirmed)
        if missing:
            logger.warning(
                f"--> Secrets file {self.secrets_file} keeps both keys: {S.MASTER_KEY} (the previous key) and "
                f"{S.MASTER_KEY_NEXT} (the new key, now on {', '.join(sorted(self.confirmed))}). Not rotated in this "
                f"run: {', '.join(missing)}. Run `pyinfra inventory rotate.py` again to finish the rotation."
            )
            return
        if complete(self.secrets_file, self.new_key):
            self.completed = True
            logger.info(
                f"--> Master key rotated on every gateway ({', '.join(self.gateways)}). Secrets file "
                f"{self.secrets_file}: {S.MASTER_KEY} now holds the new key, {S.MASTER_KEY_NEXT} was removed."
            )
        else:
            logger.error(
                f"--> Every gateway has the new key, but {S.MASTER_KEY_NEXT} in {self.secrets_file} no longer holds "
                f"it (the file changed during the run): fix the file by hand (docs/rotation.md)."
            )


def rotation_for(state: State) -> Rotation:
    """This run's rotation, set up once: call after tasks.context.settings_for (which validated the
    whole inventory, so bad input still changes nothing, not even the secrets file)."""
    return run_value(state, Rotation, lambda: _new_rotation(state))


def _new_rotation(state: State) -> Rotation:
    settings = all_settings(state)
    stop = os.environ.get(STOP_ENV)
    if stop and stop not in STAGES:
        raise ConfigError([f"{STOP_ENV}={stop!r}: not a stage — use one of {', '.join(STAGES)}"])
    path = secrets_file_of(state)
    any_settings = next(iter(settings.values()))
    old_key = any_settings.secrets.master_key
    new_key, generated = pending_key(path, old_key, any_settings.secrets.get(S.SALT_KEY))
    rotation = Rotation(
        secrets_file=path,
        old_key=old_key,
        new_key=new_key,
        generated=generated,
        stamp=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        gateways=tuple(sorted(settings)),
    )
    how = "generated; recorded as" if generated else "taken from"
    when = " when the run starts, before any host operation" if generated else ""
    logger.info(
        f"--> Master-key rotation for {', '.join(rotation.gateways)}: new key {how} {S.MASTER_KEY_NEXT} in {path}{when}"
    )
    return rotation
