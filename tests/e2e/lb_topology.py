"""The load-balanced topology of issue 17 on the test bed, for the lb suite (tests/e2e/test_load_balancer.py)
and the bench's rolled change: three gateways (litellm_hosts) on one db host's PostgreSQL (db_hosts)
and one redis host's Valkey (redis_hosts), their model routed to the bed's upstream LiteLLM ("up1"),
one load balancer (lb_hosts, tls self-signed). Other standard hosts a suite names (an outsider) are
plain bed hosts in no group."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tasks.config import certificates
from tests.e2e.conftest import IMAGES, UPSTREAM_MODEL, Deployment

GATEWAYS = ("gw1", "gw2", "gw3")
LB = "lb1"
STATE = ("db", "redis")
DEPLOYED = (*GATEWAYS, *STATE, LB)
GROUPS = {"db": "db_hosts", "redis": "redis_hosts", LB: "lb_hosts"}


class LbDeployment(Deployment):
    """The whole topology in one inventory; the outsider and the upstream in no group."""

    provisioned = DEPLOYED  # the outsider only connects: a bare host

    def up(self) -> None:
        self.bed.build_images()
        self.bed.down(self.hosts)
        self.bed.up([self.name(h) + (":upstream" if h == "up1" else "") for h in self.standard_hosts],
                    upstream_models=[UPSTREAM_MODEL], provisioned=tuple(self.name(h) for h in self.provisioned))
        self.secrets.write_text(f'UPSTREAM_LITELLM_API_KEY="{self.bed.upstream_key(self.name("up1"))}"\n')
        self.secrets.chmod(0o600)

    def write_inventory(self) -> Path:
        archives = self.bed.archives(("litellm", "postgres", "valkey", "caddy"))
        common = {**self.common_data(), "redis_image": self.bed.valkey_image(), "tls_image": self.bed.caddy_image(),
                  "backup_enabled": False, "backup_local_dir": str(self.workdir / "backups")}
        data = {"*": common, self.name(LB): {"tls": "self-signed"}}
        if IMAGES == "local":  # each host gets the archives of the images it runs, no more
            common.update(image_source="archives", image_archives=[str(archives[i]) for i in ("litellm", "postgres")])
            for host, image in (("db", "postgres"), ("redis", "valkey"), (LB, "caddy")):
                data.setdefault(self.name(host), {})["image_archives"] = [str(archives[image])]
        for name, extra in self.overrides.items():
            data.setdefault(self.name(name), {}).update(extra)
        text = self.bed.inventory_text(data, names=[self.name(h) for h in DEPLOYED])
        # The bed writes every host into litellm_hosts; the db, redis and lb hosts get their own groups.
        for host, group in GROUPS.items():
            entry = re.search(rf"    \({self.name(host)!r}, \{{\n.*?\n    \}}\),\n", text, re.S)
            text = text.replace(entry.group(0), "") + f"\n{group} = [\n{entry.group(0)}]\n"
        self.inventory.write_text(text)
        return self.inventory

    def address(self, host: str) -> str:
        return self.bed.host(self.name(host))["address"]

    @property
    def lb_url(self) -> str:
        return f"https://{self.address(LB)}"

    @property
    def ca(self) -> Path:
        """The deployment CA, made by the first deploy beside the secrets file."""
        return certificates.tls_dir(self.secrets) / certificates.CA_CERT

    def run_on(self, host: str, script: str, *args: str) -> str:
        """A python3 script on a bed host; its last output line."""
        result = self.bed.ssh(self.name(host), "python3 - " + " ".join(shlex.quote(a) for a in args),
                              input=script.encode())
        lines = result.output.strip().splitlines()
        return lines[-1] if lines else ""
