"""`make demo`: a fresh disposable host on this machine, a full deploy, and how to use it.

Hosts come from the test bed (tests/testbed): a Debian 13 container with systemd and sshd that the
deploy provisions over real SSH, plus an Ollama stand-in node (Ollama itself cannot be installed
offline; the stand-in speaks its API), declared as the gateway's data as a user's node is: pyinfra
never logs into it. The gateway is the package's default: bundled PostgreSQL and
the DB-backed LiteLLM proxy (offline, the test bed's image with its query-engine stand-in;
TESTBED_IMAGES=official uses the official images where they can be pulled). It ends with the
commands to try: make a virtual key with the master key, then use it. One more key is declared as code
(virtual_keys), as a user's group data would.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tasks.config import certificates
from tests.testbed import Testbed

ROOT = Path(__file__).resolve().parents[1]
IMAGES = os.environ.get("TESTBED_IMAGES", "local")
GATEWAY, NODE = "demo-gw", "demo-ollama"
MODEL = "llama3.2:1b"
TRY_IT = "    try it:"  # the line before the commands a user (and tests/e2e/test_demo.py) runs
DECLARED_KEY = {"alias": "demo", "models": "all", "max_budget": 10, "budget_duration": "30d"}


def try_it(address: str, secrets: Path) -> list[str]:
    """Shell lines, run in order: the master key from the secrets file, a virtual key made with it
    (POST /key/generate), and a chat completion with that virtual key; over HTTPS, the certificate
    checked against the deployment's CA (kept beside the secrets file)."""
    base = f"https://{address}"
    ca = certificates.tls_dir(secrets) / "ca.crt"
    return [
        f"KEY=$(grep ^LITELLM_MASTER_KEY= {secrets} | cut -d= -f2- | tr -d '\"')",
        f"VKEY=$(curl -s --cacert {ca} {base}/key/generate -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' "
        "-d '{\"models\": [\"llama\"], \"metadata\": {\"purpose\": \"demo\"}}' "
        "| python3 -c 'import json, sys; print(json.load(sys.stdin)[\"key\"])')",
        f"curl -s --cacert {ca} {base}/v1/chat/completions -H \"Authorization: Bearer $VKEY\" -H 'Content-Type: application/json' "
        "-d '{\"model\": \"llama\", \"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}'",
    ]


def runbook_line(script: str, inventory: Path, secrets: Path) -> str:
    """One shell line that runs a runbook on the demo as printed, from any directory: the project's
    root (the runbooks import tasks/), its pyinfra, and the deployment's secrets file (its tls/ beside it)."""
    pyinfra = Path(sys.executable).with_name("pyinfra")
    return (f"cd {shlex.quote(str(ROOT))} && LITELLM_DEPLOY_SECRETS={shlex.quote(str(secrets))} "
            f"{shlex.quote(str(pyinfra))} {shlex.quote(str(inventory))} {script} -y")


def main() -> int:
    bed = Testbed(images=IMAGES)
    print("==> test bed images (built once, then cached)")
    bed.build_images()
    print(f"==> fresh hosts: {GATEWAY} (Debian 13, systemd, sshd) and {NODE} (Ollama API stand-in)")
    bed.up([GATEWAY, f"{NODE}:ollama"], ollama_models=[MODEL])
    workdir = bed.state_dir / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    secrets = workdir / "secrets.env"
    data = {
        "litellm_image": bed.litellm_image(),
        "postgres_image": bed.postgres_image(),
        "database_mode": "bundled",
        "models": [{"name": "llama", "model": f"ollama_chat/{MODEL}", "ollama_node": NODE}],
        # Who may use the gateway, as code: its value lands in the secrets file as VIRTUAL_KEY_DEMO.
        "virtual_keys": [DECLARED_KEY],
        # HTTPS in front (Caddy), with a certificate from the deployment's own CA, made beside the secrets file.
        "tls": "self-signed",
        "tls_image": bed.caddy_image(),
    }
    if IMAGES == "local":
        archives = bed.archives(("litellm", "postgres", "caddy"))
        data.update(image_source="archives", image_archives=[str(archives[k]) for k in ("litellm", "postgres", "caddy")])
    hosts = {h["name"]: h for h in bed.hosts()}
    inventory = workdir / "inventory.py"
    inventory.write_text(bed.inventory_text({GATEWAY: data}, names=[GATEWAY, NODE]))
    print(f"==> pyinfra {inventory} deploy.py -y")
    env = {**os.environ, "LITELLM_DEPLOY_SECRETS": str(secrets)}
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    result = subprocess.run([pyinfra, str(inventory), "deploy.py", "-y"], cwd=ROOT, env=env)
    if result.returncode != 0:
        print("==> the deploy failed (see above)", file=sys.stderr)
        return result.returncode
    address = hosts[GATEWAY]["address"]
    commands = "\n".join(f"      {line}" for line in try_it(address, secrets))
    print(f"""
==> LiteLLM gateway ready at https://{address}  (admin UI: https://{address}/ui)
    bundled PostgreSQL, DB-backed proxy: virtual keys, budgets and spend are kept in the database
    HTTPS by Caddy in front; plain HTTP only redirects; the proxy's port 4000 answers on the host only
    the deployment's CA (trust it, e.g. curl --cacert): {certificates.tls_dir(secrets) / "ca.crt"}
    master key and UI password: {secrets}  (LITELLM_MASTER_KEY, UI_PASSWORD; UI user 'admin')
{TRY_IT}  make a virtual key with the master key, then chat with the virtual key
{commands}
    a key declared as code:       virtual_keys in the inventory; its value is VIRTUAL_KEY_DEMO in {secrets}
    list the declared keys:       {runbook_line("keys.py", inventory, secrets)}
    re-run the deploy (no change): {runbook_line("deploy.py", inventory, secrets)}
    remove the demo hosts:        {sys.executable} -m tests.testbed down {GATEWAY} {NODE}
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
