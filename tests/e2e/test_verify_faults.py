"""Verification along the request path, on the test bed: healthy, then one fault at a time (issue 5).

Own hosts (prefix vf-), so this runs beside the other suites. vf-gw-stateless routes to the Ollama
node vf-ollama1 and the upstream LiteLLM vf-up1; vf-gw-db is run here without a database and with
the upstream model only: it is "the other gateway", the one that must keep succeeding while
vf-ollama1 is down. Every fault case restores the healthy bed (stand-in running with its models,
secrets file and group data as before, both gateways re-deployed where the case changed what a
deploy renders, else verified with no change), so the cases are independent.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest

from tests.e2e.conftest import GATEWAYS, OLLAMA_MODEL, ROOT, UPSTREAM_MODEL, make_deployment
from tests.e2e.fault_runs import (GW, assert_verification_fails, changed, fast, host_lines, ollama_tags, ollama_url,
                                  op_results, summary, tail, verify_result, wait_for)

pytestmark = pytest.mark.e2e

OTHER = "gw-db"           # here: database_mode none, routes to vf-up1 only (GW: vf-gw-stateless)
MODELS_FILE = "/etc/ollama-standin/models.json"
SSH_OPTIONS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


@pytest.fixture(scope="module")
def deployment(bed, tmp_path_factory):
    deployment = make_deployment(bed, tmp_path_factory, prefix="vf-", provisioned=tuple(GATEWAYS))
    upstream_only = [m for m in deployment.models() if m["name"] == "chat-upstream"]
    deployment.overrides[OTHER] = {"database_mode": "none", "models": upstream_only}
    yield deployment
    deployment.down()


@pytest.fixture(scope="module")
def converged(deployment):
    run = deployment.pyinfra(limit=None)  # both gateways in one run
    assert run.returncode == 0, tail(run)
    return deployment


def gateway_inputs(deployment) -> tuple:
    """What a deploy renders onto the gateways: group data (verify_timeout aside: only the runbook
    reads it) and the secrets file."""
    overrides = {host: {k: v for k, v in data.items() if k != "verify_timeout"}
                 for host, data in deployment.overrides.items()}
    return {host: data for host, data in overrides.items() if data}, deployment.secrets.read_bytes()


@pytest.fixture
def faults(converged):
    """The healthy bed for one fault case, and the healthy bed again afterwards.

    A case that changed what a deploy renders (models, a key) is undone by a deploy of both gateways.
    A case that only broke the node (the gateways deployed, or only verified, with their healthy
    inputs) leaves the gateways as the healthy converge made them: there verify.py proves the whole
    bed healthy again, with no change, instead of a deploy that would have nothing to change."""
    deployment = converged
    overrides = copy.deepcopy(deployment.overrides)
    secrets = deployment.secrets.read_bytes()
    inputs = gateway_inputs(deployment)
    models = deployment.ssh("ollama1", f"cat {MODELS_FILE}")
    yield deployment
    redeploy = gateway_inputs(deployment) != inputs
    deployment.overrides.clear()
    deployment.overrides.update(overrides)
    deployment.secrets.write_bytes(secrets)
    deployment.ssh("ollama1", f"printf %s {shlex.quote(models)} > {MODELS_FILE} && systemctl start ollama")
    url = ollama_url(deployment)
    wait_for(f"the Ollama stand-in at {url} with {OLLAMA_MODEL}", lambda: OLLAMA_MODEL in ollama_tags(url))
    restored = deployment.pyinfra("deploy.py" if redeploy else "verify.py", limit=None)
    assert restored.returncode == 0, "the healthy bed did not come back:\n" + tail(restored)
    if not redeploy:
        for host in (GW, OTHER):
            assert verify_result(restored, deployment, host) == "No changes", tail(restored)
            assert changed(restored, deployment, host) == [], tail(restored)


class Forwarder:
    """A TCP forwarder on the controller's loopback: 127.0.0.1:<port> -> target. The controller
    reaches the target through it; inside the gateway's container, 127.0.0.1 is the container."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def _serve(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed: stop serving
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()
        for thread in self.threads:
            thread.join(timeout=10)


@contextmanager
def forwarder(target: tuple[str, int]):
    fwd = Forwarder(target)
    try:
        yield fwd
    finally:
        fwd.close()


