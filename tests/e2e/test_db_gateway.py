"""gw-db (database_mode bundled, the package's default): the DB-backed gateway, converged twice.

Postgres healthy, migrations, bootstrap, the proxy healthy with its database connected, verified;
then the virtual-key workflow of the setup guide this package replaces, over HTTP from the
controller: make a key with the master key, use it, list, budget it, exhaust a budget, delete it.
Offline the proxy's Prisma engine is the test bed's stand-in (tests/testbed/images/litellm).
"""

import hashlib
import json
import re
import sys

import pytest
from dotenv import dotenv_values

from tests.e2e import gateway_http as api

HOST = "gw-db"
ADDED_MODEL = "chat-upstream-second"  # test_5 adds it; the main bed's gw-db serves it from then on
pytestmark = pytest.mark.e2e


def psql(deployment, sql: str) -> str:
    command = f"docker compose --project-directory /opt/litellm exec -T db psql -U litellm -d litellm -Atc {json.dumps(sql)}"
    return deployment.ssh(HOST, command).strip()


def db_container(deployment) -> tuple[str, str]:
    cid = deployment.ssh(HOST, "docker compose --project-directory /opt/litellm ps -q db").strip()
    started = deployment.ssh(HOST, f"docker inspect --format '{{{{.State.StartedAt}}}}' {cid}").strip()
    return cid, started


@pytest.fixture(scope="module")
def converged(deployment):
    first = deployment.pyinfra(limit=HOST)
    assert first.returncode == 0, first.output[-6000:]
    return first


@pytest.fixture(scope="module")
def gateway(deployment, converged):
    return deployment.base_url(HOST)


@pytest.fixture(scope="module")
def keys():
    return {}  # virtual keys made by earlier tests of this module, by name


def test_1_converges_and_verifies_the_database_path(converged):
    summary = converged.output[converged.output.index("verification summary"):]
    for check in ("gateway readiness", "gateway models", "gateway database: admin user admin and its master-key link"):
        assert re.search(rf"ok\s+{re.escape(check)}\s+from", summary), summary[:3000]


def test_1_postgres_schema_and_bootstrap_are_in_place(deployment, converged):
    migrations = int(psql(deployment, "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL"))
    assert migrations >= 200
    linked = psql(deployment, "SELECT token || '|' || user_id FROM \"LiteLLM_VerificationToken\" WHERE key_alias = 'master-key'")
    assert linked == hashlib.sha256(deployment.master_key().encode()).hexdigest() + "|admin"
    assert psql(deployment, "SELECT user_role FROM \"LiteLLM_UserTable\" WHERE user_id = 'admin'") == "proxy_admin"


def test_1_proxy_is_ready_with_its_database(gateway):
    readiness = api.wait_ready(gateway, timeout=30)
    assert readiness["status"] == "healthy" and readiness["db"] == "connected"


# What a no-op sends to a converged gateway (issue 35): the host state in one read (tasks/lib/fact_cache.py),
# then what is checked live: the bootstrap, then the verification (with the front's check and the keys' read,
# side by side). 75 before the one read (a TLS gateway with a declared key), 5 now; this gateway has neither.
NO_OP_COMMANDS = 5


def test_2_second_run_changes_nothing_and_sends_few_commands(deployment, converged):
    rows_before = psql(deployment, "SELECT md5(string_agg(t::text, ',' ORDER BY token)) FROM \"LiteLLM_VerificationToken\" t")
    second = deployment.pyinfra("deploy.py", "-vv", limit=HOST)  # -vv: every command it sends, printed
    assert second.returncode == 0, second.output[-4000:]
    assert deployment.changed(second, HOST) == [], "changed on the second run: " + ", ".join(
        deployment.changed(second, HOST))
    sent = [line for line in second.output.splitlines() if line.startswith(f"[{deployment.name(HOST)}] >>> ")]
    print(f"[e2e] a no-op sent {len(sent)} commands to {deployment.name(HOST)}", file=sys.stderr)
    assert len(sent) <= NO_OP_COMMANDS, "\n".join(line[:200] for line in sent)
    rows_after = psql(deployment, "SELECT md5(string_agg(t::text, ',' ORDER BY token)) FROM \"LiteLLM_VerificationToken\" t")
    assert rows_after == rows_before


def test_3_host_state(deployment, converged):
    assert deployment.ssh(HOST, "systemctl is-active docker; systemctl is-enabled docker").split() == ["active", "enabled"]
    modes = deployment.ssh(HOST, "stat -c '%n %a %U' /opt/litellm/.env /opt/litellm/docker-compose.yml "
                                 "/opt/litellm/litellm-config.yaml").splitlines()
    assert modes == ["/opt/litellm/.env 600 root", "/opt/litellm/docker-compose.yml 644 root",
                     "/opt/litellm/litellm-config.yaml 644 root"]
    for service in ("db", "litellm"):
        state = json.loads(deployment.ssh(HOST, f"docker compose --project-directory /opt/litellm ps --format json {service}"))
        assert (state["State"], state["Health"]) == ("running", "healthy"), service
    listening = deployment.ssh(HOST, "ss -Hltn").split("\n")
    assert not [line for line in listening if ":5432 " in line and "127.0.0.1:5432" not in line], listening


# --- the virtual-key workflow, over HTTP from the controller ---------------------------------------


