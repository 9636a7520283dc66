"""Master-key rotation: `pyinfra inventory rotate.py` (docs/rotation.md).

One master key per inventory. A run rotates every gateway it reaches from the current key
(LITELLM_MASTER_KEY in the secrets file) to the pending one (LITELLM_MASTER_KEY_NEXT: generated
and written to the secrets file before any host is touched, or chosen there by the user), and
writes the new key as LITELLM_MASTER_KEY only once every gateway of the inventory has proven it.
Until then the secrets file holds both keys, so a run killed at any point is finished by running
the same command again: the same pending key, never a third one.

On each gateway, in order (every step reads the host's state when it runs, so a re-run skips
what is already done):
  preflight   .env present, salt key present and equal to the controller's (it encrypts stored
              credentials and must never change), master key either the current or the pending one
  gate        no host changes anything unless every gateway passed (and, later, was backed up)
  backup      database modes: pg_dump custom format, 0600, in the gateway's backup directory
  probes      a short-lived virtual key in the database (to prove virtual keys survive), the keys
              for the host-side probes in a 0600 file, and a poller that measures the refusal window
  switch      new key into .env; in one transaction the master-key link moves to the new key's hash
              and the old master key's row goes (tasks.database.bootstrap); the proxy recreated
  proof       from the host, over HTTP: the new key accepted, the old one refused, the virtual key
              accepted
  rollback    when the restart or the proof failed: the old .env, the old link, the proxy recreated
              and proven on the old key; the host then fails with the reason (non-zero exit)
  controller  the secrets file's LITELLM_MASTER_KEY becomes the new key when every gateway has it

No key, old or new, is ever on a command line or in pyinfra's output: keys reach the host inside
files uploaded by tasks.uploads.private_file or on psql's stdin, and every operation has a name=
(pyinfra prints the arguments of unnamed operations).

Test hook: LITELLM_DEPLOY_TEST_STOP_AFTER=<stage> (one of STAGES) ends the process right after
that stage, like a kill, so tests can interrupt a rotation at a known point.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pyinfra import host, logger, state
from pyinfra.api import FactBase, State, StringCommand, deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, python

from tasks import backup, compose, database
from tasks import secrets as S
from tasks.filters import dotenv_quote
from tasks.outcome import failed, last_error
from tasks.render import ENV_FILE, render_files
from tasks.settings import GATEWAYS, MIN_KEY_LENGTH, ConfigError, Secrets, Settings
from tasks.stack import staging_dir
from tasks.uploads import private_file

STOP_ENV = "LITELLM_DEPLOY_TEST_STOP_AFTER"
STAGES = ("pending", "backup", "env", "database", "restart")
STOP_EXIT_CODE = 75
WORKSPACE = ".rotation"  # under install_dir, 0700: the probes' key file and the poller's log
KEYS_FILE = "keys"
POLLER_SCRIPT = "poller.py"
PROOF_SCRIPT = "proof.py"
POLL_LOG = "poll.log"
STOP_FILE = "stop"
POLL_INTERVAL = 0.2  # seconds between two probes of the refusal-window poller
PROBE_ALIAS = "litellm-deploy-rotation-probe"
PROBE_MODEL = "litellm-deploy-rotation-probe"  # a model no gateway serves: the probe key can call nothing
REFUSED = (400, 401, 403)  # how LiteLLM refuses a key (400 "No connected db" when it has no database)

_rotations: dict[int, "Rotation"] = {}


# --- the controller's side -------------------------------------------------------------------------


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


def probe_key_for(new_key: str) -> str:
    """The proof's virtual key: derived from the new key, so a re-run uses the same one, and
    revealing nothing about it (HMAC)."""
    digest = hmac.new(new_key.encode(), b"litellm-deploy rotation probe", hashlib.sha256).digest()
    return "sk-" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def env_line_hash(name: str, value: str) -> str:
    """sha256 of the line tasks.render writes into .env for name=value (what EnvKeyLines reports)."""
    return hashlib.sha256(f"{name}={dotenv_quote(value)}".encode()).hexdigest()


# --- refusal window -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    seconds: float  # total time during which a request with a valid key (old or new) failed
    longest: float  # longest uninterrupted stretch of it
    refused: int
    probes: int
    span: float

    def describe(self) -> str:
        if not self.probes:
            return "not measured (the poller recorded nothing)"
        return (f"{self.seconds:.1f} s (longest stretch {self.longest:.1f} s; {self.refused} of {self.probes} "
                f"probes refused over {self.span:.1f} s)")


def refusal_window(samples: list[tuple[float, bool]], interval: float = POLL_INTERVAL) -> Window:
    """Each refused probe counts until the next probe (the last one for one interval)."""
    samples = sorted(samples)
    total = longest = stretch = 0.0
    refused = 0
    for index, (moment, ok) in enumerate(samples):
        step = samples[index + 1][0] - moment if index + 1 < len(samples) else interval
        if ok:
            stretch = 0.0
            continue
        refused += 1
        total += step
        stretch += step
        longest = max(longest, stretch)
    span = samples[-1][0] - samples[0][0] + interval if samples else 0.0
    return Window(round(total, 3), round(longest, 3), refused, len(samples), round(span, 3))


def parse_poll_log(lines: list[str]) -> list[tuple[float, bool]]:
    samples = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1] in ("0", "1"):
            try:
                samples.append((float(parts[0]), parts[1] == "1"))
            except ValueError:
                continue
    return samples


# --- the per-run record ---------------------------------------------------------------------------


@dataclass
class HostRun:
    """One gateway's rotation in this run; filled in as its operations execute."""

    name: str
    old: Settings
    new: Settings
    backup_path: str | None = None
    backup: OperationMeta | None = None
    switch: list[OperationMeta | None] = field(default_factory=list)  # .env, database link, restart
    proof: OperationMeta | None = None
    proof_problem: str | None = None
    rollback_problem: str | None = None
    rollback_proven: bool = False
    window: Window | None = None

    def failure(self) -> str | None:
        """Why this host's rotation must be rolled back, or None (so far) — asked as ops run."""
        labels = ["writing the new .env", "moving the database link to the new key",
                  "restarting the proxy on the new key"]
        for label, meta in zip(labels, self.switch):
            if failed(meta):
                return f"{label} failed{last_error(meta)}"
        if failed(self.proof):
            return f"proof failed: {self.proof_problem or 'see above'}"
        return None


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
            self.runs[settings.host_name] = HostRun(settings.host_name, settings, dataclasses.replace(settings, secrets=secrets))
        return self.runs[settings.host_name]

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
                f"run: {', '.join(missing)}. Run `pyinfra inventory rotate.py` again to finish the rotation.")
            return
        if complete(self.secrets_file, self.new_key):
            self.completed = True
            logger.info(
                f"--> Master key rotated on every gateway ({', '.join(self.gateways)}). Secrets file "
                f"{self.secrets_file}: {S.MASTER_KEY} now holds the new key, {S.MASTER_KEY_NEXT} was removed.")
        else:
            logger.error(
                f"--> Every gateway has the new key, but {S.MASTER_KEY_NEXT} in {self.secrets_file} no longer holds "
                f"it (the file changed during the run): fix the file by hand (docs/rotation.md).")


