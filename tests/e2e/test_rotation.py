"""Master-key rotation on the test bed: `pyinfra INVENTORY rotate.py`, real hosts, real SSH.

Own hosts (rot-gw-stateless, rot-gw-db, rot-ollama1, rot-up1), so this suite runs beside others.
Each gateway gets its own inventory (the gateway, the Ollama node, the upstream) and its own
secrets file, so each half of the suite rotates its own master keys: the controller records a new
key as LITELLM_MASTER_KEY only when every gateway of the inventory has it, and a failure injected on
one gateway must not hold up the other half.

rot-gw-db runs its DB-backed proxy for real (offline its Prisma query engine is the test bed's
stand-in, tests/testbed/images/litellm): a virtual key made through the proxy before the rotation
must keep working through every rotation and rollback.

Interruptions use the documented hook LITELLM_DEPLOY_TEST_STOP_AFTER=<stage>: the run ends there
with exit code 75 and no clean-up, as a kill would leave it. Tests run in file order (-x).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections import Counter

import pytest

from tasks.config import secrets as S
from tasks.config.filters import dotenv_quote
from tasks.config.virtual_keys import default_key_env
from tasks.gateway import database
from tasks.lib import envfile
from tasks.lib.compose import PROXY_SERVICE
from tasks.rotation import facts, interrupt, sql, workspace
from tests.e2e import gateway_http as api
from tests.e2e.conftest import GATEWAYS, make_deployment

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

pytestmark = pytest.mark.e2e

STATELESS, DB = "gw-stateless", "gw-db"
INSTALL = "/opt/litellm"
COMPOSE = f"docker compose --project-directory {INSTALL}"
PSQL = f"{COMPOSE} exec -T db psql -U litellm -X -q -v ON_ERROR_STOP=1 -A -t"
CREDENTIAL = "upstream-api-key: it's \\ $$ a secret ✓"
WRONG_KEY = "sk-litellm-deploy-e2e-wrong-key-000000000000"


class OnlyHosts:
    """The bed, but inventories list only some of its hosts."""

    def __init__(self, bed, names: list[str]):
        self._bed, self._names = bed, names

    def __getattr__(self, name):
        return getattr(self._bed, name)

    def inventory_text(self, extra_data=None, names=None):
        return self._bed.inventory_text(extra_data, names=[n for n in (names or self._names) if n in self._names])


def on(deployment, gateway: str):
    """Point the deployment at one gateway: its own inventory and its own secrets file."""
    bed = getattr(deployment.bed, "_bed", deployment.bed)
    deployment.bed = OnlyHosts(bed, [deployment.name(h) for h in (gateway, "ollama1", "up1")])
    path = deployment.workdir / f"secrets-{gateway}.env"
    if not path.exists():
        path.write_text((deployment.workdir / "secrets.env").read_text())
        path.chmod(0o600)
    deployment.secrets = path
    return deployment


@pytest.fixture(scope="module")
def deployment(bed, tmp_path_factory):
    deployment = make_deployment(bed, tmp_path_factory, prefix="rot-", provisioned=tuple(GATEWAYS))
    yield deployment
    deployment.down()


@pytest.fixture(scope="module")
def memo():
    """What one test learns and a later one checks (tests run in order)."""
    return {"outputs": []}


def secrets_of(deployment) -> dict[str, str]:
    return S.read_secrets(deployment.secrets)


def rotate(deployment, memo, *args: str, stop: str | None = None, gateway: str):
    """rotate.py at -vv (what acceptance 6 inspects), optionally stopped after a stage."""
    saved = os.environ.pop(interrupt.STOP_ENV, None)
    if stop:
        os.environ[interrupt.STOP_ENV] = stop
    try:
        run = deployment.pyinfra("rotate.py", "-vv", *args, limit=gateway)
    finally:
        os.environ.pop(interrupt.STOP_ENV, None)
        if saved is not None:
            os.environ[interrupt.STOP_ENV] = saved
    memo["outputs"].append(run.output)
    # Kept for reading after a failure (the suite's temporary directory, never printed).
    (deployment.workdir / f"rotate-{len(memo['outputs'])}-{gateway}.log").write_text(run.output)
    return run


def env_line_hash(deployment, gateway: str, name: str) -> str:
    """sha256 of the host .env's NAME= line (the value itself never enters this process's output)."""
    line = deployment.ssh(gateway, f"grep -m1 '^{name}=' {INSTALL}/.env").strip()
    return hashlib.sha256(line.encode()).hexdigest()


def holds(deployment, gateway: str, name: str, value: str) -> bool:
    return env_line_hash(deployment, gateway, name) == envfile.line_hash(name, value)


def status(deployment, gateway: str, key: str) -> int:
    return deployment.call(gateway, "/v1/models", key=key)[0]


def assert_no_key_in(memo, *keys: str):
    """Acceptance 6: no key, in whole or as its dotenv form, in any rotate.py output at -vv."""
    for output in memo["outputs"]:
        for key in keys:
            assert key not in output, "a master key appeared in pyinfra's output"
            assert dotenv_quote(key) not in output


# --- gw-stateless ---------------------------------------------------------------------------------


def test_1_stateless_converges(deployment, memo):
    on(deployment, STATELESS)
    run = deployment.pyinfra(limit=STATELESS)
    assert run.returncode == 0, run.output[-4000:]
    values = secrets_of(deployment)
    memo["old"], memo["salt"] = values[S.MASTER_KEY], values[S.SALT_KEY]
    assert status(deployment, STATELESS, memo["old"]) == 200
    # A credential encrypted with the salt key by LiteLLM's own helper, before any rotation.
    os.environ["LITELLM_SALT_KEY"] = memo["salt"]
    try:
        from litellm.proxy.common_utils.encrypt_decrypt_utils import encrypt_value_helper

        memo["ciphertext"] = encrypt_value_helper(CREDENTIAL)
    finally:
        del os.environ["LITELLM_SALT_KEY"]


def test_2_killed_before_any_host_change_the_rerun_keeps_the_pending_key(deployment, memo):
    on(deployment, STATELESS)
    # --dry plans the rotation and writes nothing anywhere, the secrets file included (issue 15).
    before = deployment.secrets.read_bytes()
    dry = rotate(deployment, memo, "--dry", gateway=STATELESS)
    assert dry.returncode == 0, dry.output[-4000:]
    assert deployment.secrets.read_bytes() == before, "rotate.py --dry wrote the secrets file"
    assert holds(deployment, STATELESS, S.MASTER_KEY, memo["old"])

    run = rotate(deployment, memo, stop="pending", gateway=STATELESS)
    assert run.returncode == interrupt.STOP_EXIT_CODE, run.output[-4000:]
    values = secrets_of(deployment)
    pending = values[S.MASTER_KEY_NEXT]
    assert values[S.MASTER_KEY] == memo["old"] and pending != memo["old"]
    assert holds(deployment, STATELESS, S.MASTER_KEY, memo["old"])
    assert status(deployment, STATELESS, memo["old"]) == 200
    assert status(deployment, STATELESS, pending) in facts.REFUSED
    memo["new"] = pending

    again = rotate(deployment, memo, stop="pending", gateway=STATELESS)
    assert again.returncode == interrupt.STOP_EXIT_CODE, again.output[-4000:]
    assert secrets_of(deployment)[S.MASTER_KEY_NEXT] == pending, "a re-run must never make a third key"
    assert "taken from LITELLM_MASTER_KEY_NEXT" in again.output
    assert_no_key_in(memo, memo["old"], memo["new"])


def test_3_killed_after_env_written_before_restart(deployment, memo):
    on(deployment, STATELESS)
    run = rotate(deployment, memo, stop="env", gateway=STATELESS)
    assert run.returncode == interrupt.STOP_EXIT_CODE, run.output[-4000:]
    assert holds(deployment, STATELESS, S.MASTER_KEY, memo["new"]), ".env should hold the pending key"
    # The proxy was not restarted: it still runs on the previous key.
    assert status(deployment, STATELESS, memo["old"]) == 200
    assert status(deployment, STATELESS, memo["new"]) in facts.REFUSED
    values = secrets_of(deployment)
    assert values[S.MASTER_KEY] == memo["old"] and values[S.MASTER_KEY_NEXT] == memo["new"]


def test_4_rerun_finishes_the_same_rotation(deployment, memo):
    """Acceptance 1 and 4: the same pending key ends up on the host and in the secrets file."""
    on(deployment, STATELESS)
    run = rotate(deployment, memo, gateway=STATELESS)
    assert run.returncode == 0, run.output[-6000:]
    assert status(deployment, STATELESS, memo["new"]) == 200
    assert status(deployment, STATELESS, memo["old"]) in facts.REFUSED
    assert status(deployment, STATELESS, WRONG_KEY) in facts.REFUSED
    values = secrets_of(deployment)
    assert values[S.MASTER_KEY] == memo["new"] and S.MASTER_KEY_NEXT not in values
    assert values[S.SALT_KEY] == memo["salt"]
    assert holds(deployment, STATELESS, S.SALT_KEY, memo["salt"])
    assert holds(deployment, STATELESS, S.MASTER_KEY, memo["new"])
    window = re.search(r"refusal window: ([0-9.]+) s", run.output)
    assert window, run.output[-4000:]
    memo["window"] = float(window.group(1))
    assert 0 < memo["window"] < 300
    assert "now holds the new key" in run.output
    assert_no_key_in(memo, memo["old"], memo["new"])
    # Nothing left behind: no key file, no poller.
    assert workspace.KEYS_FILE not in deployment.ssh(STATELESS, f"ls -A {INSTALL}/{workspace.WORKSPACE}").split()
    assert deployment.ssh(STATELESS, "docker ps -q --filter name=rotation-poller").strip() == ""


def test_5_gateway_verifies_and_the_salt_still_decrypts(deployment, memo):
    """Acceptance 3 on the host: LiteLLM's helper inside the rotated proxy container (its own
    LITELLM_SALT_KEY) decrypts what was encrypted with the salt key before the rotation."""
    on(deployment, STATELESS)
    verify = deployment.pyinfra("verify.py", limit=STATELESS)
    assert verify.returncode == 0, verify.output[-4000:]
    script = ("import sys; from litellm.proxy.common_utils.encrypt_decrypt_utils import decrypt_value_helper; "
              "print(repr(decrypt_value_helper(sys.argv[1], 'e2e')))")
    out = deployment.ssh(STATELESS, f"{COMPOSE} exec -T {PROXY_SERVICE} python3 -c {shlex.quote(script)} "
                                    f"{shlex.quote(memo['ciphertext'])} 2>/dev/null")
    assert out.strip().splitlines()[-1] == repr(CREDENTIAL)


OVERRIDE = """services:
  litellm:
    # Injected by tests/e2e/test_rotation.py: refuse to start on any master key but one.
    entrypoint: ["/bin/sh", "-c", "test \\"$$(printf %s \\"$$LITELLM_MASTER_KEY\\" | sha256sum | cut -c1-64)\\" = \\"{digest}\\" || {{ echo 'injected failure: this proxy refuses to start on a new master key' >&2; exit 1; }}; exec /app/docker/prod_entrypoint.sh \\"$$@\\"", "sh"]
