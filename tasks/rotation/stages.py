"""The rotation of one gateway, stage by stage: `@deploy rotate_gateway` (rotate.py runs it)."""

from __future__ import annotations

import json

from pyinfra.api import deploy
from pyinfra.operations import files, python

from tasks.config import secrets as S
from tasks.config.settings import Settings
from tasks.gateway import backup, database, stack
from tasks.gateway.stack import staging_dir
from tasks.lib import compose
from tasks.lib.render import ENV_FILE, render_files
from tasks.lib.uploads import private_file
from tasks.rotation.interrupt import stop_after
from tasks.rotation.operations import (
    gate,
    key_proven,
    needs_data_change,
    poller_started,
    poller_stopped,
    preflight,
    probe_key,
    proxy_key_current,
    reported,
    window_measured,
)
from tasks.rotation.records import Rotation
from tasks.rotation.sql import probe_key_for
from tasks.rotation.workspace import KEYS_FILE, SCRIPTS, workspace


@deploy("Rotate the master key")
def rotate_gateway(settings: Settings, rotation: Rotation) -> None:
    run = rotation.host_run(settings)
    old, new = run.old, run.new
    attempt = run.attempt
    attempt.problems["proof"] = lambda: run.proof_problem or "see above"

    # 0. A generated new key is recorded before anything else runs, so an interrupted run finishes with it.
    if rotation.generated:
        python.call(
            name=f"Controller: record the new key as {S.MASTER_KEY_NEXT} in the secrets file",
            function=rotation.record_pending,
        )

    # 1. Preflight on every gateway, then nothing anywhere unless all passed.
    preflight(name="Preflight: .env present, salt key unchanged, master key known", run=run, rotation=rotation)
    gate(name="Every gateway passed its preflight", rotation=rotation, stage="preflight")
    stop_after("pending")

    # 2. Database backup (database modes), then again nothing anywhere unless every one was taken.
    if settings.has_database:
        run.backup_path = backup.pre_change_backup_path(settings, rotation.stamp)
        run.backup = backup.database_backup(
            name=f"Database backup before rotation: {run.backup_path}",
            settings=old,
            path=run.backup_path,
            needed=lambda: needs_data_change(run, rotation),
        )
        gate(name="Every gateway's database is backed up", rotation=rotation, stage="the backup")
    stop_after("backup")

    # 3. Probes: a virtual key made before the switch, the keys file, the refusal-window poller.
    ws = workspace(settings.install_dir)
    files.directory(name=f"Rotation workspace {ws} (root only)", path=ws, user="root", group="root", mode="700")
    keys = {"old": rotation.old_key, "new": rotation.new_key}
    if settings.has_database:
        keys["probe"] = probe_key_for(rotation.new_key)
        probe_key(
            name="Virtual key for the proof (no user, no model, expires in 2 hours)",
            settings=old,
            key=keys["probe"],
            present=True,
        )
    private_file(
        name="Keys for the host-side probes (mode 0600)",
        content=json.dumps(keys),
        dest=f"{ws}/{KEYS_FILE}",
        staging_dir=staging_dir(settings),
        mode="600",
    )
    for script, source in SCRIPTS.items():
        private_file(
            name=f"Probe script {script}",
            content=source,
            dest=f"{ws}/{script}",
            staging_dir=staging_dir(settings),
            mode="600",
        )
    poller_started(
        name="Start the refusal-window poller",
        settings=old,
        lifetime=2 * (settings.start_timeout + settings.verify_timeout) + 600,
        _ignore_errors=True,
    )

    # 4. The switch: .env, database link, proxy.
    project = stack.component(settings)
    env = project.write(
        ENV_FILE,
        render_files(new)[ENV_FILE],
        "600",
        label=f"Write {ENV_FILE} with the new master key (mode 0600)",
        **attempt.args(),
    )
    attempt.add("writing the new .env", [env])
    stop_after("env")
    link = None
    if settings.has_database:
        link = database.bootstrap_for_key(
            new,
            rotation.new_key,
            name="Master-key link moves to the new key; the old key's row is removed (one transaction)",
            **attempt.args(),
        )
        attempt.add("moving the database link to the new key", [link])
    stop_after("database")
    stale = proxy_key_current(
        name="Does the running proxy have the new key?",
        settings=new,
        key_hash=database.hash_key(rotation.new_key),
        _if=attempt.going,
    )
    restart = project.up(
        compose.PROXY_SERVICE,
        name="Restart the proxy on the new master key",
        depends_on=[env],
        recreate_on=[env, stale],
        **attempt.args(),
    )
    attempt.add("restarting the proxy on the new key", [restart])
    stop_after("restart")

    # 5. Proof from the host: new key accepted, old key refused, the virtual key accepted.
    proof = key_proven(name="Proof: new key accepted, previous key refused", run=run, expect="new", **attempt.args())
    attempt.add("proof", [proof])

    # 6. Rollback, only when the switch or the proof failed.
    back_env = project.write(
        ENV_FILE,
        render_files(old)[ENV_FILE],
        "600",
        label=f"Rollback: {ENV_FILE} with the previous master key",
        _ignore_errors=True,
        _if=attempt.rolling_back,
    )
    if settings.has_database:
        database.bootstrap_for_key(
            old,
            rotation.old_key,
            name="Rollback: master-key link back to the previous key",
            _ignore_errors=True,
            _if=attempt.rolling_back,
        )
    back_stale = proxy_key_current(
        name="Rollback: does the running proxy have the previous key?",
        settings=old,
        key_hash=database.hash_key(rotation.old_key),
        _if=attempt.rolling_back,
    )
    project.up(
        compose.PROXY_SERVICE,
        name="Rollback: restart the proxy on the previous master key",
        depends_on=[back_env],
        recreate_on=[back_env, back_stale],
        _ignore_errors=True,
        _if=attempt.rolling_back,
    )
    key_proven(
        name="Rollback: previous key accepted, new key refused",
        run=run,
        expect="old",
        _ignore_errors=True,
        _if=attempt.rolling_back,
    )

    # 7. Measure, clean up, report; the controller records the new key once every gateway has it.
    poller_stopped(name="Stop the refusal-window poller", settings=old)
    window_measured(name="Refusal window", run=run)
    if settings.has_database:
        probe_key(
            name="Remove the proof's virtual key", settings=old, key=keys["probe"], present=False, _ignore_errors=True
        )
    files.file(name="Remove the probes' key file", path=f"{ws}/{KEYS_FILE}", present=False)
    reported(name="Rotation result", run=run, rotation=rotation)
    python.call(
        name="Controller: the new key becomes LITELLM_MASTER_KEY once every gateway has it",
        function=rotation.confirm,
        host_name=settings.host_name,
    )
