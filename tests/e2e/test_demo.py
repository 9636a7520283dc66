"""`make demo` as a new user meets it: the demo deploys a bundled (DB-backed) gateway, and the commands
it prints at the end — a virtual key made with the master key, then a chat with that key — work."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tasks.config import certificates
from tasks.config import secrets as S
from tests import demo
from tests.e2e import gateway_http as api
from tests.e2e import revocation
from tests.e2e.conftest import Run

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
    from tasks.config.sizing import workers_for

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


def printed_line(output: str, label: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in output.splitlines() if line.strip().startswith(label + ":"))


def test_the_printed_runbook_lines_run_as_printed_from_anywhere(demo_output, tmp_path):
    """Issue 30: the demo's re-run line, run from the project root without LITELLM_DEPLOY_SECRETS, made a new
    CA and a new value for the declared key. Printed lines carry the root, the secrets file and pyinfra:
    run from another directory with no secrets variable in the environment, they read the deployment's
    own state, and the deploy changes nothing."""
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_DEPLOY_SECRETS"}
    listed = subprocess.run(["bash", "-c", printed_line(demo_output.stdout, "list the declared keys")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    output = listed.stdout + listed.stderr
    assert listed.returncode == 0 and f"virtual keys on {demo.GATEWAY}:" in output, output[-4000:]
    assert Run(listed.returncode, output).changed(demo.GATEWAY) == [], output[-4000:]
    rerun = subprocess.run(["bash", "-c", printed_line(demo_output.stdout, "re-run the deploy (no change)")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-4000:]
    assert f"[{demo.GATEWAY}]" in output and Run(rerun.returncode, output).changed(demo.GATEWAY) == [], output[-4000:]
    # No key material left where git would pick it up.
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
                               text=True).stdout.split()
    assert not [path for path in untracked if path.startswith("tls/") or path.endswith((".key", ".env"))], untracked


def demo_host_revocation(bed, spec: dict):
    """tests/e2e/revocation.py run on the demo gateway against its proxy's own port (every worker)."""
    program = revocation.host_program({"base": "http://127.0.0.1:4000", "env_file": "/opt/litellm/.env", **spec})
    return bed.ssh(demo.GATEWAY, "python3 -", timeout=revocation.BOUND_S + 60, input=program)


def revocation_seen(result) -> dict:
    assert result.ok, result.output[-3000:]
    return json.loads(result.output.strip().splitlines()[-1])


def test_a_revoked_key_is_refused_by_every_worker_within_a_second(bed, demo_output, tmp_path):
    """Issue 30: on main a deleted key kept working for 59 s on the worker that did not serve the delete
    (LiteLLM's 60 s key cache per worker). The demo's gateway runs the shipped worker count, two here.
    Deleted with /key/delete; then the declared key turned blocked by keys.py, polled while it runs."""
    compose = yaml.safe_load(bed.ssh(demo.GATEWAY, "cat /opt/litellm/docker-compose.yml").output)
    command = compose["services"]["litellm"]["command"]
    assert int(command[command.index("--num_workers") + 1]) >= 2, f"one worker: this test says nothing: {command}"
    deleted = revocation_seen(demo_host_revocation(bed, {"revoke": "delete", "alias": "e2e-revoked"}))
    print(f"\ndeleted key: {deleted}")
    assert revocation.problems(deleted) == [], deleted

    workdir = bed.state_dir / "demo"
    [(_, data)] = [host for host in runpy.run_path(str(workdir / "inventory.py"))["litellm_hosts"]
                   if host[0] == demo.GATEWAY]
    inventory = tmp_path / "inventory.py"
    blocked = {**data, "virtual_keys": [dict(demo.DECLARED_KEY, blocked=True)]}
    inventory.write_text(bed.inventory_text({demo.GATEWAY: blocked}, names=[demo.GATEWAY, demo.NODE]))
    declared = S.read_secrets(workdir / "secrets.env")["VIRTUAL_KEY_DEMO"]
    watched = []
    watcher = threading.Thread(target=lambda: watched.append(demo_host_revocation(bed, {"revoke": "watch", "key": declared})))
    watcher.start()
    run = subprocess.run([str(Path(sys.executable).with_name("pyinfra")), str(inventory), "keys.py", "-y"], cwd=ROOT,
                         env={**os.environ, "LITELLM_DEPLOY_SECRETS": str(workdir / "secrets.env")},
                         capture_output=True, text=True, timeout=600)
    watcher.join(revocation.BOUND_S + 90)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "will do: key demo: blocked updated" in output, output[-4000:]
    assert declared not in output
    seen = revocation_seen(watched[0])
    print(f"declared key turned blocked: {seen}")
    assert revocation.problems(seen) == [], seen
