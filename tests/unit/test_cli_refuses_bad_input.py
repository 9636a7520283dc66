"""The real CLI path: `pyinfra INVENTORY deploy.py` with bad input stops before any operation."""

import os
import subprocess
import sys
from pathlib import Path

from tests.unit.conftest import ROOT

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def run_pyinfra(tmp_path, inventory_text: str, *args: str):
    inventory = tmp_path / "inventory.py"
    inventory.write_text(inventory_text)
    secrets = tmp_path / "secrets.env"
    env = {**os.environ, "LITELLM_DEPLOY_SECRETS": str(secrets)}
    # --dry: even if validation were broken, nothing would run on this machine.
    return subprocess.run(
        [PYINFRA, str(inventory), "deploy.py", "--dry", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def test_bad_input_adds_no_operation_for_any_host(tmp_path):
    install_dir = tmp_path / "opt-litellm"
    result = run_pyinfra(tmp_path, f"""
litellm_hosts = [("@local", {{"install_dir": "{install_dir}", "proxy_port": 99999,
                   "models": [{{"name": "m", "model": "olama/llama3", "ollama_node": "local"}}]}})]
""")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "proxy_port: 99999 is not a port" in output
    assert "unknown provider prefix 'olama'" in output
    assert "nothing was changed on any host" in output
    # No operation was even prepared: pyinfra lists none of the deploy's steps.
    for step in ("Install Docker", "Install directory", "Write .env", "LiteLLM proxy up"):
        assert step not in output
    assert not install_dir.exists()
    assert not (tmp_path / "secrets.env").exists()


def test_default_inventory_without_hosts_explains_and_fails():
    result = subprocess.run([PYINFRA, "inventory", "deploy.py", "--dry"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "no gateway configured" in result.stdout + result.stderr
