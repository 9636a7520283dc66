"""Issue 15, defect 5: `restore_from=PATH` (one gateway's backup) on several gateways is refused
before anything is checked or touched; `--limit HOST` (or restore_from=latest) is the way."""

import os
import subprocess

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.context import ctx_state

from tasks.gateway import restore
from tests.unit.conftest import ROOT, UPSTREAM_KEY
from tests.unit.test_cli_refuses_bad_input import PYINFRA
from tests.unit.test_key_guard import IMAGE, full_secrets


def two_gateways(initial_limit=None) -> State:
    inventory = Inventory((["gw1", "gw2"], {}), litellm_hosts=(["gw1", "gw2"], {}))
    state = State(inventory, Config())
    if initial_limit is not None:
        state.limit_hosts = [inventory.get_host(name) for name in initial_limit]
    return state


def test_gateways_in_run_follows_the_limit():
    with ctx_state.use(two_gateways()):
        assert restore.gateways_in_run() == ["gw1", "gw2"]
    with ctx_state.use(two_gateways(initial_limit=["gw2"])):
        assert restore.gateways_in_run() == ["gw2"]


def test_a_specific_file_on_several_gateways_is_refused(build, tmp_path):
    settings = build(database_mode="bundled")
    with pytest.raises(restore.RestoreRefused) as error:
        restore.plan_for(settings, str(tmp_path / "gw1.dump"), targeted=["gw1", "gw2"])
    message = str(error.value)
    assert "targets 2 gateways (gw1, gw2)" in message and "--limit HOST" in message
    # "latest" means each host's own newest backup: not this refusal.
    with pytest.raises(restore.RestoreRefused, match="no backup under"):
        restore.plan_for(settings, "latest", targeted=["gw1", "gw2"])


def test_cli_restore_from_path_without_limit_is_refused(tmp_path, secrets_file):
    full_secrets(secrets_file, UPSTREAM_LITELLM_API_KEY=UPSTREAM_KEY)
    dump = tmp_path / "some.dump"
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"""
COMMON = {{"litellm_image": {IMAGE!r}, "database_mode": "bundled",
          "models": [{{"name": "m", "model": "ollama_chat/llama3", "ollama_node": "local"}}]}}
litellm_hosts = [("@local", {{**COMMON, "install_dir": "{tmp_path / 'opt'}"}}),
                 ("gw-down", {{**COMMON, "ssh_hostname": "127.0.0.1", "ssh_port": 1}})]
""")
    env = {**os.environ, "LITELLM_DEPLOY_SECRETS": str(secrets_file)}
    result = subprocess.run([PYINFRA, str(inventory), "restore.py", "--dry", "-y", "--data", f"restore_from={dump}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"restore_from={dump} is one gateway's backup, but this run targets 2 gateways" in output
    assert "fix: name the one to restore with --limit HOST" in output
