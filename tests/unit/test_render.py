"""Rendered files: parse as their consumers parse them, hold no secret but .env, never churn."""

import asyncio
import json
import os
import shutil
import subprocess
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from tasks.config.filters import dotenv_unquote
from tasks.lib.render import COMPOSE_FILE, render_files
from tests.unit.conftest import ROOT, UPSTREAM_KEY

MODES = ["bundled", "external", "none"]
HOSTILE = "p$a$$b ${HOME} #x \"q\" 'r' \\s @:/% end"
EXTERNAL_URL = "postgresql://ext:ext-password-123@db.example.com:5432/litellm"


def compose_binary() -> str | None:
    local = ROOT / ".tools" / "docker-compose"
    return str(local) if local.exists() else shutil.which("docker-compose")


@pytest.fixture
def settings_for_mode(build, secrets_file):
    def _make(mode, extra_secrets=""):
        secrets_file.write_text(secrets_file.read_text() + f'DATABASE_URL="{EXTERNAL_URL}"\n' + extra_secrets)
        return build(database_mode=mode)

    return _make


def parse_env(text: str) -> dict:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: dotenv_unquote(value) for name, value in pairs}


@pytest.mark.parametrize("mode", MODES)
def test_rendered_yaml_parses_and_holds_no_secret(settings_for_mode, mode):
    settings = settings_for_mode(mode)
    rendered = render_files(settings)
    compose = yaml.safe_load(rendered["docker-compose.yml"])
    config = yaml.safe_load(rendered["litellm-config.yaml"])
    assert set(compose["services"]) == {"bundled": {"db", "migrate", "litellm"},
                                         "external": {"migrate", "litellm"}, "none": {"litellm"}}[mode]
    assert [m["model_name"] for m in config["model_list"]] == [m.name for m in settings.models]
    secret_values = [v for v in settings.secrets.values.values() if len(v) >= 8]
    for name in ("docker-compose.yml", "litellm-config.yaml"):
        for value in secret_values:
            assert value not in rendered[name], f"a secret is in {name}"
    env = parse_env(rendered[".env"])
    assert env["LITELLM_MASTER_KEY"] == settings.secrets.master_key


def test_compose_file_shape(settings_for_mode):
    compose = yaml.safe_load(render_files(settings_for_mode("bundled"))["docker-compose.yml"])
    db, proxy, migrate = (compose["services"][s] for s in ("db", "litellm", "migrate"))
    assert "ports" not in db  # Postgres is on no host interface unless asked
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert "python3" in proxy["healthcheck"]["test"] and "/health/liveliness" in " ".join(proxy["healthcheck"]["test"])
    assert proxy["depends_on"] == {"db": {"condition": "service_healthy"},
                                   "migrate": {"condition": "service_completed_successfully"}}
    assert db["restart"] == proxy["restart"] == "unless-stopped"
    assert "host.docker.internal:host-gateway" in proxy["extra_hosts"]
    assert compose["volumes"] == {"postgres_data": None, "postgres_socket": None}
    assert migrate["entrypoint"] == ["python3", "litellm/proxy/prisma_migration.py"]


def test_published_postgres_binds_loopback_only(build):
    compose = yaml.safe_load(render_files(build(postgres_publish_port=5433))["docker-compose.yml"])
    assert compose["services"]["db"]["ports"] == ["127.0.0.1:5433:5432"]


@pytest.mark.parametrize("mode", MODES)
def test_every_worker_keeps_a_key_for_key_cache_ttl_only(settings_for_mode, build, mode):
    """LiteLLM's default keeps a key 60 s in each worker, so a revoked key kept working that long on the
    workers and gateways that did not serve the revocation; the shipped setting keeps it under 1 s."""
    from tasks.config.settings import DEFAULTS

    config = yaml.safe_load(render_files(settings_for_mode(mode))["litellm-config.yaml"])
    assert config["general_settings"]["user_api_key_cache_ttl"] == DEFAULTS["key_cache_ttl"] <= 0.5
    slower = yaml.safe_load(render_files(build(database_mode=mode, key_cache_ttl=5))["litellm-config.yaml"])
    assert slower["general_settings"]["user_api_key_cache_ttl"] == 5


@pytest.mark.parametrize("mode", MODES)
def test_rendering_twice_is_byte_identical(settings_for_mode, mode):
    settings = settings_for_mode(mode)
    assert render_files(settings) == render_files(settings)