"""


def test_6_proxy_that_cannot_start_on_the_new_key_is_rolled_back(deployment, memo):
    """Acceptance 5: the host ends healthy on the previous key; the run fails naming host and reason."""
    on(deployment, STATELESS)
    current = memo["new"]
    override = OVERRIDE.format(digest=hashlib.sha256(current.encode()).hexdigest())
    deployment.bed.ssh(deployment.name(STATELESS), f"cat > {INSTALL}/docker-compose.override.yml",
                       input=override.encode())
    run = rotate(deployment, memo, gateway=STATELESS)
    pending = secrets_of(deployment)[S.MASTER_KEY_NEXT]
    memo["failed"] = pending
    assert run.returncode != 0, run.output[-4000:]
    host = deployment.name(STATELESS)
    assert f"rotation FAILED on {host}: restarting the proxy on the new key failed" in run.output, run.output[-6000:]
    assert "rolled back: the proxy is healthy on the previous master key again" in run.output
    assert status(deployment, STATELESS, current) == 200
    assert status(deployment, STATELESS, pending) in facts.REFUSED
    assert holds(deployment, STATELESS, S.MASTER_KEY, current)
    values = secrets_of(deployment)
    assert values[S.MASTER_KEY] == current and values[S.MASTER_KEY_NEXT] == pending
    assert_no_key_in(memo, memo["old"], current, pending)


def test_7_after_the_cause_is_fixed_the_rerun_finishes_with_the_same_key(deployment, memo):
    on(deployment, STATELESS)
    deployment.ssh(STATELESS, f"rm -f {INSTALL}/docker-compose.override.yml")
    run = rotate(deployment, memo, gateway=STATELESS)
    assert run.returncode == 0, run.output[-6000:]
    assert status(deployment, STATELESS, memo["failed"]) == 200
    assert status(deployment, STATELESS, memo["new"]) in facts.REFUSED
    values = secrets_of(deployment)
    assert values[S.MASTER_KEY] == memo["failed"] and S.MASTER_KEY_NEXT not in values
    assert values[S.SALT_KEY] == memo["salt"]
    assert_no_key_in(memo, memo["old"], memo["new"], memo["failed"])


# --- gw-db: the DB-backed proxy runs; a virtual key made through it must survive every rotation ------

# start_timeout: a DB-backed proxy restart took over 90 s on a loaded 2-core machine (load ~9), and the
# rotation then rolled back as designed; 150 s keeps a healthy restart from counting as failed there.
DB_TIMEOUTS = {"verify_timeout": 60, "start_timeout": 150}
VIRTUAL_ALIAS = "e2e-made-before-rotation"
VIRTUAL_MODELS = ["chat-upstream"]  # what the virtual key may use (the gateway routes two models)
# A key declared as code (group data virtual_keys), converged by deploy.py: it must survive too.
DECLARED_ALIAS = "e2e-declared"
TOKENS = "LiteLLM_VerificationToken"
SPEND_LOGS = "LiteLLM_SpendLogs"
# A running proxy keeps accounts of every request it serves, the rotation's own poller and proof
# among them: a row per request in the spend logs (refused keys too), per-day aggregates upserted in
# the Daily tables, and on the key used its spend, last use and (Prisma's @updatedAt) updated_at.
# Each proxy process also keeps a heartbeat row of its own (a recreated proxy is a new worker).
# Those change while the tests run; everything else must not, unless the rotation means to change it.
ACCOUNTING_COLUMNS = ("spend", "total_spend", "model_spend", "last_active", "updated_at")
TOKEN_ROWS = (f"SELECT md5((to_jsonb(t) {' '.join(f'- {c!r}' for c in ACCOUNTING_COLUMNS)})::text) "
              f'FROM "{TOKENS}" t;')


def accounting(table: str) -> bool:
    return table.startswith(("LiteLLM_Daily", "LiteLLM_SpendLog")) or table == "LiteLLM_ProxyWorkerHeartbeat"


def on_db(deployment):
    on(deployment, DB)
    deployment.overrides[DB] = {**DB_TIMEOUTS, "virtual_keys": [{"alias": DECLARED_ALIAS, "models": VIRTUAL_MODELS}]}
    return deployment


class HostDb:
    """psql in the gateway's bundled Postgres, over SSH; shaped like tests.integration's Db."""

    def __init__(self, deployment, dbname: str = "litellm"):
        self.deployment, self.dbname = deployment, dbname

    def psql(self, script: str, check: bool = True):
        result = self.deployment.bed.ssh(self.deployment.name(DB), f"{PSQL} -d {self.dbname}", input=script.encode())
        if check:
            assert result.ok, result.output

        class Out:
            stdout = result.output
            returncode = result.rc

        return Out()

    def json(self, script: str):
        lines = [line for line in self.psql(script).stdout.splitlines() if line.strip()]
        return json.loads(lines[-1])


def master_rows(db: HostDb) -> list[dict]:
    return db.json(f"""SELECT coalesce(json_agg(json_build_object('token', token, 'user_id', user_id)
                       ORDER BY token), '[]') FROM "{TOKENS}" WHERE key_alias = 'master-key';""")


def token_row(db: HostDb, key: str) -> list[str]:
    """md5 of the stored row(s) of a key (its sha256 token), accounting columns aside: [] when it is
    not stored."""
    where = f"WHERE token = '{database.hash_key(key)}'"
    return [line.strip() for line in db.psql(TOKEN_ROWS.replace(" t;", f" t {where};")).stdout.splitlines() if line.strip()]


def data_of(db: HostDb) -> dict[str, Counter]:
    """table -> multiset of row md5s, every table of the schema; the token table's rows without
    their accounting columns."""
    from tests.integration.litellm_data import snapshot

    data = snapshot(db)
    data[TOKENS] = Counter(line.strip() for line in db.psql(TOKEN_ROWS).stdout.splitlines() if line.strip())
    return data


def assert_rows_kept(before: dict, after: dict) -> None:
    """Outside the token table every row is as before, the proxy's request accounting aside; of that,
    no spend log row was lost (they are only ever added)."""
    kept = [{t: rows for t, rows in data.items() if t != TOKENS and not accounting(t)} for data in (before, after)]
    changed = sorted(t for t in set(kept[0]) | set(kept[1]) if kept[0].get(t) != kept[1].get(t))
    assert changed == [], f"rows outside {TOKENS} changed in: {', '.join(changed)}"
    lost = before[SPEND_LOGS] - after[SPEND_LOGS]
    assert not lost, f"{sum(lost.values())} spend log row(s) lost"


def token_moves(before: dict, after: dict) -> tuple[int, int]:
    """(rows of the token table gone, rows come) from `before` to `after`."""
    return sum((before[TOKENS] - after[TOKENS]).values()), sum((after[TOKENS] - before[TOKENS]).values())


def probe_rows(db: HostDb) -> list[dict]:
    return db.json(f"""SELECT coalesce(json_agg(json_build_object('token', token, 'user_id', user_id, 'models', models)),
                       '[]') FROM "{TOKENS}" WHERE key_alias = '{sql.PROBE_ALIAS}';""")


def seen(deployment, key: str):
    """(status, sorted model ids) that `key` gets on /v1/models, from the controller."""
    return api.models_seen(deployment.base_url(DB), key)


def backups(deployment) -> list[str]:
    """The rotation's backups on the host (the backup timer's own files aside)."""
    return sorted(deployment.ssh(DB, f"ls -1 {INSTALL}/backups | grep -- '-before-rotation[.]dump$' || true").split())


def gateway_models(deployment) -> list[str]:
    return sorted(m["name"] for m in deployment.models())


def assert_only_the_master_row_moved(memo, reference: dict, db: HostDb) -> dict:
    """Against `reference`: every other table unchanged; in the token table one row left and one came
    (the master-key row, on another key or re-made), the virtual key's row untouched, no probe row."""
    after = data_of(db)
    assert_rows_kept(reference, after)
    assert token_moves(reference, after) == (1, 1)
    assert sum(after[TOKENS].values()) == sum(reference[TOKENS].values())
    assert token_row(db, memo["db_virtual"]) == [memo["db_virtual_row"]], "the virtual key's row changed"
    assert probe_rows(db) == [], "the proof's virtual key was left behind"
    return after