def rotation_for(state: State) -> Rotation:
    """This run's rotation, set up once: call after tasks.context.settings_for (which validated the
    whole inventory, so bad input still changes nothing, not even the secrets file)."""
    key = id(state)
    if key not in _rotations:
        from tasks.context import all_settings

        settings = all_settings(state)
        stop = os.environ.get(STOP_ENV)
        if stop and stop not in STAGES:
            raise ConfigError([f"{STOP_ENV}={stop!r}: not a stage — use one of {', '.join(STAGES)}"])
        path = secrets_file_of(state)
        any_settings = next(iter(settings.values()))
        old_key = any_settings.secrets.master_key
        new_key, generated = pending_key(path, old_key, any_settings.secrets.get(S.SALT_KEY))
        rotation = Rotation(
            secrets_file=path, old_key=old_key, new_key=new_key, generated=generated,
            stamp=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), gateways=tuple(sorted(settings)),
        )
        _rotations[key] = rotation
        how = "generated and recorded as" if generated else "taken from"
        logger.info(f"--> Master-key rotation for {', '.join(rotation.gateways)}: new key {how} "
                    f"{S.MASTER_KEY_NEXT} in {path}")
    return _rotations[key]


# --- facts ----------------------------------------------------------------------------------------


class EnvKeyLines(FactBase):
    """{"LITELLM_MASTER_KEY": sha256 of its line, ...} from the host's .env; None without a .env.
    Hashes only: the lines themselves are secrets."""

    def command(self, install_dir: str) -> str:
        env = shlex.quote(f"{install_dir.rstrip('/')}/{ENV_FILE}")
        pattern = f"^({S.MASTER_KEY}|{S.SALT_KEY})="
        return (
            f"if [ -f {env} ]; then echo present; grep -E '{pattern}' {env} | while IFS= read -r line; do "
            "printf '%s %s\\n' \"${line%%=*}\" \"$(printf '%s' \"$line\" | sha256sum | cut -d' ' -f1)\"; "
            "done; else echo missing; fi"
        )

    def process(self, output: list[str]) -> dict[str, str] | None:
        if not output or output[0].strip() != "present":
            return None
        found = {}
        for line in output[1:]:
            name, _, digest = line.strip().partition(" ")
            if name and digest:
                found[name] = digest
        return found


