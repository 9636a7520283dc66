"""No secret escapes: every runbook, in every output mode, on the DB-backed gateway, then every place a
value could end up is searched for every secret the secrets file held during the runs.

Hosts (prefix "lk-"): lk-gw-db (bundled Postgres, a declared virtual key) and lk-up1 (the bed's
upstream LiteLLM; also the other host the exposure scan probes from). Each runbook runs twice, at -vvv
with --diff and --debug: with --dry, then for real. While a real run goes, `ps -eo args` is sampled on
the gateway host and on the controller. Then a key made by hand is imported by value while the proxy
resets exactly one request of the key converge, its lookup (keys.py fails), and imported by the same
run again. The secrets: the master key (also the one before rotation), salt key, Postgres and UI
passwords, upstream key, the declared and the imported virtual keys (tests/faults/leaks.py).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pytest

from tasks.config import secrets as S
from tests.e2e import gateway_http as api
from tests.e2e.conftest import ROOT, make_deployment
from tests.faults import leaks

pytestmark = pytest.mark.e2e

PREFIX = "lk-"
HOST = "gw-db"
OTHER = "up1"
RUNBOOKS = (
    ("deploy.py",),
    ("keys.py",),
    ("verify.py",),
    ("backup.py",),
    ("restore.py", "--data", "restore_from=latest"),
    ("rotate.py",),
)
VERBOSE = ("-vvv", "--diff", "--debug")
PUBLISHED_PORTS = {4000}  # proxy_port, published by the compose file
HOST_PORTS = {22}  # the host's own sshd, how pyinfra reaches it (not the deploy's)
PORT_SCAN = r"""
import socket, sys
host, found = sys.argv[1], []
for port in range(1, 65536):
    s = socket.socket()
    s.settimeout(0.5)
    if s.connect_ex((host, port)) == 0:
        found.append(port)
    s.close()
