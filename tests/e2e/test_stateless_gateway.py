"""gw-stateless (database_mode none): converge, converge again, verify, reboot, change."""

import json

import pytest
import testinfra

from tasks.lib.compose import PROXY_SERVICE
from tests.e2e.conftest import OLLAMA_MODEL
from tests.testbed import wait_until

HOST = "gw-stateless"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def converged(deployment):
    first = deployment.pyinfra(limit=HOST)
    assert first.returncode == 0, first.output[-4000:]
    return first


def ssh_testinfra(deployment, name):
    host = deployment.bed.host(deployment.name(name))
    return testinfra.get_host(
        f"ssh://{host['ssh_user']}@{host['address']}",
        ssh_identity_file=host["ssh_key"],
        ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
    )


def test_1_converges(converged):
    assert "verification summary" in converged.output


def test_2_second_run_reports_no_change(deployment, converged):
    second = deployment.pyinfra(limit=HOST)
    assert second.returncode == 0, second.output[-4000:]
    assert deployment.changed(second, HOST) == [], "changed on the second run: " + ", ".join(deployment.changed(second, HOST))


def test_3_verified_with_testinfra(deployment, converged):
    host = ssh_testinfra(deployment, HOST)
    docker = host.service("docker")
    assert docker.is_running and docker.is_enabled
    for name, mode in ((".env", 0o600), ("docker-compose.yml", 0o644), ("litellm-config.yaml", 0o644)):
        f = host.file(f"/opt/litellm/{name}")
        assert f.exists and f.user == "root" and f.mode == mode, name
    ps = host.check_output("docker compose --project-directory /opt/litellm ps --format json")
    services = [json.loads(line) for line in ps.splitlines() if line.strip()]
    assert [(s["Service"], s["State"], s["Health"]) for s in services] == [("litellm", "running", "healthy")]


def test_3_gateway_answers(deployment, converged):
    assert deployment.call(HOST, "/health/liveliness") == (200, "I'm alive!")
    status, readiness = deployment.call(HOST, "/health/readiness")
    assert status == 200 and readiness["status"] == "healthy"
    status, models = deployment.call(HOST, "/v1/models")
    assert status == 200 and sorted(m["id"] for m in models["data"]) == ["chat-ollama", "chat-upstream"]
    status, _ = deployment.call(HOST, "/v1/models", key="sk-wrong-key-0000000000000000000000000")
    assert status in (400, 401)


@pytest.mark.parametrize("model,marker", [("chat-upstream", None), ("chat-ollama", OLLAMA_MODEL)])
def test_3_chat_reaches_the_routed_node(deployment, converged, model, marker):
    status, reply = deployment.call(HOST, "/v1/chat/completions",
                                 body={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, reply
    content = reply["choices"][0]["message"]["content"]
    assert content
    if marker:  # the Ollama stand-in names the model it served
        assert marker in content


def proxy_container(deployment):
    return deployment.ssh(HOST, f"docker compose --project-directory /opt/litellm ps -q {PROXY_SERVICE}").strip()


def test_4_reboot_brings_the_stack_back(deployment, converged):
    deployment.bed.restart(deployment.name(HOST))
    # ssh is refused while the host boots; wait_until retries through that
    wait_until("the proxy answering after a reboot",
               lambda: deployment.call(HOST, "/health/liveliness")[0] == 200, timeout=180, interval=2)
    verify = deployment.pyinfra("verify.py", limit=HOST)
    assert verify.returncode == 0, verify.output[-4000:]
    assert deployment.changed(verify, HOST) == []


def test_5_changed_model_recreates_the_proxy(deployment, converged):
    before = proxy_container(deployment)
    models = deployment.models()
    models[1] = {**models[1], "name": "chat-ollama-renamed"}
    deployment.overrides[HOST] = {"models": models}
    try:
        run = deployment.pyinfra(limit=HOST)
        assert run.returncode == 0, run.output[-4000:]
        assert any("LiteLLM proxy up" in op for op in deployment.changed(run, HOST))
        assert proxy_container(deployment) != before
        status, listed = deployment.call(HOST, "/v1/models")
        assert sorted(m["id"] for m in listed["data"]) == ["chat-ollama-renamed", "chat-upstream"]
    finally:
        # Not deployed back here: test_6's run renders the declared models again in the same proxy
        # start as its own change (a proxy start costs the bed's 2 cores about 20 s of CPU).
        deployment.overrides.pop(HOST)


def test_6_no_secret_in_pyinfra_output_at_any_verbosity(deployment, converged):
    """A changed secret re-renders .env and restarts the proxy, at -vvv with --diff: still no value. The same
    run puts back the models test_5 renamed."""
    from dotenv import dotenv_values

    original = deployment.secrets.read_text()
    new_password = "ui-" + "Zq7" * 10
    deployment.secrets.write_text(original.replace(
        f'UI_PASSWORD="{dotenv_values(deployment.secrets, interpolate=False)["UI_PASSWORD"]}"',
        f'UI_PASSWORD="{new_password}"'))
    try:
        run = deployment.pyinfra("deploy.py", "-vvv", "--diff", limit=HOST)
        assert run.returncode == 0, run.output[-4000:]
        assert any(".env" in op for op in deployment.changed(run, HOST))
        secrets = [v for v in dotenv_values(deployment.secrets, interpolate=False).values() if v]
        assert new_password in secrets
        leaked = [value[:6] + "..." for value in secrets if value in run.output]
        assert leaked == [], f"secret values in pyinfra's output: {leaked}"
        assert deployment.ssh(HOST, "grep -c '^UI_PASSWORD=\"" + new_password + "\"$' /opt/litellm/.env").strip() == "1"
        status, listed = deployment.call(HOST, "/v1/models")
        assert status == 200 and sorted(m["id"] for m in listed["data"]) == ["chat-ollama", "chat-upstream"], listed
    finally:
        deployment.secrets.write_text(original)
    assert deployment.pyinfra(limit=HOST).returncode == 0