def test_litellm_loads_every_rendered_config_and_resolves_each_reference(build, tmp_path, monkeypatch):
    """LiteLLM's own ProxyConfig loads the file; os.environ/ refs resolve from the rendered .env."""
    from litellm.proxy.proxy_server import ProxyConfig

    settings = build(database_mode="none")
    rendered = render_files(settings)
    config_path = tmp_path / "litellm-config.yaml"
    config_path.write_text(rendered["litellm-config.yaml"])
    env = parse_env(rendered[".env"])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    router, model_list, general_settings = asyncio.run(
        ProxyConfig().load_config(router=None, config_file_path=str(config_path)))
    assert sorted(m["model_name"] for m in model_list) == sorted(m.name for m in settings.models)
    deployments = {d["model_name"]: d["litellm_params"] for d in router.model_list}
    assert deployments["upstream"]["api_key"] == UPSTREAM_KEY
    assert deployments["llama-smarthome"]["api_base"] == "http://192.0.2.20:11434"
    import litellm.proxy.proxy_server as proxy

    assert proxy.master_key == settings.secrets.master_key
    # Applied to the key objects' own partition of the auth cache, where revoked keys lingered.
    assert proxy.user_api_key_cache.key_object_cache.default_in_memory_ttl == settings.key_cache_ttl


@pytest.mark.skipif(compose_binary() is None, reason="Compose v2 binary not fetched (tests/tools/fetch-compose.sh)")
@pytest.mark.parametrize("mode", ["bundled", "external"])
def test_hostile_passwords_reach_containers_unchanged_as_compose_reads_them(settings_for_mode, tmp_path, mode):
    """Docker Compose 2.26 itself (Debian 13's, as on the hosts) parses the rendered project."""
    settings = settings_for_mode(mode, f'POSTGRES_PASSWORD="{HOSTILE_DOTENV}"\nUI_PASSWORD="{HOSTILE_DOTENV}"\n')
    assert settings.secrets["UI_PASSWORD"] == HOSTILE
    for name, content in render_files(settings).items():
        (tmp_path / name).write_text(content)
    result = subprocess.run([compose_binary(), "--project-directory", str(tmp_path), "config", "--format", "json"],
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "UI_"))})
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    proxy_env = container_view(services["litellm"]["environment"])
    assert proxy_env["UI_PASSWORD"] == HOSTILE
    if mode == "bundled":
        assert container_view(services["db"]["environment"])["POSTGRES_PASSWORD"] == HOSTILE
        assert proxy_env["POSTGRES_PASSWORD"] == HOSTILE
        # Through Postgres' socket, with no password in the URL (LiteLLM puts it on a command line).
        url = urlsplit(proxy_env["DATABASE_URL"])
        assert url.password is None and HOSTILE not in proxy_env["DATABASE_URL"]
        assert url.query == "host=/var/run/postgresql"
        assert unquote(url.username) == "litellm" and url.path == "/litellm"
        socket = "postgres_socket:/var/run/postgresql"
        assert {v["source"] + ":" + v["target"] for v in services["db"]["volumes"]} >= {socket}
        for service in ("litellm", "migrate"):
            mounts = {v["source"] + ":" + v["target"]: v.get("read_only") for v in services[service]["volumes"]}
            assert mounts.get(socket) is True, f"{service} does not get the socket read-only: {mounts}"
    else:
        assert proxy_env["DATABASE_URL"] == EXTERNAL_URL


def container_view(environment: dict) -> dict:
    """`compose config` prints a loadable compose file, so it writes each literal `$` as `$$`."""
    return {name: value.replace("$$", "$") for name, value in environment.items()}


# The same hostile value as the secrets file holds it (python-dotenv double-quoted syntax).
HOSTILE_DOTENV = HOSTILE.replace("\\", "\\\\").replace('"', '\\"')


# --- issue 15, defect 8: air-gapped and long-running hosts -----------------------------------------


@pytest.fixture
def archives_settings(build, tmp_path):
    archive = tmp_path / "images.tar"
    archive.write_bytes(b"not read by the renderer")
    return build(image_source="archives", image_archives=[str(archive)])


def test_air_gapped_proxy_uses_the_price_list_inside_its_image(archives_settings, build):
    env = parse_env(render_files(archives_settings)[".env"])
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert "LITELLM_LOCAL_MODEL_COST_MAP" not in parse_env(render_files(build())[".env"])


@pytest.mark.parametrize("mode", MODES)
def test_every_service_rotates_its_logs_as_set(settings_for_mode, mode):
    from dataclasses import replace

    settings = replace(settings_for_mode(mode), log_max_size="50m", log_max_file=5)
    services = yaml.safe_load(render_files(settings)["docker-compose.yml"])["services"]
    for name, service in services.items():
        assert service["logging"] == {"driver": "json-file", "options": {"max-size": "50m", "max-file": "5"}}, name