print(" ".join(map(str, found)))
"""
# LiteLLM's schema check at proxy start (litellm/proxy/db/check_migration.py): the prisma CLI, and the
# node process it runs, with DATABASE_URL in their arguments.
LITELLM_SCHEMA_CHECK = "migrate diff --from-url"
# Controller directories not searched: the virtualenv, git's objects, and the test bed's own state
# (its SSH key and its copy of the upstream key: the bed's key files).
CONTROLLER_SKIPPED = (".venv", ".git", ".testbed")
IMPORTED, IMPORTED_ENV = "imported", "VIRTUAL_KEY_IMPORTED"
# The key converge's lookup of an imported key (tasks/remote/key_agent.read_key): the one request reset.
RESET_REQUEST = "GET /key/info"


@pytest.fixture(scope="module")
def deployment(bed, tmp_path_factory):
    deployment = make_deployment(bed, tmp_path_factory, prefix=PREFIX, hosts=(HOST, OTHER))
    deployment.overrides[HOST] = {
        "virtual_keys": [{"alias": "scan", "models": "all", "max_budget": 5}],
        "backup_local_dir": str(deployment.workdir / "backups"),
    }
    yield deployment
    deployment.down()


@pytest.fixture(scope="module")
def scanned(deployment):
    """Every runbook with --dry, then for real, sampled; what each printed, and what ps showed."""
    secrets = leaks.Secrets(deployment.secrets)
    outputs, host_ps, controller_ps = {}, [], []
    for runbook in RUNBOOKS:
        dry = deployment.pyinfra(*runbook, *VERBOSE, "--dry", limit=HOST)
        assert dry.returncode == 0, f"{runbook[0]} --dry:\n{dry.output[-6000:]}"
        outputs[f"{runbook[0]} --dry"] = dry.output
        with leaks.HostSampler(deployment.bed, deployment.name(HOST)) as on_host, leaks.ControllerSampler() as here:
            run = deployment.pyinfra(*runbook, *VERBOSE, limit=HOST)
        assert run.returncode == 0, f"{runbook[0]}:\n{run.output[-6000:]}"
        outputs[runbook[0]] = run.output
        host_ps.append(on_host.samples)
        controller_ps += here.samples
        secrets.refresh()
    imported = import_with_one_request_reset(deployment, secrets, outputs, host_ps, controller_ps)
    assert len(secrets.names) >= 7, "fewer secrets than the gateway has: the scan would say little"
    return {"secrets": secrets, "outputs": outputs, "host_ps": host_ps, "controller_ps": controller_ps,
            "imported": imported}


def import_with_one_request_reset(deployment, secrets, outputs, host_ps, controller_ps) -> dict:
    """A key made by hand (no alias), its value put in the secrets file and declared: the converge
    looks it up by its hash (GET /key/info), and that one request is reset in transit. Then the same
    run again, nothing reset: the key is adopted."""
    value = api.generate_key(deployment.base_url(HOST), deployment.master_key())
    S.append_secrets(deployment.secrets, {IMPORTED_ENV: value}, {IMPORTED_ENV: "made by hand, imported"})
    secrets.refresh()
    deployment.overrides[HOST]["virtual_keys"].append({"alias": IMPORTED, "models": "all"})
    with leaks.OneRequestReset(deployment.bed, deployment.name(HOST), RESET_REQUEST) as reset, \
            leaks.HostSampler(deployment.bed, deployment.name(HOST)) as on_host, leaks.ControllerSampler() as here:
        cut = deployment.pyinfra("keys.py", *VERBOSE, limit=HOST)
    host_ps.append(on_host.samples)
    controller_ps += here.samples
    again = deployment.pyinfra("keys.py", *VERBOSE, limit=HOST)
    outputs["keys.py, one request reset"], outputs["keys.py, again"] = cut.output, again.output
    return {"reset": reset.count, "cut": cut, "again": again, "hash": hashlib.sha256(value.encode()).hexdigest()}


def test_1_no_secret_in_any_runbooks_output(scanned):
    secrets = scanned["secrets"]
    found = {run: lines for run, output in scanned["outputs"].items() if (lines := secrets.lines_holding(output))}
    assert found == {}, f"secrets in pyinfra's output: {found}"


def test_2_no_secret_in_process_arguments_on_the_host_or_the_controller(scanned):
    """The proxy's start included: LiteLLM's schema check runs `prisma migrate diff --from-url $DATABASE_URL`,
    and a bundled gateway's DATABASE_URL names Postgres' socket, with no password (tasks/lib/render.py)."""
    secrets = scanned["secrets"]
    host_ps = "".join(scanned["host_ps"])
    assert all(scanned["host_ps"]) and scanned["controller_ps"], "the samplers saw nothing"
    assert LITELLM_SCHEMA_CHECK in host_ps, "the host sampler never saw the proxy's schema check: it proves little"
    assert secrets.lines_holding(host_ps, limit=100) == [], "secrets in processes' arguments on the host"
    assert secrets.lines_holding("".join(scanned["controller_ps"])) == [], "secrets in processes' arguments here"


def test_3_no_secret_in_docker_inspect_but_the_containers_environment(deployment, scanned):
    inspected = leaks.inspect_without_env(deployment.bed, deployment.name(HOST))
    assert scanned["secrets"].lines_holding(inspected) == []


def test_4_on_the_host_only_env_and_key_files_hold_secrets_and_only_root_reads_them(deployment, scanned):
    found = leaks.host_files_holding(deployment.bed, deployment.name(HOST), scanned["secrets"])
    assert "/opt/litellm/.env" in found, "the scan did not find the .env: it would find nothing"
    unexpected = {p: n for p, n in found.items() if not any(Path(p).match(a) for a in leaks.HOST_ALLOWED)}
    assert unexpected == {}, f"files on the host holding secrets: {unexpected}"
    assert leaks.readable_by_others(deployment.bed, deployment.name(HOST), list(found)) == []


def test_5_on_the_controller_only_the_secrets_file_holds_secrets_and_it_is_private(deployment, scanned):
    roots = [ROOT, Path(tempfile.gettempdir())]
    found = leaks.controller_files_holding(roots, scanned["secrets"], CONTROLLER_SKIPPED)
    assert str(deployment.secrets) in found, "the scan did not find the secrets file: it would find nothing"
    assert set(found) == {str(deployment.secrets)}, f"files here holding secrets: {found}"
    assert deployment.secrets.stat().st_mode & 0o077 == 0


def test_6_from_another_bed_host_only_the_published_port_answers(deployment, scanned):
    address = deployment.bed.host(deployment.name(HOST))["address"]
    result = deployment.bed.exec(deployment.name(OTHER), ["python3", "-c", PORT_SCAN, address])
    assert result.ok, result.output
    open_ports = {int(p) for p in result.output.split()}
    assert open_ports == PUBLISHED_PORTS | HOST_PORTS, f"ports answering on the gateway host: {sorted(open_ports)}"


def test_7_a_request_reset_in_the_key_converge_fails_the_run_and_shows_no_key(scanned):
    """The outputs, process lists and files of both runs are searched by tests 1 to 5; here, that the
    reset happened once, failed the run with the request named, and that not even the hash shows."""
    imported = scanned["imported"]
    assert imported["reset"] == 1
    assert imported["cut"].returncode != 0
    assert "GET /key/info: no answer from the proxy" in imported["cut"].output, imported["cut"].output[-6000:]
    assert imported["again"].returncode == 0, imported["again"].output[-6000:]
    assert f"key {IMPORTED}: adopted (was without alias)" in imported["again"].output
    assert not [run for run, output in scanned["outputs"].items() if imported["hash"] in output]
