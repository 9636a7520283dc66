"""The rotation's own operations: preflight and gates, the proof's virtual key, the refusal-window
poller, the proof, and the per-host report."""

from __future__ import annotations

import shlex

from pyinfra import host, logger, state
from pyinfra.api import StringCommand, operation
from pyinfra.api.operation import OperationMeta

from tasks.config import secrets as S
from tasks.config.settings import Settings
from tasks.gateway import database
from tasks.lib.envfile import EnvLineHashes
from tasks.lib.envfile import line_hash as env_line_hash
from tasks.lib.outcome import failing_command
from tasks.lib.render import ENV_FILE
from tasks.rotation.facts import KeyProof, PollSamples, ProxyKeyHash, evaluate_proof
from tasks.rotation.records import HostRun, Rotation
from tasks.rotation.sql import probe_sql
from tasks.rotation.window import POLL_INTERVAL, refusal_window
from tasks.rotation.workspace import POLL_LOG, POLLER_SCRIPT, STOP_FILE, host_python, poller_name, probe_base, workspace

# The .env lines the rotation compares (as hashes): the master key it moves, the salt key it never may.
KEY_LINES = (S.MASTER_KEY, S.SALT_KEY)


@operation(is_idempotent=True)
def preflight(run: HostRun, rotation: Rotation):
    """Nothing changes here; a problem fails this host, and the gate then stops every other."""
    lines = host.get_fact(EnvLineHashes, install_dir=run.old.install_dir, names=KEY_LINES)
    salt = run.old.secrets.get(S.SALT_KEY)
    problem = None
    where = f"{run.old.install_dir}/{ENV_FILE}"
    if lines is None:
        problem = f"no {where}: this gateway was never deployed — fix: pyinfra inventory deploy.py, then rotate"
    elif S.SALT_KEY not in lines:
        problem = (
            f"{where} has no {S.SALT_KEY}: LiteLLM then encrypts stored credentials with the master key itself, "
            f"so changing it would make them unreadable. Refusing; nothing was changed. Fix (docs/rotation.md, "
            f'"No salt key on a host"): if the current master key is not compromised, make the secrets file\'s '
            f"{S.SALT_KEY} the current master key, run deploy.py (nothing is re-encrypted), then rotate.py; if it is "
            f"compromised, re-encrypt with LiteLLM's LITELLM_MIGRATE_FROM_MASTER_KEY by hand as described there"
        )
    elif salt is None or lines[S.SALT_KEY] != env_line_hash(S.SALT_KEY, salt):
        problem = (
            f"{S.SALT_KEY} in {where} differs from the secrets file's; the salt key encrypts stored credentials "
            f"and must never change — fix: find out which one is right (the host's, if the proxy has been "
            f"storing credentials with it), make the secrets file hold it, and run rotate.py again"
        )
    elif lines.get(S.MASTER_KEY) not in (
        env_line_hash(S.MASTER_KEY, rotation.old_key),
        env_line_hash(S.MASTER_KEY, rotation.new_key),
    ):
        problem = (
            f"{S.MASTER_KEY} in {where} is neither the secrets file's {S.MASTER_KEY} nor its {S.MASTER_KEY_NEXT}: "
            f"this host runs a key the controller does not know — fix: put that key in the secrets file as "
            f"{S.MASTER_KEY} (or deploy the secrets file's key first), then rotate"
        )
    if state.is_executing:
        if problem:
            rotation.preflight_problems[run.name] = problem
        else:
            rotation.preflight_problems.pop(run.name, None)
    if problem is None:
        done = lines.get(S.MASTER_KEY) == env_line_hash(S.MASTER_KEY, rotation.new_key)
        host.noop(
            "preflight passed: salt key present and unchanged; .env holds "
            + ("the new key already (an earlier run got this far)" if done else "the current key")
        )
        return
    yield failing_command(f"rotation preflight failed on {run.name}: {problem}")


@operation(is_idempotent=True)
def gate(rotation: Rotation, stage: str):
    """Before any change: stop here on every host if any gateway of this run has failed so far."""
    if not state.is_executing:
        host.noop(f"checked when the rotation runs: every gateway passed {stage}")
        return
    failed = sorted(h.name for h in state.failed_hosts if h.name in rotation.runs)
    if not failed:
        host.noop(f"every gateway of this run passed {stage}")
        return
    reasons = "; ".join(
        f"{name}: {rotation.preflight_problems.get(name, stage + ' failed, see above')}" for name in failed
    )
    message = (
        f"rotation not started on {host.name} (nothing was changed on any gateway): {stage} failed on "
        f"{', '.join(failed)} — {reasons}"
    )
    yield failing_command(message)


def needs_data_change(run: HostRun, rotation: Rotation) -> bool:
    """Asked on the host when the backup runs: is any change due to .env or the database?"""
    lines = host.get_fact(EnvLineHashes, install_dir=run.old.install_dir, names=KEY_LINES) or {}
    if lines.get(S.MASTER_KEY) != env_line_hash(S.MASTER_KEY, rotation.new_key):
        return True
    values = database.bootstrap_values(
        run.new.admin_user_id,
        run.new.admin_email,
        database.hash_key(rotation.new_key),
        database.abbreviate_key(rotation.new_key),
    )
    return not database.bootstrap_in_place(values, database.psql(run.new))