class ProxyKeyHash(FactBase):
    """sha256 of LITELLM_MASTER_KEY in the running proxy container's environment (LiteLLM's hash of
    the key), or None when no proxy container runs."""

    def command(self, project: str, install_dir: str) -> str:
        return (
            f"id=$({compose.compose_cmd(project, install_dir)} ps -q litellm 2>/dev/null | head -n 1); "
            "if [ -n \"$id\" ]; then docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' \"$id\" "
            f"| sed -n 's/^{S.MASTER_KEY}=//p' | head -n 1 | tr -d '\\n' | sha256sum | cut -d' ' -f1; fi"
        )

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output and output[0].strip() else None


class PollSamples(FactBase):
    """The refusal-window poller's samples: [(seconds since start, accepted)]."""

    def command(self, install_dir: str) -> str:
        return f"cat {shlex.quote(workspace(install_dir) + '/' + POLL_LOG)} 2>/dev/null || true"

    def process(self, output: list[str]) -> list[tuple[float, bool]]:
        return parse_poll_log(output)


class KeyProof(FactBase):
    """HTTP from the host to its proxy with the keys in the workspace's key file: JSON of statuses."""

    def command(self, image: str, install_dir: str, base: str, expect: str, seconds: int) -> str:
        failed = json.dumps({"error": "the proof could not run (docker run of the proxy image failed)"})
        return (
            f"{_host_python(image, install_dir, read_only=True)} /rotation/{PROOF_SCRIPT} "
            f"{shlex.quote(base)} {shlex.quote(expect)} {int(seconds)} 2>/dev/null | tail -n 1 | grep . "
            f"|| echo {shlex.quote(failed)}"
        )

    def process(self, output: list[str]) -> dict:
        try:
            return json.loads(output[-1])
        except (IndexError, ValueError):
            return {"error": "the proof printed no result"}


# --- host-side scripts (python3 of the proxy image, on the host's network) -------------------------

POLLER_SOURCE = r"""
import json, os, sys, time, urllib.request
base, lifetime, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
keys = json.load(open("/rotation/keys"))
order = [keys["old"], keys["new"]]
out = open("/rotation/poll.log", "a")
start = time.monotonic()
def accepted(key):
    request = urllib.request.Request(base + "/v1/models", headers={"Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except Exception:
        return False
while not os.path.exists("/rotation/stop") and time.monotonic() - start < lifetime:
    began = time.monotonic()
    ok = False
    for key in list(order):
        if accepted(key):
            ok = True
            if key != order[0]:
                order.reverse()
            break
    out.write("%.3f %d\n" % (began - start, ok))
    out.flush()
    time.sleep(max(0.0, interval - (time.monotonic() - began)))
"""