def test_8_db_gateway_converges_and_a_virtual_key_is_made_through_the_proxy(deployment, memo):
    from litellm.proxy.auth.auth_utils import abbreviate_api_key
    from litellm.proxy.utils import hash_token

    from tests.integration.litellm_data import seed

    on_db(deployment)
    run = deployment.pyinfra(limit=DB)
    assert run.returncode == 0, run.output[-6000:]
    base = deployment.base_url(DB)
    assert api.wait_ready(base, timeout=60)["db"] == "connected"
    values = secrets_of(deployment)
    memo["db_old"], memo["db_salt"] = values[S.MASTER_KEY], values[S.SALT_KEY]
    assert deployment.master_key() == memo["db_old"]
    assert seen(deployment, memo["db_old"]) == (200, gateway_models(deployment))
    db = HostDb(deployment)
    seed(db, hash_token, abbreviate_api_key, keys=20, users=3, teams=2)
    # A real virtual key, made by the proxy with the master key, as a gateway's users get theirs.
    memo["db_virtual"] = api.generate_key(base, memo["db_old"], models=VIRTUAL_MODELS, key_alias=VIRTUAL_ALIAS)
    assert seen(deployment, memo["db_virtual"]) == (200, VIRTUAL_MODELS)
    memo["db_declared"] = values[default_key_env(DECLARED_ALIAS)]
    assert seen(deployment, memo["db_declared"]) == (200, VIRTUAL_MODELS)
    assert seen(deployment, WRONG_KEY)[0] in api.REFUSED
    memo["db_virtual_row"], = token_row(db, memo["db_virtual"])
    memo["db_before"] = data_of(db)
    assert [r["token"] for r in master_rows(db)] == [hash_token(memo["db_old"])]


