"""The guards every runbook gets, through the real CLI (`pyinfra INVENTORY RUNBOOK`, @local, nothing
deployed): what each runbook does while a master-key rotation is pending, and `--dry` writing
nothing, the controller's secrets file included."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config import secrets as S
from tasks.rotation.interrupt import STOP_ENV
from tests.unit.conftest import ROOT

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
RUNBOOKS = sorted(path.name for path in ROOT.glob("*.py"))


@pytest.fixture
def bed(tmp_path):
    """An inventory of one bundled gateway on @local (never deployed) and a complete secrets file."""
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"""
litellm_hosts = [("@local", {{"install_dir": "{tmp_path / 'opt'}", "database_mode": "bundled",
                   "litellm_image": "ghcr.io/berriai/litellm-database:main-v1.108.7",
                   "models": [{{"name": "m", "model": "ollama_chat/llama3", "ollama_node": "local"}}]}})]
""")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("".join(S.dotenv_line(name, make()) for name, make in S.GENERATED.items()))
    secrets.chmod(0o600)
    return tmp_path


def pending_rotation(bed: Path) -> bytes:
    """Mark a rotation pending in the bed's secrets file, as rotate.py leaves it when interrupted."""
    S.rewrite_secrets(bed / "secrets.env", {S.MASTER_KEY_NEXT: S.new_master_key()})
    return (bed / "secrets.env").read_bytes()


def pyinfra(bed: Path, runbook: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, S.SECRETS_ENV_VAR: str(bed / "secrets.env")}
    env.pop(STOP_ENV, None)
    result = subprocess.run([PYINFRA, str(bed / "inventory.py"), runbook, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


# --- one rotation guard, and every runbook has decided what it does during a rotation -------------


def test_every_runbook_starts_with_the_guarded_settings_under_its_own_name():
    from tasks.config.pending_rotation import DURING_ROTATION

    assert sorted(DURING_ROTATION) == RUNBOOKS, "a new runbook must say what it does during a rotation"
    for name in RUNBOOKS:
        tree = ast.parse((ROOT / name).read_text())
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
        names = [call.func.id for call in calls]
        assert "settings_for" not in names, f"{name}: use tasks.context.runbook_settings (it carries the guard)"
        guarded = [call for call in calls if call.func.id == "runbook_settings"]
        assert len(guarded) == 1, name
        assert [ast.literal_eval(arg) for arg in guarded[0].args[2:]] == [name], name


@pytest.mark.parametrize("runbook", ["restore.py", "deploy.py"])
def test_a_runbook_that_would_undo_a_pending_rotation_refuses_and_touches_nothing(bed, runbook):
    """restore.py would put back a database whose master-key link matches the other key; deploy.py
    the previous key on gateways that already have the new one. Without --dry: the guard, not the
    dry run, is what stops them: they stop while the operations are being planned."""
    before = pending_rotation(bed)
    code, output = pyinfra(bed, runbook, "--dry", "--data", "restore_from=latest")
    assert code != 0, output
    assert "a master-key rotation is pending" in output
    assert "finish it with `pyinfra inventory rotate.py`" in output
    assert f"before running {runbook}" in output
    assert "nothing was changed on any host" in output
    assert (bed / "secrets.env").read_bytes() == before
    assert not (bed / "opt").exists()


@pytest.mark.parametrize("runbook", ["verify.py", "backup.py"])
def test_a_runbook_that_cannot_undo_a_rotation_reports_it_and_runs(bed, runbook):
    before = pending_rotation(bed)
    code, output = pyinfra(bed, runbook, "--dry")
    assert code == 0, output
    assert "a master-key rotation is pending" in output
    assert (bed / "secrets.env").read_bytes() == before


# --- --dry writes nothing, the secrets file included ----------------------------------------------


def test_rotate_dry_leaves_the_secrets_file_byte_identical(bed):
    """`pyinfra INVENTORY rotate.py --dry -vv`: the pending key is planned, not recorded; no key in
    the output."""
    before = (bed / "secrets.env").read_bytes()
    code, output = pyinfra(bed, "rotate.py", "--dry", "-vv")
    assert code == 0, output
    assert (bed / "secrets.env").read_bytes() == before
    assert "Controller: record the new key as LITELLM_MASTER_KEY_NEXT" in output
    for key in S.read_secrets(bed / "secrets.env").values():
        assert key not in output
    assert not (bed / "opt").exists(), "--dry touched the host"


def test_rotate_records_the_pending_key_before_any_host_operation(bed):
    """Without --dry the key is in the secrets file before the first host operation runs (here the
    preflight, which fails: nothing was ever deployed on @local)."""
    old = S.read_secrets(bed / "secrets.env")[S.MASTER_KEY]
    code, output = pyinfra(bed, "rotate.py", "-y")
    assert code != 0, output
    assert "this gateway was never deployed" in output
    values = S.read_secrets(bed / "secrets.env")
    assert values[S.MASTER_KEY] == old and values[S.MASTER_KEY_NEXT].startswith("sk-")
    assert values[S.MASTER_KEY_NEXT] not in output
    assert not (bed / "opt").exists()