@operation()
def probe_key(settings: Settings, key: str, present: bool):
    yield StringCommand(database.psql(settings), _stdin=probe_sql(present, key))


@operation()
def poller_started(settings: Settings, lifetime: int):
    """Start the refusal-window poller on the host: every POLL_INTERVAL it asks the proxy with the
    key that worked last (then the other one) and logs whether a valid key was accepted."""
    ws = workspace(settings.install_dir)
    name = poller_name(settings.compose_project)
    log, stop = shlex.quote(f"{ws}/{POLL_LOG}"), shlex.quote(f"{ws}/{STOP_FILE}")
    run = host_python(settings.litellm_image, settings.install_dir, read_only=False, detach_name=name)
    yield (
        f"docker rm -f {shlex.quote(name)} >/dev/null 2>&1; rm -f {log} {stop}; "
        f"{run} /rotation/{POLLER_SCRIPT} {shlex.quote(probe_base(settings))} {int(lifetime)} {POLL_INTERVAL} "
        ">/dev/null || { echo 'the refusal-window poller did not start' >&2; exit 1; }; "
        "i=0; while [ ! -s " + log + " ]; do i=$((i + 1)); if [ $i -gt 600 ]; then "
        "echo 'the refusal-window poller recorded nothing within 60 s' >&2; "
        f"docker logs --tail 20 {shlex.quote(name)} >&2; exit 1; fi; sleep 0.1; done"
    )


@operation()
def poller_stopped(settings: Settings):
    ws = workspace(settings.install_dir)
    name = shlex.quote(poller_name(settings.compose_project))
    stop = shlex.quote(f"{ws}/{STOP_FILE}")
    yield (
        f"touch {stop}; timeout 30 docker wait {name} >/dev/null 2>&1; "
        f"docker rm -f {name} >/dev/null 2>&1; rm -f {stop}"
    )


@operation(is_idempotent=True)
def window_measured(run: HostRun):
    if not state.is_executing:
        host.noop("measured when the rotation runs")
        return
    run.window = refusal_window(host.get_fact(PollSamples, install_dir=run.old.install_dir))
    host.log(f"refusal window: {run.window.describe()}", logger.info)
    host.noop(f"refusal window {run.window.seconds:.1f} s")
    yield from ()


@operation(is_idempotent=True)
def proxy_key_current(settings: Settings, key_hash: str):
    """A change (that forces the proxy's recreation) when the running proxy has another key: after
    an interruption between writing .env and the restart, .env alone shows nothing to do."""
    if host.get_fact(ProxyKeyHash, project=settings.compose_project, install_dir=settings.install_dir) == key_hash:
        host.noop("the running proxy has this master key")
        return
    yield "echo 'the running proxy has another master key, or is not running: it is recreated'"


@operation(is_idempotent=True)
def key_proven(run: HostRun, expect: str):
    """The proof, from the host over HTTP; fails this operation (not yet the host) when it does not hold."""
    if not state.is_executing:
        host.noop("proven when the rotation runs")
        return
    settings = run.new if expect == "new" else run.old
    result = host.get_fact(
        KeyProof,
        image=settings.litellm_image,
        install_dir=settings.install_dir,
        base=probe_base(settings),
        expect=expect,
        seconds=settings.verify_timeout,
    )
    probe = settings.has_database
    problem = evaluate_proof(result, expect, probe)
    if expect == "new":
        run.proof_problem = problem
    else:
        run.rollback_problem = problem
        run.rollback_proven = problem is None
    if problem is None:
        shown = (
            f"HTTP {result['accepted']} with the {'new' if expect == 'new' else 'previous'} key, "
            f"HTTP {result['refused']} with the {'previous' if expect == 'new' else 'new'} one"
        )
        if probe and expect == "new":
            shown += f", HTTP {result.get('probe')} with a virtual key made before the rotation"
        host.log(f"proof: {shown}", logger.info)
        host.noop("proven")
        return
    yield failing_command(f"proof failed on {run.name}: {problem}")


@operation(is_idempotent=True)
def reported(run: HostRun, rotation: Rotation):
    if not state.is_executing:
        host.noop("reported when the rotation runs")
        return
    window = run.window.describe() if run.window else "not measured"
    backup_note = f"; backup {run.backup_path}" if run.backup_path and run.backup and _changed(run.backup) else ""
    reason = run.attempt.failure()
    if reason is None:
        host.log(f"rotated: new master key proven; refusal window {window}{backup_note}", logger.info)
        host.noop("rotated")
        return
    if run.rollback_proven:
        back = "rolled back: the proxy is healthy on the previous master key again"
    else:
        back = f"rollback to the previous master key did NOT prove healthy ({run.rollback_problem or 'see above'})"
    message = (
        f"rotation FAILED on {run.name}: {reason}. {back}. Refusal window {window}{backup_note}. The secrets file "
        f"keeps both keys ({S.MASTER_KEY} = the previous key, {S.MASTER_KEY_NEXT} = the pending one); fix the cause, "
        "then run `pyinfra inventory rotate.py` again (docs/rotation.md)."
    )
    yield failing_command(message)


def _changed(meta: OperationMeta) -> bool:
    try:
        return meta.did_change()
    except RuntimeError:
        return False