def test_9_db_rotation_stopped_after_the_database_stage(deployment, memo):
    """Acceptance 2 on a real host, stopped before the proxy's restart: backup 0600 and restorable
    with identical rows; old hash row gone, new hash linked, the proof's virtual key added, every
    other row (the virtual key made through the proxy among them) unchanged."""
    on_db(deployment)
    run = rotate(deployment, memo, stop="database", gateway=DB)
    assert run.returncode == interrupt.STOP_EXIT_CODE, run.output[-6000:]
    new = secrets_of(deployment)[S.MASTER_KEY_NEXT]
    memo["db_new"] = new
    found = re.search(r"Database backup before rotation: (\S+\.dump)", run.output)
    assert found, run.output[-4000:]
    path = found.group(1)
    assert path.startswith(f"{INSTALL}/backups/")
    assert deployment.ssh(DB, f"stat -c '%a %U' {shlex.quote(path)}").strip() == "600 root"
    assert deployment.ssh(DB, f"stat -c '%a' {INSTALL}/backups").strip() == "700"
    memo["db_backups"] = backups(deployment)
    assert path.rsplit("/", 1)[1] in memo["db_backups"]

    db = HostDb(deployment)
    assert master_rows(db) == [{"token": database.hash_key(new), "user_id": "admin"}]
    after = data_of(db)
    before = memo["db_before"]
    assert_rows_kept(before, after)
    # In that table: the old master row left, the new master row and the proof's virtual key came;
    # the seeded keys and the virtual key made through the proxy are all still there, unchanged.
    assert token_moves(before, after) == (1, 2)
    assert sum(after[TOKENS].values()) == sum(before[TOKENS].values()) + 1
    assert token_row(db, memo["db_virtual"]) == [memo["db_virtual_row"]]
    assert probe_rows(db) == [{"token": database.hash_key(sql.probe_key_for(new)), "user_id": None,
                               "models": [sql.PROBE_MODEL]}]
    # The proxy was not restarted: it still runs on the previous key, and the virtual key works.
    assert seen(deployment, memo["db_old"]) == (200, gateway_models(deployment))
    assert seen(deployment, memo["db_virtual"]) == (200, VIRTUAL_MODELS)

    # The backup restores into a scratch database with exactly the rows from before the rotation.
    admin = HostDb(deployment, "postgres")
    admin.psql("DROP DATABASE IF EXISTS rotation_scratch; CREATE DATABASE rotation_scratch;")
    restored = deployment.bed.ssh(
        deployment.name(DB),
        f"{COMPOSE} exec -T db pg_restore -U litellm -d rotation_scratch --no-owner < {shlex.quote(path)}")
    assert restored.ok, restored.output
    scratch_db = HostDb(deployment, "rotation_scratch")
    scratch = data_of(scratch_db)
    assert_rows_kept(before, scratch)
    assert scratch[TOKENS] == before[TOKENS]
    # The proxy's request accounting went on while the backup was taken: the backup holds every spend
    # log row from before the rotation, and none that the database does not hold now.
    assert not scratch[SPEND_LOGS] - after[SPEND_LOGS]
    counts = [{t: sum(rows.values()) for t, rows in data.items() if not accounting(t)} for data in (scratch, before)]
    assert counts[0] == counts[1]
    assert token_row(scratch_db, memo["db_virtual"]) == [memo["db_virtual_row"]]
    admin.psql("DROP DATABASE rotation_scratch;")

    # While the rotation is pending, restore.py refuses before any operation (issue 15): it would link
    # the restored database to the previous key. Nothing changes: secrets file, database, proxy.
    secrets_before = deployment.secrets.read_bytes()
    refused = deployment.pyinfra("restore.py", "--data", "restore_from=latest", limit=DB)
    memo["outputs"].append(refused.output)
    assert refused.returncode != 0, refused.output[-4000:]
    assert "a master-key rotation is pending" in refused.output
    assert "finish it with `pyinfra inventory rotate.py` before running restore.py" in refused.output
    assert "nothing was changed on any host" in refused.output
    assert deployment.secrets.read_bytes() == secrets_before
    assert master_rows(db) == [{"token": database.hash_key(new), "user_id": "admin"}]
    assert seen(deployment, memo["db_old"]) == (200, gateway_models(deployment))
    assert_no_key_in(memo, memo["db_old"], new, sql.probe_key_for(new), memo["db_virtual"])


