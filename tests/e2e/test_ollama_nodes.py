"""An Ollama node nobody can log into, on the test bed (issue 15, defect 6).

Own hosts (prefix oll-): the stateless gateway oll-gw-stateless routes to the Ollama stand-in
oll-ollama1, which is in no pyinfra inventory (the gateway's data declares it: ollama_nodes) and
whose sshd is stopped, as an appliance's would be. The deploy converges and verifies; with the node
down, the run fails on the node's check, from the gateway's container, not on a connection to it.
The node is handled through `docker exec` (the bed's hands on the appliance), never over SSH.
"""

from __future__ import annotations

import runpy
import socket

import pytest

from tests.e2e.conftest import OLLAMA_MODEL, make_deployment
from tests.e2e.fault_runs import (
    GW, assert_verification_fails, fast, ollama_tags, ollama_url, summary, tail, verify_result, wait_for)

pytestmark = pytest.mark.e2e

NODE = "ollama1"


def on_node(deployment, command: str) -> str:
    result = deployment.bed.exec(deployment.name(NODE), command)
    assert result.ok, f"{command}: {result.output}"
    return result.output


def refuses(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture(scope="module")
def deployment(bed, tmp_path_factory):
    deployment = make_deployment(bed, tmp_path_factory, prefix="oll-", hosts=(GW, NODE), provisioned=(GW,))
    # The suites run side by side on two cores: the proxy's first start may take longer than the
    # default start_timeout there. What this suite proves does not depend on how fast it starts.
    deployment.overrides[GW] = {"start_timeout": 600}
    yield deployment
    deployment.down()


@pytest.fixture(scope="module")
def appliance(deployment):
    """The bed with its Ollama node made an appliance: no sshd, so nothing can log into it."""
    on_node(deployment, "systemctl stop ssh.socket ssh.service")
    address = deployment.bed.host(deployment.name(NODE))["address"]
    wait_for(f"{address}:22 refusing connections", lambda: refuses(address, 22))
    assert not deployment.bed.ssh(deployment.name(NODE), "true", timeout=30).ok
    return deployment


def nothing_touched_the_node(run, deployment) -> None:
    """pyinfra never addressed the node: no line of its output is about that host."""
    node = deployment.name(NODE)
    assert f"[{node}]" not in run.output and "Could not connect" not in run.output, tail(run)


def test_1_gateway_routing_to_a_node_without_ssh_converges_and_verifies(appliance):
    deployment = appliance
    deployment.write_inventory()
    groups = {k: v for k, v in runpy.run_path(str(deployment.inventory)).items() if isinstance(v, list)}
    assert list(groups) == ["litellm_hosts"], groups  # the node is no pyinfra host at all
    [(gateway, data)] = groups["litellm_hosts"]
    url = ollama_url(deployment)
    assert gateway == deployment.name(GW) and data["ollama_nodes"] == {deployment.name(NODE): {"url": url}}

    run = deployment.pyinfra("deploy.py")
    assert run.returncode == 0, tail(run)
    nothing_touched_the_node(run, deployment)
    assert verify_result(run, deployment, GW) == "No changes", tail(run)
    lines = summary(run, deployment, GW)
    for name in (f"ollama node {deployment.name(NODE)} at {url}", f"{url}: models", "chat through gateway: chat-ollama"):
        assert any(line.startswith("ok") and name in line for line in lines), f"{name!r}:\n" + "\n".join(lines)
    status, reply = deployment.call(GW, "/v1/chat/completions", body={
        "model": "chat-ollama", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and OLLAMA_MODEL in reply["choices"][0]["message"]["content"], reply


def test_2_node_down_fails_the_node_check_not_a_connection(appliance):
    deployment = appliance
    fast(deployment, GW)
    url = ollama_url(deployment)
    on_node(deployment, "systemctl stop ollama")
    try:
        run = deployment.pyinfra("verify.py")
        text = assert_verification_fails(run, deployment, deployment.name(NODE), url, "connection refused",
                                         "from the gateway's proxy container and from the controller")
        assert "chat through gateway" not in text, text  # reported once, as the node
        nothing_touched_the_node(run, deployment)
        lines = summary(run, deployment, GW)
        assert any(line.startswith("FAIL") and f"ollama node {deployment.name(NODE)} at {url}" in line
                   for line in lines), "\n".join(lines)
        assert all(line.startswith("ok") for line in lines if line.split()[1] == "gateway"), "\n".join(lines)
    finally:
        on_node(deployment, "systemctl start ollama")
    wait_for(f"the Ollama stand-in at {url}", lambda: OLLAMA_MODEL in ollama_tags(url))
    run = deployment.pyinfra("verify.py")  # the node back: the same run passes, with no SSH to it ever
    assert run.returncode == 0, tail(run)
    nothing_touched_the_node(run, deployment)
