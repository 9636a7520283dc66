"""An upgrade of the LiteLLM image that fails verification rolls back by itself (issue 7, 5 and 6),
on both gateways of the main bed.

The "newer release" is made on each gateway from the image it runs (tests/e2e/upgrade_probe.py):
one more migration and an outbound proxy that does not exist, so it starts and answers its health
checks, but verification fails.

On gw-db a virtual key is made through the proxy, and another declared as code, before the attempt;
after the rollback the proxy on the previous image accepts both again, with the data identical to
before the attempt.
"""

from __future__ import annotations

import json

import pytest

from tasks.config import secrets as S
from tasks.config.virtual_keys import default_key_env
from tests.e2e import database, upgrade_probe
from tests.e2e import gateway_http as api

pytestmark = pytest.mark.e2e
GATEWAYS = ("gw-stateless", "gw-db")
PROXY_OP = "LiteLLM proxy up and healthy"
DECLARED_ALIAS = "declared-before-the-upgrade"
def newer_image(deployment) -> str:
    return deployment.bed.litellm_image() + "-upgrade-probe"


def compose_images(deployment, host: str) -> set[str]:
    out = deployment.ssh(host, "grep -E '^ +image: ' /opt/litellm/docker-compose.yml")
    return {json.loads(line.split("image:", 1)[1].strip()) if '"' in line else line.split("image:", 1)[1].strip()
            for line in out.splitlines()}


def proxy_image(deployment, host: str) -> str:
    return deployment.ssh(host, "docker inspect --format '{{.Config.Image}}' "
                                "$(docker compose --project-directory /opt/litellm ps -aq litellm)").strip()


@pytest.fixture(scope="module")
def prepared(deployment):
    """Both gateways converged on the bed's image, gw-db seeded and a key declared as code, the newer
    image on both hosts."""
    deployment.overrides.setdefault("gw-db", {})["virtual_keys"] = [{"alias": DECLARED_ALIAS, "models": ["chat-upstream"]}]
    first = deployment.pyinfra()
    assert first.returncode == 0, first.output[-4000:]
    if database.psql(deployment, "gw-db", "SELECT count(*) FROM \"LiteLLM_TeamTable\" WHERE team_id = 'team-1';") == "0":
        database.psql(deployment, "gw-db", database.SEED)  # (kept hosts, TESTBED_KEEP=1: seeded already)
    virtual_key = api.generate_key(deployment.base_url("gw-db"), deployment.master_key(), models=["chat-upstream"],
                                   key_alias="made-before-the-upgrade")
    before = {"data": database.seeded_rows(deployment, "gw-db"), "virtual_key": virtual_key,
              "declared_key": S.read_secrets(deployment.secrets)[default_key_env(DECLARED_ALIAS)],
              "migrated": deployment.ssh("gw-db", "cat /opt/litellm/.state/migrated-image-id").strip()}
    old, new = deployment.bed.litellm_image(), newer_image(deployment)
    for host in GATEWAYS:
        upgrade_probe.build(deployment, host, old, new)
    return before, old, new


def deploy_with(deployment, hosts, limit=None, **data):
    for host in hosts:
        deployment.overrides.setdefault(host, {}).update(data)
    try:
        return deployment.pyinfra(limit=limit)
    finally:
        for host in hosts:
            for key in data:
                deployment.overrides[host].pop(key)


def test_4_failed_backup_stops_the_upgrade_before_any_change(deployment, prepared):
    """No backup, no upgrade: a backup directory that cannot be created (a file in its place)."""
    before, old, new = prepared
    deployment.ssh("gw-db", "touch /opt/litellm/not-a-directory")
    try:
        run = deploy_with(deployment, ["gw-db"], limit="gw-db", litellm_image=new,
                          backup_dir="/opt/litellm/not-a-directory")
    finally:
        deployment.ssh("gw-db", "rm -f /opt/litellm/not-a-directory")
    assert run.returncode != 0
    assert "upgrade not started: the backup before it failed" in run.output, run.output[-4000:]
    assert deployment.changed(run, "gw-db") == [], run.output[-4000:]
    assert compose_images(deployment, "gw-db") >= {old} and new not in compose_images(deployment, "gw-db")
    assert database.seeded_rows(deployment, "gw-db") == before["data"]


@pytest.fixture(scope="module")
def attempt(deployment, prepared):
    """One deploy run of both gateways to the newer tag. The newer proxy reaches no model, so its checks
    fail until verify_timeout: 30 s (as the fault tier's interrupted upgrade) rather than the suite's 120."""
    before, old, new = prepared
    return deploy_with(deployment, GATEWAYS, litellm_image=new, verify_timeout=upgrade_probe.FAILING_VERIFY_S), before, old, new


def test_5_failed_upgrade_rolls_back_to_the_previous_image(deployment, attempt):
    run, _, old, new = attempt
    assert run.returncode != 0, run.output[-4000:]
    for host in GATEWAYS:
        name = deployment.name(host)
        assert f"upgrade to {new} FAILED on {name}" in run.output, run.output[-6000:]
        assert compose_images(deployment, host) >= {old} and new not in compose_images(deployment, host)
        assert proxy_image(deployment, host) == old
    # gw-stateless: the new image started, failed verification (its container reaches no node),
    # and the previous image came back verified.
    stateless = deployment.name("gw-stateless")
    assert "reachable from the controller but NOT from the gateway's container" in run.output, run.output[-6000:]
    assert f"Rolled back to {old} (no database to restore); the gateway verified healthy" in run.output
    changed = deployment.changed(run, "gw-stateless")
    assert any(op.startswith("LiteLLM gateway | Rollback to the previous image") and PROXY_OP in op for op in changed), changed
    status, models = deployment.call("gw-stateless", "/v1/models")
    assert status == 200 and {m["id"] for m in models["data"]} == {"chat-upstream", "chat-ollama"}
    assert deployment.ssh("gw-stateless", "cat /opt/litellm/.state/verified-image").strip() == old, stateless


