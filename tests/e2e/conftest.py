"""The end-to-end bed: fresh hosts each run, real pyinfra over real SSH, converged twice.

Hosts: gateways gw-db (bundled Postgres, the DB-backed proxy) and gw-stateless (no database), Ollama
stand-in node ollama1 (the gateways' data, never a pyinfra host), upstream LiteLLM up1. gw-db is a bare
host, through the whole fresh install; gw-stateless boots provisioned (tests/testbed/provision.py): the
install it would repeat is the same one, and a bare host costs the bed's 2 cores about 2 minutes of CPU. Offline the
images are the test bed's own (the LiteLLM one runs DB-backed through its query-engine stand-in);
TESTBED_IMAGES=official uses the official images on a machine that can pull them. Every test runs with
either.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
IMAGES = os.environ.get("TESTBED_IMAGES", "local")
GATEWAYS = ["gw-db", "gw-stateless"]
ALL_HOSTS = GATEWAYS + ["ollama1", "up1"]
OLLAMA_MODEL = "llama3.2:1b"
UPSTREAM_MODEL = "upstream-mock"
# What the bed's Docker engine printed when runc could not start an exec process (a run is then made again).
BED_RUNC_FLAKE = "OCI runtime exec failed: exec failed: unable to start container process"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


CALL = r"""
import json, sys, urllib.request, urllib.error
path, key, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if key == "master":
    lines = open("/opt/litellm/.env").read().splitlines()
    key = [l.split("=", 1)[1].strip('"') for l in lines if l.startswith("LITELLM_MASTER_KEY=")][0]