PROOF_SOURCE = r"""
import json, sys, time, urllib.request, urllib.error
base, expect, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
keys = json.load(open("/rotation/keys"))
def status(key):
    request = urllib.request.Request(base + "/v1/models", headers={"Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except Exception:
        return 0
good, bad = (keys["new"], keys["old"]) if expect == "new" else (keys["old"], keys["new"])
deadline = time.monotonic() + seconds
while True:
    accepted = status(good)
    if accepted == 200 or time.monotonic() > deadline:
        break
    time.sleep(1)
result = {"accepted": accepted, "refused": status(bad)}
if expect == "new" and keys.get("probe"):
    result["probe"] = status(keys["probe"])
print(json.dumps(result))
"""


def workspace(install_dir: str) -> str:
    return f"{install_dir.rstrip('/')}/{WORKSPACE}"


def poller_name(project: str) -> str:
    return f"{project}-rotation-poller"


def probe_base(settings: Settings) -> str:
    """The proxy's URL from the host itself (its published port)."""
    address = "127.0.0.1" if settings.proxy_bind in ("0.0.0.0", "::", "127.0.0.1") else settings.proxy_bind
    if ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{settings.proxy_port}"


def _host_python(image: str, install_dir: str, read_only: bool, detach_name: str | None = None) -> str:
    mount = f"{workspace(install_dir)}:/rotation" + (":ro" if read_only else "")
    detach = f"-d --name {shlex.quote(detach_name)} " if detach_name else ""
    return (f"docker run --rm {detach}--user 0:0 --network host -v {shlex.quote(mount)} "
            f"--entrypoint python3 {shlex.quote(image)}")


def evaluate_proof(result: dict, expect: str, probe: bool) -> str | None:
    """None when the proof holds, else what failed."""
    if "error" in result:
        return result["error"]
    accepted, refused = result.get("accepted"), result.get("refused")
    good, bad = ("new", "previous") if expect == "new" else ("previous", "new")
    if accepted != 200:
        answer = "no answer" if not accepted else f"HTTP {accepted}"
        return f"the {good} master key was not accepted ({answer}, expected HTTP 200)"
    if refused not in REFUSED:
        answer = "no answer" if not refused else f"HTTP {refused}"
        return f"the {bad} master key was not refused ({answer}, expected HTTP 400/401/403)"
    if expect == "new" and probe and result.get("probe") != 200:
        return f"a virtual key made before the rotation was refused (HTTP {result.get('probe')}, expected 200)"
    return None


# --- operations -----------------------------------------------------------------------------------


@operation(is_idempotent=True)
def preflight(run: HostRun, rotation: Rotation):
    """Nothing changes here; a problem fails this host, and the gate then stops every other."""
    lines = host.get_fact(EnvKeyLines, install_dir=run.old.install_dir)
    salt = run.old.secrets.get(S.SALT_KEY)
    problem = None
    where = f"{run.old.install_dir}/{ENV_FILE}"
    if lines is None:
        problem = f"no {where}: this gateway was never deployed — fix: pyinfra inventory deploy.py, then rotate"
    elif S.SALT_KEY not in lines:
        problem = (
            f"{where} has no {S.SALT_KEY}: LiteLLM then encrypts stored credentials with the master key itself, "
            f"so changing it would make them unreadable. Refusing; nothing was changed. Fix (docs/rotation.md, "
            f"\"No salt key on a host\"): if the current master key is not compromised, make the secrets file's "
            f"{S.SALT_KEY} the current master key, run deploy.py (nothing is re-encrypted), then rotate.py; if it is "
            f"compromised, re-encrypt with LiteLLM's LITELLM_MIGRATE_FROM_MASTER_KEY by hand as described there"
        )
    elif salt is None or lines[S.SALT_KEY] != env_line_hash(S.SALT_KEY, salt):
        problem = (
            f"{S.SALT_KEY} in {where} differs from the secrets file's; the salt key encrypts stored credentials "
            f"and must never change — fix: find out which one is right (the host's, if the proxy has been "
            f"storing credentials with it), make the secrets file hold it, and run rotate.py again"
        )
    elif lines.get(S.MASTER_KEY) not in (env_line_hash(S.MASTER_KEY, rotation.old_key),
                                         env_line_hash(S.MASTER_KEY, rotation.new_key)):
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
        host.noop("preflight passed: salt key present and unchanged; .env holds "
                  + ("the new key already (an earlier run got this far)" if done else "the current key"))
        return
    yield f"echo {shlex.quote(f'rotation preflight failed on {run.name}: {problem}')} >&2; exit 1"


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
    reasons = "; ".join(f"{name}: {rotation.preflight_problems.get(name, stage + ' failed, see above')}" for name in failed)
    message = (f"rotation not started on {host.name} (nothing was changed on any gateway): {stage} failed on "
               f"{', '.join(failed)} — {reasons}")
    yield f"echo {shlex.quote(message)} >&2; exit 1"