def test_10_db_rerun_finishes_the_rotation_and_the_virtual_key_survives(deployment, memo):
    """Acceptance 1 and 4 on the DB-backed gateway: the re-run restarts the proxy on the pending key
    and proves it (new key accepted, old refused, a virtual key accepted); the secrets file then
    holds the new key. The virtual key made through the proxy before the rotation still works."""
    on_db(deployment)
    run = rotate(deployment, memo, gateway=DB)
    assert run.returncode == 0, run.output[-6000:]
    new, old = memo["db_new"], memo["db_old"]
    assert "with a virtual key made before the rotation" in run.output, run.output[-6000:]
    assert "now holds the new key" in run.output
    window = re.search(r"refusal window: ([0-9.]+) s", run.output)
    assert window and 0 <= float(window.group(1)) < 300, run.output[-4000:]
    # The database was backed up by the interrupted run, before any change: no second backup now.
    assert "Database backup before rotation" not in "".join(deployment.changed(run, DB))
    assert backups(deployment) == memo["db_backups"]

    assert seen(deployment, new) == (200, gateway_models(deployment))
    assert seen(deployment, old)[0] in api.REFUSED
    assert seen(deployment, WRONG_KEY)[0] in api.REFUSED
    assert seen(deployment, memo["db_virtual"]) == (200, VIRTUAL_MODELS)
    assert seen(deployment, memo["db_declared"]) == (200, VIRTUAL_MODELS)
    values = secrets_of(deployment)
    assert values[S.MASTER_KEY] == new and S.MASTER_KEY_NEXT not in values
    assert deployment.master_key() == new
    assert values[S.SALT_KEY] == memo["db_salt"] and holds(deployment, DB, S.SALT_KEY, memo["db_salt"])
    assert holds(deployment, DB, S.MASTER_KEY, new)

    db = HostDb(deployment)
    assert master_rows(db) == [{"token": database.hash_key(new), "user_id": "admin"}]
    # Only the master row differs from before the rotation: the old key's gone, the new key's came.
    memo["db_rotated"] = assert_only_the_master_row_moved(memo, memo["db_before"], db)
    assert workspace.KEYS_FILE not in deployment.ssh(DB, f"ls -A {INSTALL}/{workspace.WORKSPACE}").split()
    assert deployment.ssh(DB, "docker ps -q --filter name=rotation-poller").strip() == ""
    assert_no_key_in(memo, old, new, sql.probe_key_for(new), memo["db_virtual"], memo["db_declared"])