def run_testinfra_suite(deployment) -> subprocess.CompletedProcess:
    """The user-facing suite, run as a user would, against the stateless gateway."""
    gateway = deployment.bed.host(deployment.name(GW))
    deployment.write_inventory()
    command = [sys.executable, "-m", "pytest", "tests/testinfra", "-p", "no:cacheprovider", "-q",
               f"--hosts=ssh://root@{gateway['address']}", f"--ssh-identity-file={gateway['ssh_key']}",
               f"--ssh-extra-args={SSH_OPTIONS}", f"--litellm-inventory={deployment.inventory}"]
    env = {**os.environ, "LITELLM_DEPLOY_SECRETS": str(deployment.secrets)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


# -- the cases ----------------------------------------------------------------------------------

def test_1_healthy_bed_verifies_without_change_and_prints_a_summary(converged):
    deployment = converged
    run = deployment.pyinfra("verify.py")
    assert run.returncode == 0, tail(run)
    for host in (GW, OTHER):
        assert deployment.changed(run, host) == [] and changed(run, deployment, host) == [], tail(run)
        assert verify_result(run, deployment, host) == "No changes"
    lines = summary(run, deployment, GW)
    assert lines and all(line.startswith("ok") for line in lines), "\n".join(lines)
    url = ollama_url(deployment)
    upstream = deployment.bed.host(deployment.name("up1"))["api_base"]
    expected = ["gateway liveliness", "gateway readiness", "gateway models", "gateway refuses a wrong key",
                f"ollama node {deployment.name('ollama1')} at {url}", f"{url}: /api/version", f"{url}: models",
                f"upstream {upstream} for chat-upstream", "chat through gateway: chat-upstream",
                "chat through gateway: chat-ollama"]
    for name in expected:
        assert any(name in line for line in lines), f"{name!r} missing from the summary:\n" + "\n".join(lines)
    other = summary(run, deployment, OTHER)
    assert other and all(line.startswith("ok") for line in other) and not any("ollama" in line for line in other)


def test_2_ollama_down_fails_the_gateway_routing_to_it_only(faults):
    deployment = faults
    fast(deployment, GW, OTHER)
    deployment.ssh("ollama1", "systemctl stop ollama")
    url = ollama_url(deployment)
    for script in ("deploy.py", "verify.py"):
        run = deployment.pyinfra(script)  # both gateways in one run
        text = assert_verification_fails(run, deployment, url, deployment.name("ollama1"), "connection refused",
                                         "from the gateway's proxy container and from the controller")
        # The other gateway went on and succeeded.
        assert verify_result(run, deployment, OTHER) == "No changes", tail(run)
        assert not [op for op, r in op_results(run, deployment, OTHER).items() if r.startswith("Error")], tail(run)
        assert not [line for line in host_lines(run, deployment, OTHER) if "error" in line.lower()
                    or "verification failed" in line], tail(run)
        assert all(line.startswith("ok") for line in summary(run, deployment, OTHER))
        # The failure is reported once, as the node, not as every symptom downstream of it.
        assert "chat through gateway" not in text, text


def test_3_missing_model_names_the_model_and_the_node(faults):
    deployment = faults
    fast(deployment, GW)
    url = ollama_url(deployment)
    deployment.ssh("ollama1", f"echo '[\"qwen2.5:0.5b\"]' > {MODELS_FILE}")
    wait_for(f"{OLLAMA_MODEL} gone from {url}/api/tags", lambda: OLLAMA_MODEL not in ollama_tags(url))
    run = deployment.pyinfra("verify.py", limit=GW)
    text = assert_verification_fails(run, deployment, OLLAMA_MODEL, deployment.name("ollama1"), url,
                                     "not pulled on this node", "ollama pull")
    assert "qwen2.5:0.5b" in text  # what the node has instead


def test_4_reachable_from_the_controller_but_not_from_the_container(faults):
    deployment = faults
    fast(deployment, GW)
    node = deployment.bed.host(deployment.name("ollama1"))
    with forwarder((node["address"], 11434)) as fwd:
        local = f"http://127.0.0.1:{fwd.port}"
        assert OLLAMA_MODEL in ollama_tags(local)  # the premise: the controller reaches the node here
        models = [m for m in deployment.models() if m["name"] != "chat-ollama"]
        models.append({"name": "chat-ollama", "model": f"ollama_chat/{OLLAMA_MODEL}", "api_base": local})
        deployment.overrides[GW] = {**deployment.overrides.get(GW, {}), "models": models}
        run = deployment.pyinfra(limit=GW)
    assert "LiteLLM proxy up" in " ".join(changed(run, deployment, GW)), tail(run)  # the new route is live
    assert_verification_fails(run, deployment, local,
                              "reachable from the controller but NOT from the gateway's container")


def test_5_wrong_upstream_key_names_the_upstream_and_the_status(faults):
    deployment = faults
    fast(deployment, GW)
    upstream = deployment.bed.host(deployment.name("up1"))["api_base"]
    text = deployment.secrets.read_text()
    wrong = re.sub(r'(?m)^UPSTREAM_LITELLM_API_KEY=.*$', 'UPSTREAM_LITELLM_API_KEY="sk-not-the-upstream-key-0123456789abcdef"', text)
    assert wrong != text
    deployment.secrets.write_text(wrong)
    run = deployment.pyinfra(limit=GW)
    message = assert_verification_fails(run, deployment, upstream, "UPSTREAM_LITELLM_API_KEY", "refused",
                                        UPSTREAM_MODEL)
    # The upstream is a LiteLLM without a database: it answers 400 ("No connected db."), not 401, to
    # a key it does not know. The message names the status it really got.
    assert re.search(r"HTTP 40[01]: the key in UPSTREAM_LITELLM_API_KEY was refused", message), message


def test_6_testinfra_suite_passes_healthy_and_fails_readably_when_ollama_is_down(faults):
    deployment = faults
    healthy = run_testinfra_suite(deployment)
    assert healthy.returncode == 0, healthy.stdout[-6000:] + healthy.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", healthy.stdout) and "failed" not in healthy.stdout, healthy.stdout[-3000:]
    fast(deployment, GW)
    deployment.ssh("ollama1", "systemctl stop ollama")
    broken = run_testinfra_suite(deployment)
    out = broken.stdout
    assert broken.returncode == 1, out[-6000:] + broken.stderr[-2000:]
    assert re.search(r"\b1 failed\b", out), out[-3000:]  # only the route check: the gateway itself is fine
    assert "FAILED tests/testinfra/test_gateway.py::test_gateway_and_its_routes_answer_from_inside_the_proxy_container" in out
    assert re.search(r"AssertionError: 1 problem\(s\) on [\d.]+:\n.*ollama node " + re.escape(deployment.name("ollama1")),
                     out), out[-4000:]
    assert ollama_url(deployment) in out and "connection refused" in out