def needs_data_change(run: HostRun, rotation: Rotation) -> bool:
    """Asked on the host when the backup runs: is any change due to .env or the database?"""
    lines = host.get_fact(EnvKeyLines, install_dir=run.old.install_dir) or {}
    if lines.get(S.MASTER_KEY) != env_line_hash(S.MASTER_KEY, rotation.new_key):
        return True
    values = database.bootstrap_values(run.new.admin_user_id, run.new.admin_email,
                                       database.hash_key(rotation.new_key), database.abbreviate_key(rotation.new_key))
    return not database.bootstrap_in_place(values, run.new.database_mode, run.new.install_dir, **_db_target(run.new))


def _db_target(settings: Settings) -> dict:
    return dict(postgres_user=settings.postgres_user, postgres_db=settings.postgres_db,
                postgres_image=settings.postgres_image, compose_project=settings.compose_project)


# The proof's virtual key. Rows of earlier, interrupted rotations (same alias and marker model, another
# token) are removed first; nothing else in the table is touched.
PROBE_INSERT = f"""\\set ON_ERROR_STOP on
BEGIN;
DELETE FROM "LiteLLM_VerificationToken"
 WHERE key_alias = '{PROBE_ALIAS}' AND models = ARRAY['{PROBE_MODEL}']::text[] AND token <> :'probe_hash';
INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, models, expires)
VALUES (:'probe_hash', :'probe_name', '{PROBE_ALIAS}', ARRAY['{PROBE_MODEL}']::text[],
        CURRENT_TIMESTAMP + interval '2 hours')
ON CONFLICT (token) DO NOTHING;
COMMIT;
"""
PROBE_DELETE = f"""\\set ON_ERROR_STOP on
DELETE FROM "LiteLLM_VerificationToken"
 WHERE key_alias = '{PROBE_ALIAS}' AND models = ARRAY['{PROBE_MODEL}']::text[];
"""


def probe_sql(present: bool, probe_key: str) -> str:
    """psql's stdin that adds (or removes) the proof's virtual key: no user, no model, 2 hours."""
    variables = {"probe_hash": database.hash_key(probe_key), "probe_name": database.abbreviate_key(probe_key)}
    return database.PRELUDE + database.psql_variables(variables) + (PROBE_INSERT if present else PROBE_DELETE)


@operation()
def probe_key(settings: Settings, key: str, present: bool):
    yield StringCommand(
        database.psql_command(settings.database_mode, settings.install_dir, **_db_target(settings)),
        _stdin=probe_sql(present, key),
    )