data = json.dumps(body).encode() if body is not None else None
req = urllib.request.Request("http://127.0.0.1:4000" + path, data=data,
                             headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
try:
    r = urllib.request.urlopen(req, timeout=60)
    print(json.dumps([r.status, json.loads(r.read())]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


@dataclass
class Run:
    returncode: int
    output: str

    def changed(self, host: str) -> list[str]:
        """Operations that reported a change on `host` (pyinfra prints '[host] Success')."""
        changed, current = [], None
        for line in self.output.splitlines():
            started = re.match(r"--> Starting operation: (.*?)\s*$", line)
            if started:
                current = started.group(1)
            elif current and re.fullmatch(rf"\[{re.escape(host)}\]\s+Success", line.strip()):
                changed.append(current)
        return changed


class Deployment:
    """The bed plus an inventory, a secrets file and group-data overrides for it."""

    # One proxy worker: the suites share 2 CPUs, and each worker's start costs seconds of CPU. The
    # shipped "auto" (tasks/config/sizing.py) runs in the demo suite and in the benchmarks (None: not set).
    proxy_workers: int | None = 1
    # Hosts booted with Docker and the images in place (tests/testbed/provision.py), by standard name: for
    # the suites whose subject is not the install or the image transfer; the fresh path's keep bare hosts.
    provisioned: tuple[str, ...] = ()

    def __init__(self, bed, workdir: Path, prefix: str = "", hosts: tuple[str, ...] = tuple(ALL_HOSTS)):
        self.bed = bed
        self.workdir = workdir
        # A prefix gives a suite its own hosts (gw-db -> rot-gw-db), so suites can run side by side.
        self.prefix = prefix
        self.standard_hosts = hosts  # which of the standard hosts this suite has
        self.secrets = workdir / "secrets.env"
        self.inventory = workdir / "inventory.py"
        self.overrides: dict[str, dict] = {}

    def name(self, host: str) -> str:
        """The bed's name of one of the standard hosts: gw-db, gw-stateless, ollama1, up1."""
        return self.prefix + host

    @property
    def hosts(self) -> list[str]:
        return [self.name(h) for h in self.standard_hosts]

    def up(self) -> None:
        roles = {"ollama1": ":ollama", "up1": ":upstream"}
        self.bed.build_images()  # every image the suite needs, the independent ones built at once
        self.bed.down(self.hosts)
        self.bed.up([self.name(h) + roles.get(h, "") for h in self.standard_hosts],
                    ollama_models=[OLLAMA_MODEL], upstream_models=[UPSTREAM_MODEL],
                    provisioned=tuple(self.name(h) for h in self.provisioned))
        key = self.bed.upstream_key(self.name("up1")) if "up1" in self.standard_hosts else None
        self.secrets.write_text(f'UPSTREAM_LITELLM_API_KEY="{key}"\n' if key else "")
        self.secrets.chmod(0o600)

    def down(self) -> None:
        """The suite's teardown: its hosts are killed now and removed while the next suite runs."""
        if not os.environ.get("TESTBED_KEEP"):
            self.bed.down(self.hosts, background=True)

    def models(self) -> list[dict]:
        models = []
        if "up1" in self.standard_hosts:
            upstream = self.bed.host(self.name("up1"))
            models.append({"name": "chat-upstream", "model": f"openai/{UPSTREAM_MODEL}",
                           "api_base": upstream["api_base"], "api_key_env": "UPSTREAM_LITELLM_API_KEY"})
        if "ollama1" in self.standard_hosts:  # a node the bed declares as the gateways' data (ollama_nodes)
            models.append({"name": "chat-ollama", "model": f"ollama_chat/{OLLAMA_MODEL}",
                           "ollama_node": self.name("ollama1")})
        return models

    def common_data(self) -> dict:
        """The group data every host of the suite gets."""
        common = {
            "litellm_image": self.bed.litellm_image(),
            "postgres_image": self.bed.postgres_image(),
            "models": self.models(),
            "verify_timeout": 120,
        }
        if self.proxy_workers is not None:
            common["proxy_workers"] = self.proxy_workers
        return common

    def write_inventory(self) -> Path:
        archives = self.bed.archives()
        common = self.common_data()
        if IMAGES == "local":
            common.update(image_source="archives", image_archives=[str(archives["litellm"]), str(archives["postgres"])])
        modes = {"gw-db": "bundled", "gw-stateless": "none"}
        data = {"*": common, **{self.name(h): {"database_mode": modes[h]} for h in self.standard_hosts if h in modes}}
        for name, extra in self.overrides.items():
            data.setdefault(self.name(name), {}).update(extra)
        self.inventory.write_text(self.bed.inventory_text(data, names=self.hosts))
        return self.inventory

    def pyinfra(self, script: str = "deploy.py", *args: str, limit: str | None = None, timeout: int = 1500,
                inventory_as_written: bool = False) -> Run:
        """inventory_as_written: run on the inventory the last run wrote (a host stopped since has no
        address on the bed to write it again with)."""
        if not inventory_as_written:
            self.write_inventory()
        command, env = self.command(script, *args, limit=limit)
        started = time.monotonic()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0 and BED_RUNC_FLAKE in result.stdout + result.stderr:
            # The bed's nested engine (runc in a container in a container) once failed to start a
            # `docker compose exec` under load, before anything ran inside. That is the bed, not the
            # package: its runs are re-runnable by design, so the run is made once more, said loudly.
            print(f"\n[e2e] {script} on {self.prefix or 'main'}: the bed's engine failed to start an exec "
                  f"({BED_RUNC_FLAKE}); running it once more", file=sys.stderr)
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        # Read by the suite table (tests/suite_budget.py PYINFRA_RUN).
        print(f"[e2e] pyinfra {script} ran {time.monotonic() - started:.1f}s", file=sys.stderr)
        return Run(result.returncode, result.stdout + result.stderr)

    def command(self, script: str, *args: str, limit: str | None = None) -> tuple[list[str], dict[str, str]]:
        """The pyinfra command line for the inventory as written, and its environment."""
        command = [PYINFRA, str(self.inventory), script, "-y", *args]
        if limit:
            command += ["--limit", self.name(limit)]
        return command, {**os.environ, "LITELLM_DEPLOY_SECRETS": str(self.secrets)}

    def call(self, host: str, path: str, key: str = "master", body: dict | None = None):
        """HTTP from the gateway host itself to its published port: (status, parsed body).
        key "master" reads the master key from the host's .env, so it never leaves the host."""
        args = " ".join(shlex.quote(a) for a in (path, key, json.dumps(body)))
        result = self.bed.ssh(self.name(host), f"python3 - {args}", input=CALL.encode())
        assert result.ok, result.output
        status, payload = json.loads(result.output.strip().splitlines()[-1])
        return status, payload

    def base_url(self, host: str) -> str:
        """The gateway's published proxy port, as the controller reaches it."""
        return f"http://{self.bed.host(self.name(host))['address']}:4000"

    def master_key(self) -> str:
        return dotenv_values(self.secrets, interpolate=False)["LITELLM_MASTER_KEY"]

    def changed(self, run: Run, host: str) -> list[str]:
        return run.changed(self.name(host))

    def ssh(self, host: str, command: str) -> str:
        result = self.bed.ssh(self.name(host), command)
        assert result.ok, f"{host}: {command}\n{result.output}"
        return result.output


@pytest.fixture(scope="session")
def bed():
    from tests.testbed import Testbed

    testbed = Testbed(images=IMAGES)
    yield testbed
    testbed.settle()  # the hosts suites left to be removed in the background


def make_deployment(bed, tmp_path_factory, prefix: str = "",
                    hosts: tuple[str, ...] = tuple(ALL_HOSTS), provisioned: tuple[str, ...] = ()) -> Deployment:
    """Fresh hosts for one suite (`hosts`: which of the standard ones, all by default; `provisioned`: the
    ones booted with Docker and the images, see Deployment.provisioned); tear them down with deployment.down()."""
    deployment = Deployment(bed, tmp_path_factory.mktemp(f"e2e-{prefix or 'main'}"), prefix, hosts)
    deployment.provisioned = provisioned
    deployment.up()
    return deployment


@pytest.fixture(scope="session")
def deployment(bed, tmp_path_factory):
    deployment = make_deployment(bed, tmp_path_factory, provisioned=("gw-stateless",))
    yield deployment
    deployment.down()
