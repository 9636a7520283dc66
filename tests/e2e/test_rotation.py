"""Master-key rotation on the test bed: `pyinfra INVENTORY rotate.py`, real hosts, real SSH.

Own hosts (rot-gw-stateless, rot-gw-db, rot-ollama1, rot-up1), so this suite runs beside others.
Each gateway gets its own inventory (the gateway, the Ollama node, the upstream) and its own
secrets file: the controller records the new key as LITELLM_MASTER_KEY only when every gateway of
the inventory has it, and offline rot-gw-db cannot run its DB-backed proxy (no Prisma engines,
FIELD-NOTES.md), so an inventory holding both could never finish a rotation here.

Interruptions use the documented hook LITELLM_DEPLOY_TEST_STOP_AFTER=<stage>: the run ends there
with exit code 75 and no clean-up, as a kill would leave it. Tests run in file order (-x).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import pytest

from tasks import database
from tasks import rotate as R
from tasks import secrets as S
from tasks.filters import dotenv_quote
from tests.e2e.conftest import IMAGES, make_deployment

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
    deployment = make_deployment(bed, tmp_path_factory, prefix="rot-")
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
    saved = os.environ.pop(R.STOP_ENV, None)
    if stop:
        os.environ[R.STOP_ENV] = stop
    try:
        run = deployment.pyinfra("rotate.py", "-vv", *args, limit=gateway)
    finally:
        os.environ.pop(R.STOP_ENV, None)
        if saved is not None:
            os.environ[R.STOP_ENV] = saved
    memo["outputs"].append(run.output)
    # Kept for reading after a failure (the suite's temporary directory, never printed).
    (deployment.workdir / f"rotate-{len(memo['outputs'])}-{gateway}.log").write_text(run.output)
    return run


def env_line_hash(deployment, gateway: str, name: str) -> str:
    """sha256 of the host .env's NAME= line (the value itself never enters this process's output)."""
    line = deployment.ssh(gateway, f"grep -m1 '^{name}=' {INSTALL}/.env").strip()
    return hashlib.sha256(line.encode()).hexdigest()


def holds(deployment, gateway: str, name: str, value: str) -> bool:
    return env_line_hash(deployment, gateway, name) == R.env_line_hash(name, value)


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
    run = rotate(deployment, memo, stop="pending", gateway=STATELESS)
    assert run.returncode == R.STOP_EXIT_CODE, run.output[-4000:]
    values = secrets_of(deployment)
    pending = values[S.MASTER_KEY_NEXT]
    assert values[S.MASTER_KEY] == memo["old"] and pending != memo["old"]
    assert holds(deployment, STATELESS, S.MASTER_KEY, memo["old"])
    assert status(deployment, STATELESS, memo["old"]) == 200
    assert status(deployment, STATELESS, pending) in R.REFUSED
    memo["new"] = pending

    again = rotate(deployment, memo, stop="pending", gateway=STATELESS)
    assert again.returncode == R.STOP_EXIT_CODE, again.output[-4000:]
    assert secrets_of(deployment)[S.MASTER_KEY_NEXT] == pending, "a re-run must never make a third key"
    assert "taken from LITELLM_MASTER_KEY_NEXT" in again.output
    assert_no_key_in(memo, memo["old"], memo["new"])


def test_3_killed_after_env_written_before_restart(deployment, memo):
    on(deployment, STATELESS)
    run = rotate(deployment, memo, stop="env", gateway=STATELESS)
    assert run.returncode == R.STOP_EXIT_CODE, run.output[-4000:]
    assert holds(deployment, STATELESS, S.MASTER_KEY, memo["new"]), ".env should hold the pending key"
    # The proxy was not restarted: it still runs on the previous key.
    assert status(deployment, STATELESS, memo["old"]) == 200
    assert status(deployment, STATELESS, memo["new"]) in R.REFUSED
    values = secrets_of(deployment)
    assert values[S.MASTER_KEY] == memo["old"] and values[S.MASTER_KEY_NEXT] == memo["new"]


def test_4_rerun_finishes_the_same_rotation(deployment, memo):
    """Acceptance 1 and 4: the same pending key ends up on the host and in the secrets file."""
    on(deployment, STATELESS)
    run = rotate(deployment, memo, gateway=STATELESS)
    assert run.returncode == 0, run.output[-6000:]
    assert status(deployment, STATELESS, memo["new"]) == 200
    assert status(deployment, STATELESS, memo["old"]) in R.REFUSED
    assert status(deployment, STATELESS, WRONG_KEY) in R.REFUSED
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
    assert R.KEYS_FILE not in deployment.ssh(STATELESS, f"ls -A {INSTALL}/{R.WORKSPACE}").split()
    assert deployment.ssh(STATELESS, "docker ps -q --filter name=rotation-poller").strip() == ""


def test_5_gateway_verifies_and_the_salt_still_decrypts(deployment, memo):
    """Acceptance 3 on the host: LiteLLM's helper inside the rotated proxy container (its own
    LITELLM_SALT_KEY) decrypts what was encrypted with the salt key before the rotation."""
    on(deployment, STATELESS)
    verify = deployment.pyinfra("verify.py", limit=STATELESS)
    assert verify.returncode == 0, verify.output[-4000:]
    script = ("import sys; from litellm.proxy.common_utils.encrypt_decrypt_utils import decrypt_value_helper; "
              "print(repr(decrypt_value_helper(sys.argv[1], 'e2e')))")
    out = deployment.ssh(STATELESS, f"{COMPOSE} exec -T litellm python3 -c {shlex.quote(script)} "
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
    assert status(deployment, STATELESS, pending) in R.REFUSED
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
    assert status(deployment, STATELESS, memo["new"]) in R.REFUSED
    values = secrets_of(deployment)
    assert values[S.MASTER_KEY] == memo["failed"] and S.MASTER_KEY_NEXT not in values
    assert values[S.SALT_KEY] == memo["salt"]
    assert_no_key_in(memo, memo["old"], memo["new"], memo["failed"])


# --- gw-db (offline: converged up to the proxy stage; the DB-backed proxy needs official images) ----


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
    return db.json("""SELECT coalesce(json_agg(json_build_object('token', token, 'user_id', user_id)
                       ORDER BY token), '[]') FROM "LiteLLM_VerificationToken" WHERE key_alias = 'master-key';""")


def test_8_db_gateway_converges_to_the_proxy_stage(deployment, memo):
    from litellm.proxy.auth.auth_utils import abbreviate_api_key
    from litellm.proxy.utils import hash_token

    from tests.integration.litellm_data import seed, snapshot

    on(deployment, DB)
    deployment.overrides[DB] = {"verify_timeout": 60, "start_timeout": 60}
    run = deployment.pyinfra(limit=DB)
    if IMAGES == "official":
        assert run.returncode == 0, run.output[-4000:]
    else:
        assert any("master-key link" in op for op in deployment.changed(run, DB)), run.output[-4000:]
    values = secrets_of(deployment)
    memo["db_old"], memo["db_salt"] = values[S.MASTER_KEY], values[S.SALT_KEY]
    db = HostDb(deployment)
    seed(db, hash_token, abbreviate_api_key, keys=20, users=3, teams=2)
    memo["db_before"] = snapshot(db)
    assert [r["token"] for r in master_rows(db)] == [hash_token(memo["db_old"])]


def test_9_db_rotation_stopped_after_the_database_stage(deployment, memo):
    """Acceptance 2 on a real host, up to the proxy stage: backup 0600 and restorable with identical
    rows; old hash row gone, new hash linked, every other row unchanged."""
    from tests.integration.litellm_data import snapshot

    on(deployment, DB)
    run = rotate(deployment, memo, stop="database", gateway=DB)
    assert run.returncode == R.STOP_EXIT_CODE, run.output[-6000:]
    new = secrets_of(deployment)[S.MASTER_KEY_NEXT]
    memo["db_new"] = new
    found = re.search(r"Database backup before rotation: (\S+\.dump)", run.output)
    assert found, run.output[-4000:]
    path = found.group(1)
    assert path.startswith(f"{INSTALL}/backups/")
    assert deployment.ssh(DB, f"stat -c '%a %U' {shlex.quote(path)}").strip() == "600 root"
    assert deployment.ssh(DB, f"stat -c '%a' {INSTALL}/backups").strip() == "700"

    db = HostDb(deployment)
    assert master_rows(db) == [{"token": database.hash_key(new), "user_id": "admin"}]
    after = snapshot(db)
    before = dict(memo["db_before"])
    tokens_before, tokens_after = before.pop("LiteLLM_VerificationToken"), after.pop("LiteLLM_VerificationToken")
    assert after == before, "a row outside LiteLLM_VerificationToken changed"
    # In that table: the old master row left, the new master row and the proof's virtual key came.
    assert sum((tokens_before - tokens_after).values()) == 1
    assert sum((tokens_after - tokens_before).values()) == 2
    probe = db.json(f"""SELECT json_agg(json_build_object('token', token, 'user_id', user_id, 'models', models))
                         FROM "LiteLLM_VerificationToken" WHERE key_alias = '{R.PROBE_ALIAS}';""")
    assert probe == [{"token": database.hash_key(R.probe_key_for(new)), "user_id": None, "models": [R.PROBE_MODEL]}]

    # The backup restores into a scratch database with exactly the rows from before the rotation.
    admin = HostDb(deployment, "postgres")
    admin.psql("DROP DATABASE IF EXISTS rotation_scratch; CREATE DATABASE rotation_scratch;")
    restored = deployment.bed.ssh(
        deployment.name(DB),
        f"{COMPOSE} exec -T db pg_restore -U litellm -d rotation_scratch --no-owner < {shlex.quote(path)}")
    assert restored.ok, restored.output
    scratch = snapshot(HostDb(deployment, "rotation_scratch"))
    assert scratch == memo["db_before"]
    assert {t: sum(c.values()) for t, c in scratch.items()} == {t: sum(c.values()) for t, c in memo["db_before"].items()}
    assert_no_key_in(memo, memo["db_old"], new, R.probe_key_for(new))


def test_10_db_rotation_completes_or_rolls_back(deployment, memo):
    """With official images the DB-backed proxy runs: the rotation completes and proves itself.
    Offline it cannot start (no Prisma engines), which is exactly an injected failure: the run
    rolls .env and the database link back to the previous key and fails naming host and reason."""
    on(deployment, DB)
    deployment.overrides[DB] = {"verify_timeout": 60, "start_timeout": 60}
    run = rotate(deployment, memo, gateway=DB)
    db = HostDb(deployment)
    new, old = memo["db_new"], memo["db_old"]
    values = secrets_of(deployment)
    if IMAGES == "official":
        assert run.returncode == 0, run.output[-6000:]
        assert status(deployment, DB, new) == 200 and status(deployment, DB, old) in R.REFUSED
        assert values[S.MASTER_KEY] == new and S.MASTER_KEY_NEXT not in values
        assert master_rows(db) == [{"token": database.hash_key(new), "user_id": "admin"}]
    else:
        assert run.returncode != 0
        assert f"rotation FAILED on {deployment.name(DB)}: restarting the proxy on the new key failed" in run.output, \
            run.output[-6000:]
        assert holds(deployment, DB, S.MASTER_KEY, old)
        assert master_rows(db) == [{"token": database.hash_key(old), "user_id": "admin"}]
        assert values[S.MASTER_KEY] == old and values[S.MASTER_KEY_NEXT] == new
    assert values[S.SALT_KEY] == memo["db_salt"] and holds(deployment, DB, S.SALT_KEY, memo["db_salt"])
    # The proof's virtual key is gone again; every other row is as before the rotation.
    from tests.integration.litellm_data import snapshot

    after, before = snapshot(db), dict(memo["db_before"])
    tokens_before, tokens_after = before.pop("LiteLLM_VerificationToken"), after.pop("LiteLLM_VerificationToken")
    assert after == before
    # Only the master row differs: gone for the new key's, or re-made for the previous key's.
    assert sum((tokens_before - tokens_after).values()) == 1
    assert sum((tokens_after - tokens_before).values()) == 1
    assert_no_key_in(memo, old, new, R.probe_key_for(new))
