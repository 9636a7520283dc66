"""tls-*: one bundled gateway behind its TLS front, and another bed host as a client from outside.

Issue 17, acceptance 6 (a single-host user turns tls on: the seed's workflow, a virtual key and a chat,
over HTTPS) and the single-host lines of 5 (the proxy's port unreachable from outside except through
the front, plain HTTP redirected, a client checking the certificate against the issued CA succeeds
and one checking another name fails). The client is tls-gw-stateless, a plain bed host nothing is
deployed to: its requests cross the bed's network like a user's.
"""

from __future__ import annotations

import json
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from tasks.config import certificates
from tasks.config import secrets as S
from tasks.config.virtual_keys import default_key_env
from tests.e2e.conftest import IMAGES, ROOT, make_deployment
from tests.e2e.gateway_http import CLIENT_SCRIPT

pytestmark = pytest.mark.e2e
PREFIX = "tls-"
HOST = "gw-db"
CLIENT = "gw-stateless"  # a plain bed host: the outside client, never deployed to
MODEL = "chat-ollama"
# A key declared as code: its value lives in the secrets file and the host's virtual-keys.json only.
DECLARED_KEY = {"alias": "tls-client", "models": [MODEL]}
# What a run from a controller without the deployment's state must leave byte for byte.
HOST_STATE = ("/opt/litellm/.env", "/opt/litellm/tls/cert.pem", "/opt/litellm/tls/key.pem",
              "/opt/litellm/virtual-keys.json")



@pytest.fixture(scope="module")
def tls_deployment(bed, tmp_path_factory):
    deployment = make_deployment(bed, tmp_path_factory, prefix=PREFIX, hosts=(HOST, CLIENT, "ollama1"),
                                 provisioned=(HOST,))
    tls_data = {"tls": "self-signed", "tls_image": bed.caddy_image(), "database_mode": "bundled",
                "virtual_keys": [DECLARED_KEY]}
    if IMAGES == "local":
        archives = bed.archives(("litellm", "postgres", "caddy"))
        tls_data["image_archives"] = [str(archives[k]) for k in ("litellm", "postgres", "caddy")]
    deployment.overrides[HOST] = tls_data
    yield deployment
    deployment.down()


@pytest.fixture(scope="module")
def converged(tls_deployment):
    # --dry first: the plan names the certificates it would make, and nothing is written on the controller.
    dry = tls_deployment.pyinfra("deploy.py", "--dry", limit=HOST)
    assert dry.returncode == 0, dry.output[-6000:]
    assert not tls_dir(tls_deployment).exists(), "--dry wrote the deployment CA"
    # -vvv: every command and fact output is printed, so a key that reached them would show below.
    first = tls_deployment.pyinfra("deploy.py", "-vvv", limit=HOST)
    assert first.returncode == 0, first.output[-8000:]
    return first


def tls_dir(deployment) -> Path:
    return certificates.tls_dir(deployment.secrets)


def gateway_address(deployment) -> str:
    return deployment.bed.host(deployment.name(HOST))["address"]


def from_client(deployment, scheme: str, port: int, path: str, name: str | None = None, ca: bool = True,
                key: str | None = None, body: dict | None = None, method: str = "GET") -> dict:
    """One request from the client host to the gateway's address, checking the certificate for `name`
    (default: the gateway's address, which the deployment's certificate holds)."""
    address = gateway_address(deployment)
    spec = {"scheme": scheme, "address": address, "port": port, "path": path, "name": name or address,
            "ca": (tls_dir(deployment) / "ca.crt").read_text() if ca else None, "key": key, "body": body,
            "method": method}
    result = deployment.bed.ssh(deployment.name(CLIENT), f"python3 -c {shlex.quote(CLIENT_SCRIPT)} "
                                                        f"{shlex.quote(json.dumps(spec))}")
    assert result.ok, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_1_deploys_with_the_front_verified_from_the_host(tls_deployment, converged):
    summary = converged.output[converged.output.index("verification summary"):]
    assert re.search(r"ok\s+HTTPS front, certificate checked against the deployment CA\s+from the gateway host", summary), \
        summary[:3000]
    assert re.search(r"ok\s+plain HTTP redirects to HTTPS\s+from the gateway host", summary), summary[:3000]