def test_4_master_key_makes_a_virtual_key(deployment, gateway, keys):
    status, made = api.request(gateway, "POST", "/key/generate", key=deployment.master_key(),
                               body={"models": ["chat-upstream"], "key_alias": "e2e-team-key",
                                     "metadata": {"owner": "e2e", "purpose": "workflow"}})
    assert status == 200, made
    assert made["key"].startswith("sk-") and made["key_alias"] == "e2e-team-key"
    assert made["models"] == ["chat-upstream"] and made["metadata"] == {"owner": "e2e", "purpose": "workflow"}
    keys["team"] = made["key"]
    # What LiteLLM stored: the key's sha256, the metadata as a JSON object.
    row = psql(deployment, "SELECT key_alias || '|' || jsonb_typeof(metadata) || '|' || (metadata->>'owner') "
                           f"FROM \"LiteLLM_VerificationToken\" WHERE token = '{hashlib.sha256(made['key'].encode()).hexdigest()}'")
    assert row == "e2e-team-key|object|e2e"


def test_4_virtual_key_sees_its_models_and_chats(gateway, keys):
    assert api.models_seen(gateway, keys["team"]) == (200, ["chat-upstream"])
    status, reply = api.chat(gateway, keys["team"], "chat-upstream")
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"]
    # A model the key was not given is refused.
    status, reply = api.chat(gateway, keys["team"], "chat-ollama")
    assert status in api.REFUSED, reply


def test_4_key_list_shows_the_key(deployment, gateway, keys):
    status, listed = api.request(gateway, "GET", "/key/list?return_full_object=true&size=100", key=deployment.master_key())
    assert status == 200, listed
    aliases = {k.get("key_alias") for k in listed["keys"]}
    assert "e2e-team-key" in aliases, listed


def test_4_key_update_sets_a_budget(deployment, gateway, keys):
    status, updated = api.request(gateway, "POST", "/key/update", key=deployment.master_key(),
                                  body={"key": keys["team"], "max_budget": 10.0, "budget_duration": "30d"})
    assert status == 200, updated
    status, info = api.request(gateway, "GET", f"/key/info?key={keys['team']}", key=deployment.master_key())
    assert status == 200, info
    assert (info["info"]["max_budget"], info["info"]["budget_duration"]) == (10.0, "30d")
    assert info["info"]["budget_reset_at"]  # a 30-day budget has a reset date
    assert api.models_seen(gateway, keys["team"]) == (200, ["chat-upstream"])


def test_4_exhausted_budget_is_refused_with_litellms_budget_error(deployment, gateway):
    broke = api.generate_key(gateway, deployment.master_key(), models=["chat-upstream"], key_alias="e2e-broke",
                             max_budget=0.0)
    status, reply = api.chat(gateway, broke, "chat-upstream")
    # LiteLLM 1.108's BudgetExceededError: HTTP 422, type budget_exceeded, naming the key's alias.
    assert (status, reply["error"]["type"]) == (422, "budget_exceeded"), reply
    assert "Budget has been exceeded! Key=e2e-broke" in reply["error"]["message"], reply


def test_4_deleted_and_bogus_keys_are_refused(deployment, gateway):
    doomed = api.generate_key(gateway, deployment.master_key(), models=["chat-upstream"], key_alias="e2e-doomed")
    assert api.models_seen(gateway, doomed) == (200, ["chat-upstream"])
    status, deleted = api.request(gateway, "POST", "/key/delete", key=deployment.master_key(), body={"keys": [doomed]})
    assert status == 200, deleted
    status, _ = api.models_seen(gateway, doomed)
    assert status in api.REFUSED
    status, _ = api.models_seen(gateway, "sk-bogus-" + "0" * 32)
    assert status in api.REFUSED


def test_4_admin_ui_login(deployment, gateway):
    values = dotenv_values(deployment.secrets, interpolate=False)
    status, body = api.request(gateway, "POST", "/login", form={"username": "admin", "password": values["UI_PASSWORD"]})
    assert status in (200, 303), body
    status, body = api.request(gateway, "POST", "/login", form={"username": "admin", "password": "not-the-password"})
    assert status == 401, body


# --- changes, reboot ------------------------------------------------------------------------------


def test_5_model_change_recreates_the_proxy_but_not_postgres(deployment, gateway, keys):
    """A model added (and kept for the rest of the bed: undoing it would cost another proxy start)."""
    before = db_container(deployment)
    models = deployment.models()
    deployment.overrides.setdefault(HOST, {})["models"] = [*models, {**models[0], "name": ADDED_MODEL}]
    run = deployment.pyinfra(limit=HOST)
    assert run.returncode == 0, run.output[-4000:]
    assert any("LiteLLM proxy up and healthy" in op for op in deployment.changed(run, HOST))
    assert ADDED_MODEL in deployment.ssh(HOST, "cat /opt/litellm/litellm-config.yaml")
    assert db_container(deployment) == before
    status, served = deployment.call(HOST, "/v1/models")
    assert status == 200 and ADDED_MODEL in {m["id"] for m in served["data"]}, served
    # The key made before the change still works, for its own model only.
    assert api.models_seen(gateway, keys["team"]) == (200, ["chat-upstream"])


def test_6_reboot_brings_the_gateway_back_with_its_keys(deployment, gateway, keys):
    token_rows = psql(deployment, "SELECT md5(string_agg(t::text, ',' ORDER BY token)) FROM \"LiteLLM_VerificationToken\" t")
    deployment.bed.restart(deployment.name(HOST))
    api.wait_ready(gateway, timeout=180)
    assert psql(deployment, "SELECT md5(string_agg(t::text, ',' ORDER BY token)) FROM \"LiteLLM_VerificationToken\" t") == token_rows
    assert api.models_seen(gateway, keys["team"]) == (200, ["chat-upstream"])
