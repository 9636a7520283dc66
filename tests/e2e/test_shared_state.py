"""The db host on its own (issue 17): what only it shows, on the smallest topology that has one.
A DB-backed gateway on a db host's PostgreSQL, a plain bed host as an outsider. Real pyinfra over
real SSH, the bed's LiteLLM.

  - backup.py dumps the shared database on the db host (the virtual keys' table in it)
  - the db host's firewall comes back after a reboot: the outsider refused, the gateway let in

The full topology (three gateways, db and redis hosts, a load balancer: converge twice, keys and rpm
limits across gateways, what the outsider reaches, rolls, a failed gateway) is test_load_balancer.py.

Hosts (prefix "ss-"): ss-gw1 (litellm_hosts), ss-db (db_hosts), ss-out (a bed host in no group: it
only tries to connect), ss-up1 (a real LiteLLM upstream with a mock_response model).
"""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.conftest import IMAGES, UPSTREAM_MODEL, Deployment

PREFIX = "ss-"

PG_PROBE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest: any PostgreSQL answers one byte
print(s.recv(1).decode() or "closed")
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
        archives = self.bed.archives(("litellm", "postgres"))
        common = {"litellm_image": self.bed.litellm_image(), "postgres_image": self.bed.postgres_image(),
                  "models": self.models(), "verify_timeout": 120, "backup_local_dir": str(self.workdir / "backups")}
        data = {"*": common}
        if IMAGES == "local":  # each host gets the archives of the images it runs, no more
            common.update(image_source="archives", image_archives=[str(archives[i]) for i in ("litellm", "postgres")])
            data[self.name("db")] = {"image_archives": [str(archives["postgres"])]}
        names = [self.name(h) for h in ("gw1", "db")]
        text = self.bed.inventory_text(data, names=names)
        # The bed writes every host into litellm_hosts; the db host gets its own group.
        entry = re.search(rf"    \({self.name('db')!r}, \{{\n.*?\n    \}}\),\n", text, re.S)
        text = text.replace(entry.group(0), "") + f"\ndb_hosts = [\n{entry.group(0)}]\n"
        self.inventory.write_text(text)
        return self.inventory


@pytest.fixture(scope="module")
def shared(bed, tmp_path_factory):
    deployment = SharedState(bed, tmp_path_factory.mktemp("e2e-ss"), PREFIX, ("gw1", "db", "out", "up1"))
    deployment.up()
    first = deployment.pyinfra("deploy.py")
    assert first.returncode == 0, first.output[-6000:]
    yield deployment
    deployment.down()


def address(shared, host: str) -> str:
    return shared.bed.host(shared.name(host))["address"]


def probe(shared, source: str, script: str, target: str, port: int) -> str:
    result = shared.bed.ssh(shared.name(source), f"python3 - {address(shared, target)} {port}", input=script.encode())
    return result.output.strip().splitlines()[-1] if result.output.strip() else ""


def test_backup_py_dumps_the_shared_database_on_the_db_host(shared):
    deployment = shared
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
    deployment = shared
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