def test_5_rolled_back_database_is_identical_to_before_the_attempt(deployment, attempt):
    run, before, old, new = attempt
    changed = " ".join(deployment.changed(run, "gw-db"))
    for step in ("Proxy stopped, database backed up before the upgrade", "Database schema migrated",
                 "Database restored from the backup taken before the upgrade", f"Database schema migrated for {old}"):
        assert step in changed, (step, run.output[-6000:])
    assert database.seeded_rows(deployment, "gw-db") == before["data"]
    leftovers = database.psql(deployment, "gw-db", "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                              "'public' AND (table_name = 'LiteLLM_FromANewerImage' OR column_name = 'from_a_newer_image');")
    assert leftovers == "0"
    probe_rows = database.psql(deployment, "gw-db", "SELECT count(*) FROM _prisma_migrations WHERE migration_name = "
                               f"'{upgrade_probe.PROBE_MIGRATION}';")
    assert probe_rows == "0"
    assert deployment.ssh("gw-db", "cat /opt/litellm/.state/migrated-image-id").strip() == before["migrated"]
    dumps = deployment.ssh("gw-db", "stat -c '%a %n' /opt/litellm/backups/litellm-*-before-upgrade.dump").split()
    assert len(dumps) == 2 and dumps[0] == "600", dumps
    assert deployment.ssh("gw-db", "find /opt/litellm/backups -name '*.sql' | wc -l").strip() == "0"


def test_5_rolled_back_proxy_serves_the_keys_from_before(deployment, attempt):
    run, before, old, new = attempt
    assert f"Rolled back to {old}" in run.output and "the gateway verified healthy on the previous image again" in \
        run.output[run.output.index(f"upgrade to {new} FAILED on {deployment.name('gw-db')}"):], run.output[-6000:]
    base = deployment.base_url("gw-db")
    api.wait_ready(base, timeout=60)
    assert api.models_seen(base, before["virtual_key"]) == (200, ["chat-upstream"])
    assert api.models_seen(base, before["declared_key"]) == (200, ["chat-upstream"])
    assert api.models_seen(base, deployment.master_key())[0] == 200
    assert api.models_seen(base, "sk-bogus-" + "0" * 32)[0] in api.REFUSED


def test_6_redeploy_on_the_previous_tag_reports_no_change(deployment, attempt):
    again = deployment.pyinfra()
    assert again.returncode == 0, again.output[-4000:]
    for host in GATEWAYS:
        assert deployment.changed(again, host) == [], (host, again.output[-4000:])


PROJECT_FILES = ("/opt/litellm/.env", "/opt/litellm/docker-compose.yml", "/opt/litellm/litellm-config.yaml")


def containers(deployment, host: str) -> dict[str, str]:
    """service -> "container id, start time, image" of the project's containers."""
    out = deployment.ssh(host, "cd /opt/litellm && for s in $(docker compose ps -a --services); do echo \"$s "
                               "$(docker inspect --format '{{.Id}} {{.State.StartedAt}} {{.Config.Image}}' "
                               "$(docker compose ps -aq \"$s\"))\"; done")
    return dict(line.split(" ", 1) for line in out.strip().splitlines())


def untouched_state(deployment, host: str) -> dict:
    return {"containers": containers(deployment, host),
            "files": deployment.ssh(host, "sha256sum " + " ".join(PROJECT_FILES)),
            "before-upgrade backups": deployment.ssh(host, "ls /opt/litellm/backups | grep -- -before-upgrade || true"),
            "verified": deployment.ssh(host, "cat /opt/litellm/.state/verified-image")}


def test_7_a_tag_that_does_not_exist_fails_the_host_and_changes_nothing(deployment, prepared):
    """Issue 15, defect 3: a mistyped tag (the bed has no registry: a pull fails; with archives, none
    holds it) fails the host naming the image, before the proxy is stopped, a backup taken or a file
    written; the proxy goes on serving on the previous image, never restarted."""
    _, old, _ = prepared
    bad = old + "-no-such-release"
    before = untouched_state(deployment, "gw-db")
    assert before["containers"]["litellm"].endswith(" " + old), before
    run = deploy_with(deployment, ["gw-db"], limit="gw-db", litellm_image=bad)
    assert run.returncode != 0, run.output[-4000:]
    assert f"{bad} (litellm_image)" in run.output and "the running gateway was not touched" in run.output, \
        run.output[-4000:]
    assert "before the upgrade" not in run.output and f"upgrade to {bad} FAILED" not in run.output
    # Getting images (archives loaded again in search of the tag) is the only change.
    assert all("Container images" in op for op in deployment.changed(run, "gw-db")), deployment.changed(run, "gw-db")
    assert untouched_state(deployment, "gw-db") == before
    status, models = deployment.call("gw-db", "/v1/models")
    declared = deployment.overrides.get("gw-db", {}).get("models", deployment.models())
    assert status == 200 and {m["id"] for m in models["data"]} == {m["name"] for m in declared}, models
