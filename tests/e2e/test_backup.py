"""Backup, restore and reprovision of a bundled gateway on the test bed (issue 7), on own hosts (bk-*).

The gateway runs for real here (offline its Prisma query engine is the test bed's stand-in,
tests/testbed/images/litellm): every deploy, backup and restore must succeed, and a second deploy
changes nothing. What is proven, in order: backups are private, checksummed on both sides and pruned;
a corrupt or truncated backup is refused with the database and the running proxy untouched; a lost
host is reprovisioned (a new host with none of its state, deploy.py, restore.py restore_from=latest) and afterwards
the proxy accepts the virtual key made through it before the backup, and refuses the one made after
the backup; the systemd timer backs up and prunes; verify.py names the newest backup on both sides.
"""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest

from tasks.config import secrets as S
from tasks.config.virtual_keys import default_key_env
from tasks.lib.compose import PROXY_SERVICE
from tests.e2e import database
from tests.e2e import gateway_http as api
from tests.e2e.conftest import make_deployment

pytestmark = pytest.mark.e2e
HOST = "gw-db"
KEEP = 2
UNIT = "litellm-backup-litellm"  # the backup units carry the compose project (default "litellm")
MODELS = ["chat-upstream"]  # what the virtual keys of this suite may use
DECLARED_ALIAS = "bk-declared"

def token_rows(deployment, key: str) -> str:
    """key_alias of the stored row(s) of a virtual key (its sha256), empty when it is not stored."""
    token = hashlib.sha256(key.encode()).hexdigest()
    return database.psql(deployment, HOST, f"SELECT key_alias FROM \"LiteLLM_VerificationToken\" WHERE token = '{token}';")


def host_dumps(deployment) -> list[str]:
    out = deployment.ssh(HOST, "ls -1 /opt/litellm/backups | grep -E '^[0-9]{8}T[0-9]{6}Z.dump$' || true")
    return sorted(out.split())


def local_dir(deployment) -> Path:
    return deployment.workdir / "backups" / deployment.name(HOST)


def local_dumps(deployment) -> list[Path]:
    return sorted(local_dir(deployment).glob("*.dump"))


def proxy_container(deployment) -> tuple[str, str]:
    """(container id, start time) of the proxy: a restart or recreation changes it."""
    cid = deployment.ssh(HOST, f"docker compose --project-directory /opt/litellm ps -q {PROXY_SERVICE}").strip()
    assert cid, "no proxy container"
    started = deployment.ssh(HOST, f"docker inspect --format '{{{{.State.StartedAt}}}}' {cid}").strip()
    return cid, started


def succeeded(run, what: str):
    assert run.returncode == 0, f"{what} failed:\n{run.output[-6000:]}"
    return run


def deploy(deployment):
    return succeeded(deployment.pyinfra(limit=HOST), "deploy.py")


def backup(deployment):
    return succeeded(deployment.pyinfra("backup.py", limit=HOST), "backup.py")


@pytest.fixture(scope="module")
def deployment(bed, tmp_path_factory):
    deployment = make_deployment(bed, tmp_path_factory, prefix="bk-", hosts=(HOST, "ollama1", "up1"),
                                 provisioned=(HOST,))
    deployment.overrides[HOST] = {"backup_local_dir": str(deployment.workdir / "backups"), "backup_keep": KEEP,
                                  # A key declared as code, converged by every deploy.py: restored like the rest.
                                  "virtual_keys": [{"alias": DECLARED_ALIAS, "models": MODELS, "max_budget": 20}]}
    yield deployment
    deployment.down()


@pytest.fixture(scope="module")
def keys():
    return {}  # virtual keys made through the proxy by this module, by name


@pytest.fixture(scope="module")
def seeded(deployment, keys):
    """The gateway deployed and ready, rows seeded, and a real virtual key made through the proxy —
    all before the first backup. Returns the seeded rows."""
    converge = deploy(deployment)
    assert "Database schema migrated" in " ".join(deployment.changed(converge, HOST)), converge.output[-3000:]
    gateway = deployment.base_url(HOST)
    api.wait_ready(gateway, timeout=60)
    database.psql(deployment, HOST, database.SEED)
    keys["before"] = api.generate_key(gateway, deployment.master_key(), models=MODELS, key_alias="bk-before-backup",
                                      metadata={"made": "before the backup"})
    assert api.models_seen(gateway, keys["before"]) == (200, MODELS)
    rows = database.seeded_rows(deployment, HOST)
    assert all(value.startswith("50|") for value in rows.values()), rows
    return rows