def test_11_db_proxy_that_cannot_start_on_the_new_key_is_rolled_back(deployment, memo):
    """Acceptance 5 on the DB-backed gateway: the proxy refuses to start on the new key (the same
    injected docker-compose.override.yml as on gw-stateless), so the run rolls the host back: the
    previous .env, the master-key link back on the previous key, the proxy proven on it; the virtual
    key still works, every other row is as it was; the run fails naming host and reason."""
    on_db(deployment)
    current = memo["db_new"]
    override = OVERRIDE.format(digest=hashlib.sha256(current.encode()).hexdigest())
    deployment.bed.ssh(deployment.name(DB), f"cat > {INSTALL}/docker-compose.override.yml", input=override.encode())
    run = rotate(deployment, memo, gateway=DB)
    assert run.returncode != 0, run.output[-4000:]
    values = secrets_of(deployment)
    pending = values[S.MASTER_KEY_NEXT]
    memo["db_failed"] = pending
    assert pending not in (current, memo["db_old"])
    host = deployment.name(DB)
    assert f"rotation FAILED on {host}: restarting the proxy on the new key failed" in run.output, run.output[-6000:]
    assert "rolled back: the proxy is healthy on the previous master key again" in run.output
    assert re.search(r"Database backup before rotation: \S+\.dump", run.output), run.output[-4000:]

    assert seen(deployment, current) == (200, gateway_models(deployment))
    assert seen(deployment, pending)[0] in api.REFUSED
    assert seen(deployment, memo["db_virtual"]) == (200, VIRTUAL_MODELS)
    assert holds(deployment, DB, S.MASTER_KEY, current)
    assert values[S.MASTER_KEY] == current and values[S.SALT_KEY] == memo["db_salt"]
    assert holds(deployment, DB, S.SALT_KEY, memo["db_salt"])

    db = HostDb(deployment)
    assert master_rows(db) == [{"token": database.hash_key(current), "user_id": "admin"}]
    # The master row was moved to the pending key and back (re-made); nothing else changed.
    assert_only_the_master_row_moved(memo, memo["db_rotated"], db)
    assert token_row(db, pending) == []
    assert_no_key_in(memo, memo["db_old"], current, pending, sql.probe_key_for(pending), memo["db_virtual"])