@operation()
def poller_started(settings: Settings, lifetime: int):
    """Start the refusal-window poller on the host: every POLL_INTERVAL it asks the proxy with the
    key that worked last (then the other one) and logs whether a valid key was accepted."""
    ws = workspace(settings.install_dir)
    name = poller_name(settings.compose_project)
    log, stop = shlex.quote(f"{ws}/{POLL_LOG}"), shlex.quote(f"{ws}/{STOP_FILE}")
    run = _host_python(settings.litellm_image, settings.install_dir, read_only=False, detach_name=name)
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
    yield (f"touch {stop}; timeout 30 docker wait {name} >/dev/null 2>&1; "
           f"docker rm -f {name} >/dev/null 2>&1; rm -f {stop}")


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
    result = host.get_fact(KeyProof, image=settings.litellm_image, install_dir=settings.install_dir,
                           base=probe_base(settings), expect=expect, seconds=settings.verify_timeout)
    probe = settings.has_database
    problem = evaluate_proof(result, expect, probe)
    if expect == "new":
        run.proof_problem = problem
    else:
        run.rollback_problem = problem
        run.rollback_proven = problem is None
    if problem is None:
        shown = f"HTTP {result['accepted']} with the {'new' if expect == 'new' else 'previous'} key, " \
                f"HTTP {result['refused']} with the {'previous' if expect == 'new' else 'new'} one"
        if probe and expect == "new":
            shown += f", HTTP {result.get('probe')} with a virtual key made before the rotation"
        host.log(f"proof: {shown}", logger.info)
        host.noop("proven")
        return
    yield f"echo {shlex.quote(f'proof failed on {run.name}: {problem}')} >&2; exit 1"


@operation(is_idempotent=True)
def reported(run: HostRun, rotation: Rotation):
    if not state.is_executing:
        host.noop("reported when the rotation runs")
        return
    window = run.window.describe() if run.window else "not measured"
    backup_note = f"; backup {run.backup_path}" if run.backup_path and run.backup and _changed(run.backup) else ""
    reason = run.failure()
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
    yield f"echo {shlex.quote(message)} >&2; exit 1"


def _changed(meta: OperationMeta) -> bool:
    try:
        return meta.did_change()
    except RuntimeError:
        return False


