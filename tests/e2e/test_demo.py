"""`make demo` as a new user meets it: the demo deploys a bundled (DB-backed) gateway, and the commands
it prints at the end — a virtual key made with the master key, then a chat with that key — work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks import certificates
from tasks import secrets as S
from tests import demo
from tests.e2e import gateway_http as api

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_output(bed):
    try:
        result = subprocess.run([sys.executable, "-m", "tests.demo"], cwd=ROOT, capture_output=True, text=True,
                                timeout=1800)
        yield result
    finally:
        bed.down([demo.GATEWAY, demo.NODE], background=True)


def printed_commands(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(demo.TRY_IT))
    count = len(demo.try_it("address", Path("secrets")))
    return [line.strip() for line in lines[start + 1:start + 1 + count]]


def test_demo_deploys_a_bundled_gateway(demo_output):
    assert demo_output.returncode == 0, (demo_output.stdout + demo_output.stderr)[-6000:]
    assert "bundled PostgreSQL, DB-backed proxy" in demo_output.stdout


def test_demo_prints_a_virtual_key_curl_pair_that_works(demo_output):
    commands = printed_commands(demo_output.stdout)
    assert any("/key/generate" in c for c in commands) and any("$VKEY" in c for c in commands), commands
    # Over HTTPS, checked against the deployment CA (the demo's TLS front).
    assert all("--cacert" in c and "https://" in c for c in commands if "curl" in c), commands
    # The user's shell, line by line; then proof the chat used a virtual key, not the master key.
    # (curl prints no newline after the reply; the echo ends its line)
    script = "set -euo pipefail\n" + "\n".join(commands) + '\necho\n[ "$VKEY" != "$KEY" ] && echo "virtual key ${VKEY:0:3}..."\n'
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    *_, reply_line, proof = run.stdout.strip().splitlines()
    assert json.loads(reply_line)["choices"][0]["message"]["content"], reply_line
    assert proof == "virtual key sk-..."


def test_demo_declares_a_key_as_code_that_works(bed, demo_output):
    assert "VIRTUAL_KEY_DEMO" in demo_output.stdout
    secrets = bed.state_dir / "demo" / "secrets.env"
    declared = S.read_secrets(secrets)["VIRTUAL_KEY_DEMO"]
    address = next(h["address"] for h in bed.hosts() if h["name"] == demo.GATEWAY)
    # Over HTTPS, the demo's TLS front checked against the deployment CA it prints.
    ca = str(certificates.tls_dir(secrets) / "ca.crt")
    assert api.models_seen(f"https://{address}", declared, cafile=ca) == (200, ["llama"])
    assert declared not in demo_output.stdout + demo_output.stderr


def test_demo_runs_the_shipped_worker_count_for_its_host(bed, demo_output):
    """proxy_workers "auto" (the shipped default): one worker per CPU of the host within its memory,
    in the compose file, and LiteLLM started that many under Gunicorn."""
    from tasks.sizing import workers_for

    facts = bed.ssh(demo.GATEWAY, "nproc; awk '/^MemTotal/ {print int($2 / 1024)}' /proc/meminfo")
    cpus, memory_mb = (int(v) for v in facts.output.split())
    workers = workers_for(cpus, memory_mb)
    compose = yaml.safe_load(bed.ssh(demo.GATEWAY, "cat /opt/litellm/docker-compose.yml").output)
    command = compose["services"]["litellm"]["command"]
    assert command[command.index("--num_workers") + 1] == str(workers), command
    logs = bed.ssh(demo.GATEWAY, "cd /opt/litellm && docker compose logs litellm 2>&1").output
    # LiteLLM's own account of the workers it runs (proxy_cli sets NUM_WORKERS from --num_workers).
    assert f"Postgres connection budget per pod = {workers} worker(s)" in logs, logs[-3000:]
    if workers > 1:  # forked by Gunicorn from the process that imported LiteLLM, none of them died since
        assert logs.count("Booting worker with pid") == workers, logs[-3000:]