def test_1_the_deployment_ca_and_leaf_are_kept_on_the_controller(tls_deployment, converged):
    kept = tls_dir(tls_deployment)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o700
    leaf = tls_deployment.name(HOST)
    for name, mode in (("ca.key", 0o600), ("ca.crt", 0o644), (f"{leaf}.key", 0o600), (f"{leaf}.crt", 0o644)):
        assert stat.S_IMODE((kept / name).stat().st_mode) == mode, name
    cert = certificates.load_chain((kept / f"{leaf}.crt").read_bytes())[0]
    assert set(certificates.san_names(cert)) == {leaf, gateway_address(tls_deployment)}
    assert certificates.issued_by(cert, certificates.load_chain((kept / "ca.crt").read_bytes())[0])


def test_1_no_key_material_in_the_output(tls_deployment, converged):
    kept = tls_dir(tls_deployment)
    for name in ("ca.key", f"{tls_deployment.name(HOST)}.key"):
        body = [line for line in (kept / name).read_text().splitlines() if not line.startswith("-----")]
        for line in body:
            assert line not in converged.output, f"a line of {name} is in the -vvv output"
    assert "PRIVATE KEY" not in converged.output


def test_1_key_on_the_host_is_root_only(tls_deployment, converged):
    modes = tls_deployment.ssh(HOST, "stat -c '%n %a %U' /opt/litellm/tls /opt/litellm/tls/key.pem "
                                     "/opt/litellm/tls/cert.pem").splitlines()
    assert modes == ["/opt/litellm/tls 700 root", "/opt/litellm/tls/key.pem 600 root",
                     "/opt/litellm/tls/cert.pem 644 root"]
    # The proxy's own port on loopback only, the front's on every interface.
    listening = tls_deployment.ssh(HOST, "ss -Hltn").splitlines()
    assert [line for line in listening if re.search(r"\s127\.0\.0\.1:4000\s", line)], listening
    assert not [line for line in listening if re.search(r"\s(0\.0\.0\.0|\*|\[::\]):4000\s", line)], listening


# --- from outside: the client host ------------------------------------------------------------------


def test_2_https_with_the_issued_ca_makes_a_virtual_key_and_chats(tls_deployment, converged):
    """Acceptance 6: the seed's workflow over HTTPS, the certificate checked against the deployment CA."""
    made = from_client(tls_deployment, "https", 443, "/key/generate", key=tls_deployment.master_key(),
                       body={"models": [MODEL], "key_alias": "tls-e2e"}, method="POST")
    assert made["status"] == 200, made
    virtual_key = made["body"]["key"]
    seen = from_client(tls_deployment, "https", 443, "/v1/models", key=virtual_key)
    assert seen["status"] == 200 and [m["id"] for m in seen["body"]["data"]] == [MODEL], seen
    reply = from_client(tls_deployment, "https", 443, "/chat/completions", key=virtual_key, method="POST",
                        body={"model": MODEL, "messages": [{"role": "user", "content": "hello"}]})
    assert reply["status"] == 200, reply
    assert reply["body"]["choices"][0]["message"]["content"]
    # By its inventory name too (the certificate's first name; the client resolves nothing, it connects
    # to the address and checks that name).
    named = from_client(tls_deployment, "https", 443, "/health/liveliness", name=tls_deployment.name(HOST))
    assert named["status"] == 200, named