def _stop_here(stage: str) -> None:
    """The test hook: end the whole process now, as a kill would (no clean-up, no summary)."""
    print(f"{STOP_ENV}={stage}: stopping the run here", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(STOP_EXIT_CODE)


def _stop_after(stage: str) -> None:
    if os.environ.get(STOP_ENV) == stage:
        python.call(name=f"Test hook {STOP_ENV}={stage}: stop the run", function=_stop_here, stage=stage)


# --- the deploy -----------------------------------------------------------------------------------


@deploy("Rotate the master key")
def rotate_gateway(settings: Settings, rotation: Rotation) -> None:
    run = rotation.host_run(settings)
    old, new = run.old, run.new
    failed: Callable[[], bool] = lambda: run.failure() is not None  # noqa: E731
    ok: Callable[[], bool] = lambda: run.failure() is None  # noqa: E731

    # 1. Preflight on every gateway, then nothing anywhere unless all passed.
    preflight(name="Preflight: .env present, salt key unchanged, master key known", run=run, rotation=rotation)
    gate(name="Every gateway passed its preflight", rotation=rotation, stage="preflight")
    _stop_after("pending")

    # 2. Database backup (database modes), then again nothing anywhere unless every one was taken.
    if settings.has_database:
        run.backup_path = backup.pre_change_backup_path(settings, rotation.stamp)
        run.backup = backup.database_backup(
            name=f"Database backup before rotation: {run.backup_path}", settings=old, path=run.backup_path,
            needed=lambda: needs_data_change(run, rotation),
        )
        gate(name="Every gateway's database is backed up", rotation=rotation, stage="the backup")
    _stop_after("backup")

    # 3. Probes: a virtual key made before the switch, the keys file, the refusal-window poller.
    ws = workspace(settings.install_dir)
    files.directory(name=f"Rotation workspace {ws} (root only)", path=ws, user="root", group="root", mode="700")
    keys = {"old": rotation.old_key, "new": rotation.new_key}
    if settings.has_database:
        keys["probe"] = probe_key_for(rotation.new_key)
        probe_key(name="Virtual key for the proof (no user, no model, expires in 2 hours)", settings=old,
                  key=keys["probe"], present=True)
    private_file(name="Keys for the host-side probes (mode 0600)", content=json.dumps(keys), dest=f"{ws}/{KEYS_FILE}",
                 staging_dir=staging_dir(settings), mode="600")
    for script, source in ((POLLER_SCRIPT, POLLER_SOURCE), (PROOF_SCRIPT, PROOF_SOURCE)):
        private_file(name=f"Probe script {script}", content=source.lstrip(), dest=f"{ws}/{script}",
                     staging_dir=staging_dir(settings), mode="600")
    poller_started(name="Start the refusal-window poller", settings=old,
                   lifetime=2 * (settings.start_timeout + settings.verify_timeout) + 600, _ignore_errors=True)

    # 4. The switch: .env, database link, proxy.
    env = private_file(name=f"Write {ENV_FILE} with the new master key (mode 0600)",
                       content=render_files(new)[ENV_FILE], dest=f"{settings.install_dir}/{ENV_FILE}",
                       staging_dir=staging_dir(settings), mode="600", _ignore_errors=True)
    _stop_after("env")
    link = None
    if settings.has_database:
        link = database.bootstrap_for_key(
            new, rotation.new_key,
            name="Master-key link moves to the new key; the old key's row is removed (one transaction)",
            _ignore_errors=True, _if=ok,
        )
    _stop_after("database")
    stale = proxy_key_current(name="Does the running proxy have the new key?", settings=new,
                              key_hash=database.hash_key(rotation.new_key), _if=ok)
    restart = compose.service_up(
        name="Restart the proxy on the new master key", project=settings.compose_project,
        install_dir=settings.install_dir, service=compose.PROXY_SERVICE, depends_on=[env], recreate_on=[env, stale],
        timeout=settings.start_timeout, _ignore_errors=True, _if=ok,
    )
    run.switch = [env, link, restart]
    _stop_after("restart")

    # 5. Proof from the host: new key accepted, old key refused, the virtual key accepted.
    run.proof = key_proven(name="Proof: new key accepted, previous key refused", run=run, expect="new",
                           _ignore_errors=True, _if=ok)

    # 6. Rollback, only when the switch or the proof failed.
    back_env = private_file(name=f"Rollback: {ENV_FILE} with the previous master key", content=render_files(old)[ENV_FILE],
                            dest=f"{settings.install_dir}/{ENV_FILE}", staging_dir=staging_dir(settings), mode="600",
                            _ignore_errors=True, _if=failed)
    if settings.has_database:
        database.bootstrap_for_key(old, rotation.old_key, name="Rollback: master-key link back to the previous key",
                                   _ignore_errors=True, _if=failed)
    back_stale = proxy_key_current(name="Rollback: does the running proxy have the previous key?", settings=old,
                                   key_hash=database.hash_key(rotation.old_key), _if=failed)
    compose.service_up(
        name="Rollback: restart the proxy on the previous master key", project=settings.compose_project,
        install_dir=settings.install_dir, service=compose.PROXY_SERVICE, depends_on=[back_env],
        recreate_on=[back_env, back_stale], timeout=settings.start_timeout, _ignore_errors=True, _if=failed,
    )
    key_proven(name="Rollback: previous key accepted, new key refused", run=run, expect="old",
               _ignore_errors=True, _if=failed)

    # 7. Measure, clean up, report; the controller records the new key once every gateway has it.
    poller_stopped(name="Stop the refusal-window poller", settings=old)
    window_measured(name="Refusal window", run=run)
    if settings.has_database:
        probe_key(name="Remove the proof's virtual key", settings=old, key=keys["probe"], present=False,
                  _ignore_errors=True)
    files.file(name="Remove the probes' key file", path=f"{ws}/{KEYS_FILE}", present=False)
    reported(name="Rotation result", run=run, rotation=rotation)
    python.call(name="Controller: the new key becomes LITELLM_MASTER_KEY once every gateway has it",
                function=rotation.confirm, host_name=settings.host_name)