def test_12_db_after_the_cause_is_fixed_the_rerun_finishes_with_the_same_key(deployment, memo):
    """The override removed, the same command finishes the rotation with the pending key of the failed
    run (never a third key); the virtual key made before the first rotation still chats."""
    on_db(deployment)
    deployment.ssh(DB, f"rm -f {INSTALL}/docker-compose.override.yml")
    run = rotate(deployment, memo, gateway=DB)
    assert run.returncode == 0, run.output[-6000:]
    previous, new = memo["db_new"], memo["db_failed"]
    assert "with a virtual key made before the rotation" in run.output, run.output[-6000:]
    assert seen(deployment, new) == (200, gateway_models(deployment))
    assert seen(deployment, previous)[0] in api.REFUSED
    assert seen(deployment, memo["db_old"])[0] in api.REFUSED
    values = secrets_of(deployment)
    assert values[S.MASTER_KEY] == new and S.MASTER_KEY_NEXT not in values
    assert values[S.SALT_KEY] == memo["db_salt"] and holds(deployment, DB, S.SALT_KEY, memo["db_salt"])
    assert holds(deployment, DB, S.MASTER_KEY, new)

    db = HostDb(deployment)
    assert master_rows(db) == [{"token": database.hash_key(new), "user_id": "admin"}]
    assert_only_the_master_row_moved(memo, memo["db_rotated"], db)
    # Two rotations and a rollback later, the virtual key made before them all still works for real:
    # it sees its model, chats through it, and is refused the model it was not given.
    base = deployment.base_url(DB)
    assert seen(deployment, memo["db_virtual"]) == (200, VIRTUAL_MODELS)
    status_code, reply = api.chat(base, memo["db_virtual"], "chat-upstream")
    assert status_code == 200, reply
    assert reply["choices"][0]["message"]["content"]
    status_code, reply = api.chat(base, memo["db_virtual"], "chat-ollama")
    assert status_code in api.REFUSED, reply
    assert_no_key_in(memo, memo["db_old"], previous, new, sql.probe_key_for(new), memo["db_virtual"])
