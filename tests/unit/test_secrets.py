"""The secrets file: generated once, stable, private, reused from hosts, never published."""

import stat
import subprocess

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all

from tasks.config import secrets as S
from tasks.config.filters import dotenv_quote
from tasks.context import read_host_env
from tasks.lib.render import render_files
from tests.unit.conftest import ROOT, UPSTREAM_KEY

GENERATED = ["LITELLM_MASTER_KEY", "LITELLM_SALT_KEY", "POSTGRES_PASSWORD", "UI_PASSWORD"]  # a bundled deployment's


def test_generated_once_then_identical(build, secrets_file):
    first = build().secrets
    text_after_first = secrets_file.read_text()
    second = build().secrets
    assert all(first[name] == second[name] for name in GENERATED)
    assert secrets_file.read_text() == text_after_first
    assert first.master_key.startswith("sk-") and len(first.master_key) >= 3 + 43  # 32 random bytes
    assert first["LITELLM_SALT_KEY"] != first.master_key
    assert first["UPSTREAM_LITELLM_API_KEY"] == UPSTREAM_KEY  # provider keys are read, kept


def test_secrets_file_is_0600_and_keeps_user_lines(build, secrets_file):
    secrets_file.write_text("# my comment\n" + secrets_file.read_text())
    secrets_file.chmod(0o600)
    build()
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    text = secrets_file.read_text()
    assert text.startswith("# my comment\n") and f'UPSTREAM_LITELLM_API_KEY="{UPSTREAM_KEY}"' in text


def test_created_secrets_file_is_0600(build, secrets_file):
    secrets_file.unlink()
    build(models=[{"name": "m", "model": "ollama_chat/llama3", "ollama_node": "local"}])
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600


def test_provider_keys_are_never_generated(build, secrets_file):
    secrets_file.unlink()
    try:
        build()
    except Exception as error:
        assert "UPSTREAM_LITELLM_API_KEY" in str(error)
    else:
        raise AssertionError("a missing provider key must be an error, not generated")


def test_missing_values_are_taken_from_the_host_before_generating(build, secrets_file):
    live = {"LITELLM_MASTER_KEY": "sk-live-" + "k" * 40, "LITELLM_SALT_KEY": "sk-salt-" + "s" * 40}
    settings = build(host_envs={"gw1": live})
    assert settings.secrets.master_key == live["LITELLM_MASTER_KEY"]
    assert settings.secrets["LITELLM_SALT_KEY"] == live["LITELLM_SALT_KEY"]
    # ...and written back, so the next run needs no host at all.
    assert build(host_envs={"gw1": {}}).secrets.master_key == live["LITELLM_MASTER_KEY"]
    assert "# LITELLM_SALT_KEY: taken from gw1:/opt/litellm/.env" in secrets_file.read_text()


def test_read_host_env_reads_back_what_the_deploy_wrote(build, tmp_path):
    """Through a real pyinfra connector (@local), from a .env rendered by the deploy's templates."""
    hostile = "p$HOME'\"\\#x $$y"
    settings = build()
    install_dir = tmp_path / "opt"
    install_dir.mkdir()
    env_text = render_files(settings)[".env"].replace(
        dotenv_quote(settings.secrets["UI_PASSWORD"]), dotenv_quote(hostile))
    (install_dir / ".env").write_text(env_text)
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    host = state.inventory.get_host("@local")
    found = read_host_env(host, str(install_dir), ["LITELLM_MASTER_KEY", "UI_PASSWORD", "NOT_THERE"])
    assert found == {"LITELLM_MASTER_KEY": settings.secrets.master_key, "UI_PASSWORD": hostile}
    assert read_host_env(host, str(tmp_path / "missing"), ["LITELLM_MASTER_KEY"]) == {}
    # A .env this user cannot read is "not read" (None), never "no .env" ({}).
    (install_dir / ".env").unlink()
    (install_dir / ".env").mkdir()  # cat fails on it, as on a file this user may not read
    assert read_host_env(host, str(install_dir), ["LITELLM_MASTER_KEY"]) is None


def test_written_values_read_back_with_python_dotenv(tmp_path):
    path = tmp_path / "s.env"
    hostile = {"A": "p$x ${HOME} #' \" \\ end", "B": "line1\nline2"}
    S.append_secrets(path, hostile, {k: "test" for k in hostile})
    assert S.read_secrets(path) == hostile


def test_no_published_credential_anywhere_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert tracked, "git ls-files found nothing"
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            text = path.read_text(errors="replace")
            # Whitespace splits words; a published value contains none.
            if any(S.is_published(word) for word in set(text.split())):
                offenders.append(name)
    assert offenders == []


def test_read_host_env_escalates_as_the_host_is_configured(tmp_path):
    """`--sudo` (config) or `_sudo` in host data: the .env (root-only) is read with sudo, as facts are.
    This machine has no sudo: the connector's arguments are checked, not run."""
    state = State(Inventory((["@local"], {})), Config(SUDO=True, SUDO_PASSWORD="not-used"))
    connect_all(state)
    host = state.inventory.get_host("@local")
    seen = {}

    def run_shell_command(command, **arguments):
        seen.update(arguments)
        return False, None

    host.connector.run_shell_command = run_shell_command
    assert read_host_env(host, str(tmp_path), ["LITELLM_MASTER_KEY"]) is None
    assert seen["_sudo"] is True and seen["_sudo_password"] == "not-used"
    assert seen["print_output"] is False and seen["print_input"] is False