def test_1_backup_private_verified_and_pruned(deployment, seeded):
    for _ in range(KEEP + 1):
        backup(deployment)
    dumps = local_dumps(deployment)
    assert len(dumps) == KEEP and host_dumps(deployment) == [p.name for p in dumps]
    assert stat.S_IMODE(local_dir(deployment).stat().st_mode) == 0o700
    for dump in dumps:
        assert stat.S_IMODE(dump.stat().st_mode) == 0o600
        recorded = Path(f"{dump}.sha256").read_text().split()[0]
        assert hashlib.sha256(dump.read_bytes()).hexdigest() == recorded
        on_host = deployment.ssh(HOST, f"cat /opt/litellm/backups/{dump.name}.sha256").split()[0]
        assert on_host == recorded
    modes = deployment.ssh(HOST, "stat -c '%a' /opt/litellm/backups /opt/litellm/backups/*.dump*").split()
    assert modes[0] == "700" and set(modes[1:]) == {"600"}
    # Backing up never stops the gateway: the proxy still answers with its database.
    api.wait_ready(deployment.base_url(HOST), timeout=30)


def test_2_corrupt_or_truncated_backup_refused_database_and_proxy_untouched(deployment, seeded, keys, tmp_path):
    proxy_before = proxy_container(deployment)
    latest = local_dumps(deployment)[-1]
    data = latest.read_bytes()
    corrupt = tmp_path / "corrupt.dump"
    corrupt.write_bytes(data[:-64] + bytes([data[-64] ^ 0xFF]) + data[-63:])
    Path(f"{corrupt}.sha256").write_text(Path(f"{latest}.sha256").read_text())
    run = deployment.pyinfra("restore.py", "--data", f"restore_from={corrupt}", limit=HOST)
    assert run.returncode != 0 and "checksum mismatch" in run.output and "restore refused" in run.output, run.output[-3000:]
    assert deployment.changed(run, HOST) == []
    # Truncated with a matching checksum: refused by pg_restore (controller's, or the database's on the host).
    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(data[: len(data) // 2])
    Path(f"{truncated}.sha256").write_text(f"{hashlib.sha256(truncated.read_bytes()).hexdigest()}  truncated.dump\n")
    run = deployment.pyinfra("restore.py", "--data", f"restore_from={truncated}", limit=HOST)
    assert run.returncode != 0 and "restore refused" in run.output, run.output[-3000:]
    assert not any("stopped" in op or "restored" in op for op in deployment.changed(run, HOST)), run.output[-3000:]
    assert database.seeded_rows(deployment, HOST) == seeded
    # The proxy was never stopped and still serves the key.
    assert proxy_container(deployment) == proxy_before
    assert api.models_seen(deployment.base_url(HOST), keys["before"]) == (200, MODELS)


def test_3_reprovision_deploy_then_restore_latest(deployment, seeded, keys):
    # A key made after the last backup: it works now, and the restore must not bring it back.
    gateway = deployment.base_url(HOST)
    keys["after"] = api.generate_key(gateway, deployment.master_key(), models=MODELS, key_alias="bk-after-backup")
    assert api.models_seen(gateway, keys["after"]) == (200, MODELS)
    secrets_before = deployment.secrets.read_bytes()
    # The host is lost; a new one takes its inventory name, with no state of the deployment: no .env, no
    # container, no database volume. It boots provisioned: the install is not what a restore is about (the
    # main bed's gw-db goes through it), and a bare host costs the bed's 2 cores about 2 minutes of CPU.
    name = deployment.name(HOST)
    deployment.bed.down([name])
    deployment.bed.up([name], provisioned=(name,))
    assert deployment.ssh(HOST, "test -e /opt/litellm/.env && echo yes || echo no").strip() == "no"
    assert deployment.ssh(HOST, "docker ps -aq | wc -l; docker volume ls -q | wc -l").split() == ["0", "0"]
    deploy(deployment)
    gateway = deployment.base_url(HOST)
    api.wait_ready(gateway, timeout=60)
    # A fresh database: neither key is known yet.
    assert api.models_seen(gateway, keys["before"])[0] in api.REFUSED
    run = succeeded(deployment.pyinfra("restore.py", "--data", "restore_from=latest", limit=HOST), "restore.py")
    changed = " ".join(deployment.changed(run, HOST))
    for step in ("checksum verified", "LiteLLM proxy stopped for the restore", "Database restored from the backup",
                 "Migration marker cleared", "Database schema migrated", "LiteLLM proxy up and healthy"):
        assert step in changed, (step, run.output[-4000:])
    # What it replaced was dumped first, where the run says, root-only.
    safety = re.search(r"after a safety dump of the current one to (/opt/litellm/backups/litellm-\S+-before-restore"
                       r"\.dump)", changed)
    assert safety, run.output[-4000:]
    assert deployment.ssh(HOST, f"stat -c %a {safety.group(1)} {safety.group(1)}.sha256").split() == ["600", "600"]
    summary = run.output[run.output.index("verification summary"):]
    for check in ("gateway readiness", "gateway models", "gateway database: admin user admin and its master-key link"):
        assert re.search(rf"ok\s+{re.escape(check)}\s+from", summary), summary[:3000]
    assert database.seeded_rows(deployment, HOST) == seeded
    assert deployment.secrets.read_bytes() == secrets_before
    linked = database.psql(deployment, HOST, "SELECT token || '|' || user_id FROM \"LiteLLM_VerificationToken\" WHERE key_alias = 'master-key';")
    assert linked == hashlib.sha256(deployment.master_key().encode()).hexdigest() + "|admin"
    assert token_rows(deployment, keys["before"]) == "bk-before-backup"
    assert token_rows(deployment, keys["after"]) == ""


def test_3_restored_proxy_serves_the_keys_of_the_backup_only(deployment, seeded, keys):
    gateway = deployment.base_url(HOST)
    readiness = api.wait_ready(gateway, timeout=60)
    assert readiness["status"] == "healthy" and readiness["db"] == "connected"
    # The key made before the backup: accepted with its models, as LiteLLM stored it, and it chats.
    assert api.models_seen(gateway, keys["before"]) == (200, MODELS)
    status, info = api.request(gateway, "GET", f"/key/info?key={keys['before']}", key=deployment.master_key())
    assert status == 200, info
    assert info["info"]["key_alias"] == "bk-before-backup" and info["info"]["models"] == MODELS, info
    assert info["info"]["metadata"] == {"made": "before the backup"}, info
    status, reply = api.chat(gateway, keys["before"], "chat-upstream")
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"], reply
    # The key made after the backup is gone with the lost host.
    status, body = api.models_seen(gateway, keys["after"])
    assert status in api.REFUSED, body
    status, body = api.chat(gateway, keys["after"], "chat-upstream")
    assert status in api.REFUSED, body
    # The declared key: its value from the secrets file, its settings from the backup.
    declared = S.read_secrets(deployment.secrets)[default_key_env(DECLARED_ALIAS)]
    assert api.models_seen(gateway, declared) == (200, MODELS)
    # The master key is the same one, linked again by the restore's bootstrap.
    status, _ = api.models_seen(gateway, deployment.master_key())
    assert status == 200


def test_4_timer_active_and_a_forced_run_backs_up_and_prunes(deployment, seeded, keys):
    # The reprovisioned, restored host is converged: a deploy now changes nothing at all.
    again = deploy(deployment)
    assert deployment.changed(again, HOST) == [], "changed: " + ", ".join(deployment.changed(again, HOST))
    assert deployment.ssh(HOST, f"systemctl is-active {UNIT}.timer; systemctl is-enabled {UNIT}.timer"
                          ).split() == ["active", "enabled"]
    # Enough backups on the host that the forced run must prune.
    for _ in range(KEEP):
        backup(deployment)
    before = host_dumps(deployment)
    assert len(before) == KEEP
    deployment.ssh(HOST, f"systemctl start {UNIT}.service")  # oneshot: returns when done
    assert deployment.ssh(HOST, f"systemctl show -p Result --value {UNIT}.service").strip() == "success"
    after = host_dumps(deployment)
    assert len(after) == KEEP and after[-1] not in before and after[-1] > before[-1]
    assert deployment.ssh(HOST, f"stat -c %a /opt/litellm/backups/{after[-1]}").strip() == "600"
    # The verify summary names the newest backup and its age, on the host and on the controller.
    verified = succeeded(deployment.pyinfra("verify.py", limit=HOST), "verify.py")
    assert deployment.changed(verified, HOST) == []
    assert re.search(rf"newest backup on the host \(/opt/litellm/backups\): {re.escape(after[-1])}, \d+ min old",
                     verified.output), verified.output[-3000:]
    assert f"newest backup on the controller ({local_dir(deployment)}): {local_dumps(deployment)[-1].name}," \
        in verified.output
    # Still serving the restored key after all of it.
    assert api.models_seen(deployment.base_url(HOST), keys["before"]) == (200, MODELS)