def test_2_a_client_checking_another_name_is_refused(tls_deployment, converged):
    wrong = from_client(tls_deployment, "https", 443, "/health/liveliness", name="not-the-gateway.example")
    assert wrong["status"] == 0 and "certificate" in wrong["error"] and "mismatch" in wrong["error"].lower(), wrong
    # And one that trusts only the system's CAs does not trust the deployment's own.
    untrusted = from_client(tls_deployment, "https", 443, "/health/liveliness", ca=False)
    assert untrusted["status"] == 0 and "certificate" in untrusted["error"], untrusted


def test_2_plain_http_gets_only_a_redirect(tls_deployment, converged):
    address = gateway_address(tls_deployment)
    for method in ("GET", "POST"):
        answer = from_client(tls_deployment, "http", 80, "/v1/models?x=1", method=method,
                             body={} if method == "POST" else None)
        assert answer["status"] == 308, answer
        assert answer["location"] == f"https://{address}/v1/models?x=1", answer


def test_2_the_proxy_port_is_not_reachable_from_outside(tls_deployment, converged):
    direct = from_client(tls_deployment, "http", 4000, "/health/liveliness")
    assert direct["status"] == 0 and "ConnectionRefused" in direct["error"], direct
    # On the host itself it still answers (host-local tools, the in-host checks).
    status, _ = tls_deployment.call(HOST, "/health/liveliness")
    assert status == 200


# --- idempotence ------------------------------------------------------------------------------------


def test_3_second_run_changes_nothing(tls_deployment, converged):
    kept = {p.name: p.read_bytes() for p in tls_dir(tls_deployment).iterdir() if p.is_file()}
    front = tls_deployment.ssh(HOST, "docker inspect --format '{{.Id}} {{.State.StartedAt}}' "
                                     "$(docker compose --project-directory /opt/litellm ps -q tls)").strip()
    second = tls_deployment.pyinfra("deploy.py", limit=HOST)
    assert second.returncode == 0, second.output[-4000:]
    assert tls_deployment.changed(second, HOST) == [], second.output[-4000:]
    assert {p.name: p.read_bytes() for p in tls_dir(tls_deployment).iterdir() if p.is_file()} == kept
    assert tls_deployment.ssh(HOST, "docker inspect --format '{{.Id}} {{.State.StartedAt}}' "
                                    "$(docker compose --project-directory /opt/litellm ps -q tls)").strip() == front


def test_3_a_controller_without_the_deployments_state_changes_nothing(tls_deployment, converged, tmp_path):
    """Issue 30, acceptance 2: a deploy from another directory, with no secrets file and no tls/ there.
    The plan recovers the secrets and the key's value from the host but not the CA's key, so it refuses
    before any operation, naming tls/ and where it belongs; the host is left byte for byte, and a client
    trusting the deployment's CA keeps working with the declared key."""
    digests = f"sha256sum {' '.join(HOST_STATE)}"
    before = tls_deployment.ssh(HOST, digests)
    elsewhere = tmp_path / "another-controller"
    elsewhere.mkdir()
    command, env = tls_deployment.command("deploy.py", limit=HOST)
    run = subprocess.run(command, cwd=ROOT, env={**env, "LITELLM_DEPLOY_SECRETS": str(elsewhere / "secrets.env")},
                         capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-4000:]
    assert f"but this controller has no {elsewhere / 'tls' / 'ca.crt'}" in output, output[-4000:]
    assert "nothing was changed on any host" in output and "Starting operation" not in output, output[-4000:]
    assert list(elsewhere.iterdir()) == []
    assert tls_deployment.ssh(HOST, digests) == before
    declared = S.read_secrets(tls_deployment.secrets)[default_key_env(DECLARED_KEY["alias"])]
    assert declared not in output
    seen = from_client(tls_deployment, "https", 443, "/v1/models", key=declared)
    assert seen["status"] == 200 and [m["id"] for m in seen["body"]["data"]] == [MODEL], seen


# --- certificate files from the controller --------------------------------------------------------


