"""State in its own engines (issue 17): two DB-backed gateways on one db host's PostgreSQL and one
redis host's Valkey, a plain bed host as an outsider. Real pyinfra over real SSH, the bed's LiteLLM.

Hosts (prefix "ss-"): ss-gw1, ss-gw2 (litellm_hosts), ss-db (db_hosts), ss-redis (redis_hosts),
ss-out (a bed host in no group: it only tries to connect), ss-up1 (a real LiteLLM upstream with a
mock_response model, so chat completions succeed and count against rate limits).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.e2e import gateway_http as api
from tests.e2e.conftest import IMAGES, UPSTREAM_MODEL, Deployment

PREFIX = "ss-"
GATEWAYS = ("gw1", "gw2")
RPM_LIMIT = 4
# With Redis LiteLLM's limiter counts in Redis (an atomic script per request): 4 of 12 seen accepted.
# Without it each gateway counts alone: 8 of 12 seen (coordination_redis and REDIS_* removed by hand
# on both gateways), so the bound below fails. Slack for a request racing a counter's window edge.
RPM_SLACK = 2

PG_PROBE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest: any PostgreSQL answers one byte
print(s.recv(1).decode() or "closed")
"""
REDIS_PROBE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"PING\r\n")
print(s.recv(64).decode().strip() or "closed")
"""


class SharedState(Deployment):
    def up(self) -> None:
        self.bed.build_images()
        self.bed.down(self.hosts)
        self.bed.up([self.name(h) + (":upstream" if h == "up1" else "") for h in self.standard_hosts],
                    upstream_models=[UPSTREAM_MODEL])
        self.secrets.write_text(f'UPSTREAM_LITELLM_API_KEY="{self.bed.upstream_key(self.name("up1"))}"\n')
        self.secrets.chmod(0o600)

    def models(self) -> list[dict]:
        upstream = self.bed.host(self.name("up1"))
        return [{"name": "chat-mock", "model": f"openai/{UPSTREAM_MODEL}", "api_base": upstream["api_base"],
                 "api_key_env": "UPSTREAM_LITELLM_API_KEY"}]

    def write_inventory(self):
        archives = self.bed.archives(("litellm", "postgres", "valkey"))
        common = {"litellm_image": self.bed.litellm_image(), "postgres_image": self.bed.postgres_image(),
                  "redis_image": self.bed.valkey_image(), "models": self.models(), "verify_timeout": 120,
                  "backup_local_dir": str(self.workdir / "backups")}
        data = {"*": common}
        if IMAGES == "local":  # each host gets the archives of the images it runs, no more
            common.update(image_source="archives", image_archives=[str(archives[i]) for i in ("litellm", "postgres")])
            data[self.name("db")] = {"image_archives": [str(archives["postgres"])]}
            data[self.name("redis")] = {"image_archives": [str(archives["valkey"])]}
        names = [self.name(h) for h in ("gw1", "gw2", "db", "redis")]
        text = self.bed.inventory_text(data, names=names)
        # The bed writes every host into litellm_hosts; the db and redis hosts get their own groups.
        groups = {}
        for group, host in (("db_hosts", "db"), ("redis_hosts", "redis")):
            entry = re.search(rf"    \({self.name(host)!r}, \{{\n.*?\n    \}}\),\n", text, re.S)
            text = text.replace(entry.group(0), "")
            groups[group] = entry.group(0)
        for group, entry in groups.items():
            text += f"\n{group} = [\n{entry}]\n"
        self.inventory.write_text(text)
        return self.inventory


@pytest.fixture(scope="module")
def shared(bed, tmp_path_factory):
    deployment = SharedState(bed, tmp_path_factory.mktemp("e2e-ss"), PREFIX, ("gw1", "gw2", "db", "redis", "out", "up1"))
    deployment.up()
    first = deployment.pyinfra("deploy.py", "-vvv")
    yield deployment, first
    deployment.down()


def address(shared, host: str) -> str:
    return shared.bed.host(shared.name(host))["address"]


def probe(shared, source: str, script: str, target: str, port: int) -> str:
    result = shared.bed.ssh(shared.name(source), f"python3 - {address(shared, target)} {port}", input=script.encode())
    return result.output.strip().splitlines()[-1] if result.output.strip() else ""


def test_fresh_converge_then_no_change_on_any_host(shared):
    deployment, first = shared
    assert first.returncode == 0, first.output[-6000:]
    second = deployment.pyinfra("deploy.py")
    assert second.returncode == 0, second.output[-6000:]
    for host in ("gw1", "gw2", "db", "redis"):
        assert deployment.changed(second, host) == [], (host, deployment.changed(second, host))


def test_no_secret_in_verbose_output(shared):
    deployment, first = shared
    values = json.loads(json.dumps(dict(
        line.split("=", 1) for line in deployment.secrets.read_text().splitlines() if "=" in line)))
    for name in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "LITELLM_MASTER_KEY", "LITELLM_SALT_KEY"):
        value = values[name].strip('"')
        assert len(value) >= 12 and value not in first.output, name


def test_a_key_made_on_gateway_1_works_on_gateway_2(shared):
    deployment, _ = shared
    status, key = deployment.call("gw1", "/key/generate", body={"models": ["chat-mock"]})
    assert status == 200, key
    deadline = time.monotonic() + 60
    while True:
        status, body = deployment.call("gw2", "/v1/models", key=key["key"])
        if status == 200 or time.monotonic() > deadline:
            break
    assert status == 200 and [m["id"] for m in body["data"]] == ["chat-mock"], body


def test_an_rpm_limit_holds_across_both_gateways(shared):
    deployment, _ = shared
    status, key = deployment.call("gw1", "/key/generate", body={"models": ["chat-mock"], "rpm_limit": RPM_LIMIT})
    assert status == 200, key
    accepted = 0
    started = time.monotonic()
    for attempt in range(RPM_LIMIT * 3):  # bounded: 12 requests, alternating gateways, within the minute
        status, body = api.chat(deployment.base_url(GATEWAYS[attempt % 2]), key["key"], "chat-mock")
        accepted += status == 200
        assert status in (200, 429), (status, body)
    elapsed = time.monotonic() - started
    print(f"rpm_limit {RPM_LIMIT}: {accepted} of {RPM_LIMIT * 3} accepted through two gateways in {elapsed:.1f} s")
    assert elapsed < 60, "the requests did not fit in one minute; the figure says nothing"
    assert accepted <= RPM_LIMIT + RPM_SLACK


def test_postgres_and_valkey_refuse_the_outsider_and_accept_the_gateways(shared):
    deployment, _ = shared
    assert probe(deployment, "gw1", PG_PROBE, "db", 5432) in ("N", "S")
    assert probe(deployment, "gw2", REDIS_PROBE, "redis", 6379).startswith("-NOAUTH")
    assert probe(deployment, "out", PG_PROBE, "db", 5432) not in ("N", "S")
    assert not probe(deployment, "out", REDIS_PROBE, "redis", 6379).startswith(("-NOAUTH", "+PONG"))


def test_backup_py_dumps_the_shared_database_on_the_db_host(shared):
    deployment, _ = shared
    run = deployment.pyinfra("backup.py")
    assert run.returncode == 0, run.output[-6000:]
    dumps = sorted((deployment.workdir / "backups" / deployment.name("db")).glob("*.dump"))
    assert dumps and dumps[-1].read_bytes()[:5] == b"PGDMP", dumps
    # The virtual keys live there: the dump holds LiteLLM's key table.
    listing = deployment.ssh("db", f"docker run --rm -i --entrypoint pg_restore {deployment.bed.postgres_image()} --list "
                                   f"< /opt/litellm/backups/{dumps[-1].name}")
    assert "LiteLLM_VerificationToken" in listing


def test_the_firewall_comes_back_after_a_reboot(shared):
    """A reboot of the db host (fresh netfilter tables): the unit ordered after docker.service puts the
    rules back, the outsider is refused again and the gateways get in."""
    deployment, _ = shared
    before = address(deployment, "db")
    deployment.bed.restart(deployment.name("db"))
    assert address(deployment, "db") == before, "the bed gave the db host another address; the test says nothing"
    deadline = time.monotonic() + 180
    while "-j DROP" not in deployment.ssh("db", "iptables -w -S LD-litellm-db 2>/dev/null || true"):
        assert time.monotonic() < deadline, "the firewall unit did not re-apply the rules within 180 s of the reboot"
        time.sleep(1)
    deadline = time.monotonic() + 180
    while probe(deployment, "gw1", PG_PROBE, "db", 5432) not in ("N", "S"):  # Postgres back (restart policy)
        assert time.monotonic() < deadline, "PostgreSQL did not come back within 180 s of the reboot"
        time.sleep(1)
    assert probe(deployment, "out", PG_PROBE, "db", 5432) not in ("N", "S")