def test_postgres_gets_time_to_shut_down_cleanly(settings_for_mode):
    services = yaml.safe_load(render_files(settings_for_mode("bundled"))["docker-compose.yml"])["services"]
    assert services["db"]["stop_grace_period"] == "60s"


@pytest.mark.skipif(compose_binary() is None, reason="Compose v2 binary not fetched (tests/tools/fetch-compose.sh)")
@pytest.mark.parametrize("mode", MODES)
def test_compose_itself_reads_log_rotation_and_grace_period(settings_for_mode, tmp_path, mode):
    """Docker Compose 2.26 (Debian 13's) loads the project and keeps what the engine will get."""
    for name, content in render_files(settings_for_mode(mode), start_interval=True).items():
        (tmp_path / name).write_text(content)
    result = subprocess.run([compose_binary(), "--project-directory", str(tmp_path), "config", "--format", "json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name, service in services.items():
        assert service["logging"] == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}, name
    if mode == "bundled":
        assert services["db"]["stop_grace_period"] == "1m0s"
        assert (services["db"]["healthcheck"]["interval"], services["db"]["healthcheck"]["start_interval"]) == ("10s", "1s")
    assert services["litellm"]["healthcheck"]["start_interval"] == "2s"


def test_health_checks_give_a_starting_container_start_timeout(build):
    """A slow start (a loaded host) is not a failure before start_timeout, the bound deploy waits."""
    compose = yaml.safe_load(render_files(build(start_timeout=420))[COMPOSE_FILE])
    for service in ("db", "litellm"):
        assert compose["services"][service]["healthcheck"]["start_period"] == "420s"


@pytest.mark.parametrize("mode", MODES)
def test_only_an_external_database_gets_libpq_files_and_psql_reads_them_mounted(settings_for_mode, mode):
    """DATABASE_URL parsed once here into libpq's service and password files; psql and pg_dump on the
    host get them mounted read-only and never a value on their command line."""
    from tasks.config import pgservice
    from tasks.gateway import database

    settings = settings_for_mode(mode)
    rendered = render_files(settings)
    libpq = {pgservice.SERVICE_FILE, pgservice.PASSWORD_FILE}
    if mode != "external":
        assert not libpq & rendered.keys()
        return
    assert rendered[pgservice.SERVICE_FILE].splitlines()[1:] == [
        "host=db.example.com", "port=5432", "dbname=litellm", "user=ext"]
    assert rendered[pgservice.PASSWORD_FILE] == "*:*:*:ext:ext-password-123\n"
    for command in (database.psql(settings), database.psql(settings, "--format=custom", program="pg_dump")):
        assert "ext-password-123" not in command and "DATABASE_URL" not in command
        for name in libpq:
            assert f"/opt/litellm/{name}:{database.CONTAINER_PG_DIR}/{name}:ro" in command
        assert f"PGSERVICE={pgservice.SERVICE}" in command


def test_a_database_url_libpq_cannot_hold_is_refused_before_any_host(build, secrets_file):
    from tasks.config.settings import ConfigError

    secrets_file.write_text(secrets_file.read_text() + 'DATABASE_URL="postgresql://u:a%0Ab@db.example.com/l"\n')
    with pytest.raises(ConfigError) as refused:
        build(database_mode="external")
    assert "DATABASE_URL: the password holds a line break" in str(refused.value)


@pytest.mark.parametrize("start_interval", [False, True])
def test_the_proxy_is_checked_often_while_it_starts_only_where_the_engine_can(build, start_interval):
    """start_interval (Docker Engine 25+, tasks/lib/docker.py) makes `up --wait` see a started proxy within
    2 s instead of 10; on an older engine Compose would refuse the key, so it is left out there."""
    check = yaml.safe_load(render_files(build(), start_interval=start_interval)[COMPOSE_FILE])["services"]["litellm"]["healthcheck"]
    assert check["interval"] == "10s"
    assert check.get("start_interval") == ("2s" if start_interval else None)


@pytest.mark.parametrize("start_interval", [False, True])
def test_the_bundled_postgres_is_checked_rarely_once_healthy_where_the_engine_can(build, start_interval):
    """A check is a process started in the container, about 60 ms of CPU: every 10 s once healthy and every
    second while starting where the engine takes start_interval, every 2 s where it cannot; 60 s of failed
    checks before unhealthy either way (tasks/lib/render.py DATA_HEALTH)."""
    rendered = render_files(build(database_mode="bundled"), start_interval=start_interval)[COMPOSE_FILE]
    check = yaml.safe_load(rendered)["services"]["db"]["healthcheck"]
    assert (check["interval"], check.get("start_interval")) == (("10s", "1s") if start_interval else ("2s", None))
    assert int(check["interval"].rstrip("s")) * check["retries"] == 60