def test_4_files_from_the_controller_replace_the_certificate(tls_deployment, converged, tmp_path):
    """tls = "files": a certificate made by another CA (the user's), its CA given as tls_ca_file; the
    front is recreated with it and a client trusting that CA (and not the deployment's) gets through."""
    address, name = gateway_address(tls_deployment), "gateway.tls-e2e.example"
    # The same first name as before (tls_names = [] takes the certificate's): PROXY_BASE_URL stays, so
    # only the front is recreated, not the proxy.
    own = certificates.leaf_for([tls_deployment.name(HOST), address, name], "gw", tmp_path / "company-ca")
    (tmp_path / "gw.crt").write_bytes(own.cert_pem)
    (tmp_path / "gw.key").write_bytes(own.key_pem)
    (tmp_path / "gw.key").chmod(0o600)
    (tmp_path / "ca.crt").write_bytes(own.ca_pem)
    tls_deployment.overrides[HOST].update(tls="files", tls_cert_file=str(tmp_path / "gw.crt"),
                                          tls_key_file=str(tmp_path / "gw.key"), tls_ca_file=str(tmp_path / "ca.crt"))
    try:
        run = tls_deployment.pyinfra("deploy.py", limit=HOST)
        assert run.returncode == 0, run.output[-6000:]
        changed = tls_deployment.changed(run, HOST)
        assert any(op.endswith("TLS front (Caddy) up") for op in changed), changed
        assert not any(op.endswith("LiteLLM proxy up and healthy") for op in changed), changed
        assert re.search(r"ok\s+HTTPS front, certificate checked against tls_ca_file", run.output), run.output[-3000:]
        address = gateway_address(tls_deployment)
        spec_ca = own.ca_pem.decode()
        result = tls_deployment.bed.ssh(tls_deployment.name(CLIENT), f"python3 -c {shlex.quote(CLIENT_SCRIPT)} " + shlex.quote(
            json.dumps({"scheme": "https", "address": address, "port": 443, "path": "/health/liveliness",
                        "name": name, "ca": spec_ca})))
        assert json.loads(result.output.strip().splitlines()[-1])["status"] == 200, result.output
        # The deployment CA no longer vouches for the front.
        old = from_client(tls_deployment, "https", 443, "/health/liveliness", name=name)
        assert old["status"] == 0 and "certificate" in old["error"], old
        again = tls_deployment.pyinfra("deploy.py", limit=HOST)
        assert again.returncode == 0 and tls_deployment.changed(again, HOST) == [], again.output[-4000:]
    finally:
        for field in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            tls_deployment.overrides[HOST].pop(field, None)
        tls_deployment.overrides[HOST]["tls"] = "self-signed"


def test_5_tls_off_removes_the_front(tls_deployment, converged):
    """Back to the plain layout: no front container or files, the proxy published as before."""
    tls_deployment.overrides[HOST]["tls"] = "off"
    try:
        run = tls_deployment.pyinfra("deploy.py", limit=HOST)
        assert run.returncode == 0, run.output[-6000:]
        assert any(op.endswith("No TLS front (tls is off)") for op in tls_deployment.changed(run, HOST))
        assert tls_deployment.ssh(HOST, "docker ps --all --quiet --filter label=com.docker.compose.service=tls") == ""
        assert "tls" not in tls_deployment.ssh(HOST, "ls /opt/litellm").split()
        direct = from_client(tls_deployment, "http", 4000, "/health/liveliness")
        assert direct["status"] == 200, direct
        closed = from_client(tls_deployment, "https", 443, "/health/liveliness")
        assert closed["status"] == 0 and "ConnectionRefused" in closed["error"], closed
        again = tls_deployment.pyinfra("deploy.py", limit=HOST)
        assert again.returncode == 0 and tls_deployment.changed(again, HOST) == [], again.output[-4000:]
    finally:
        tls_deployment.overrides[HOST]["tls"] = "self-signed"
