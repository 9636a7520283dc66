"""Render the three files of a gateway's compose project from Settings.

Pure: same Settings in, same bytes out (no timestamps, stable ordering), so a re-run uploads
nothing and restarts nothing. Both the deploy and the unit tests call this.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from tasks.config import pgservice
from tasks.config import secrets as S
from tasks.config.filters import FILTERS, url_component
from tasks.config.settings import AUTO_WORKERS, Settings
from tasks.config.tls_config import FRONT_RANGES
from tasks.config.tls_config import base_url as tls_base_url
from tasks.config.topology import REDIS_PORT

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
COMPOSE_FILE = "docker-compose.yml"
CONFIG_FILE = "litellm-config.yaml"
ENV_FILE = ".env"
# Bundled mode: the proxy and the migrate job reach Postgres through its Unix socket, shared from the db
# container by a volume. The socket trusts local users (the official image's pg_hba), so DATABASE_URL
# holds no password: LiteLLM's schema check at proxy start passes DATABASE_URL on a command line
# (`prisma migrate diff --from-url`), where every user of the host can read it.
POSTGRES_SOCKET_DIR = "/var/run/postgresql"


def environment() -> jinja2.Environment:
    """The one Jinja environment of the package's templates: undefined names fail, quoting lives in the
    filters (tasks/config/filters.py), blocks leave no blank lines."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


def bundled_database_url(settings: Settings) -> str:
    """Prisma's form for a socket: the directory in `host=`; the URL's own host is not used."""
    return (
        f"postgresql://{url_component(settings.postgres_user)}@localhost/{url_component(settings.postgres_db)}"
        f"?host={POSTGRES_SOCKET_DIR}"
    )


def container_env(settings: Settings) -> dict[str, str]:
    """Every variable the containers get from .env, in a fixed order."""
    secrets = settings.secrets
    env = {
        "LITELLM_MASTER_KEY": secrets.master_key,
        "LITELLM_SALT_KEY": secrets[S.SALT_KEY],
        "UI_USERNAME": settings.ui_username,
        "UI_PASSWORD": secrets[S.UI_PASSWORD],
        "LITELLM_MODE": "PRODUCTION",
        "STORE_MODEL_IN_DB": "True" if settings.store_model_in_db else "False",
    }
    if settings.image_source == "archives":
        # An air-gapped host: LiteLLM would fetch its model price list from GitHub at start and
        # wait for the timeout; the copy inside the image is used instead.
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    if settings.proxy_base_url:
        env["PROXY_BASE_URL"] = settings.proxy_base_url
    elif settings.tls != "off":
        # Behind the TLS front, the URL clients use (UI login redirects are built from it).
        env["PROXY_BASE_URL"] = tls_base_url(settings)
    if settings.database_mode == "bundled":
        env["POSTGRES_USER"] = settings.postgres_user
        env["POSTGRES_PASSWORD"] = secrets[S.POSTGRES_PASSWORD]
        env["POSTGRES_DB"] = settings.postgres_db
        env["DATABASE_URL"] = bundled_database_url(settings)
    elif settings.database_mode == "external":
        env["DATABASE_URL"] = secrets[S.DATABASE_URL]
    if settings.has_database:
        # Migrations belong to the one-shot migrate service, never to a starting proxy.
        env["DISABLE_SCHEMA_UPDATE"] = "true"
    env.update(state_env(settings))
    for name in settings.provider_key_names:
        env[name] = secrets[name]
    return env


def state_env(settings: Settings) -> dict[str, str]:
    """Shared state in its own engines (tasks/config/topology.py): the Redis the proxy shares rate limits
    and usage counters through, and, with a db host, its POSTGRES_PASSWORD too, so a lost secrets
    file gets it back from any gateway's .env like the other generated secrets (tasks/config/key_guard.py)."""
    env = {}
    if settings.db_host:
        env["POSTGRES_PASSWORD"] = settings.secrets[S.POSTGRES_PASSWORD]
    if settings.redis_url:
        env["REDIS_URL"] = settings.secrets[S.REDIS_URL]
    elif settings.redis_address:
        env["REDIS_HOST"] = settings.redis_address
        env["REDIS_PORT"] = str(REDIS_PORT)
        env["REDIS_PASSWORD"] = settings.secrets[S.REDIS_PASSWORD]
    return env


def proxy_command(settings: Settings) -> list[str]:
    """The proxy container's command: LiteLLM's CLI after the image's entry point."""
    command = ["--config", "/app/config.yaml", "--port", "4000"]
    if settings.proxy_workers == AUTO_WORKERS:  # not sized for a host (tasks/config/sizing.py): LiteLLM's default
        return command
    command += ["--num_workers", str(settings.proxy_workers)]
    if settings.proxy_workers > 1:
        # Gunicorn (LiteLLM's own --run_gunicorn: Uvicorn workers, the app preloaded) forks the workers from
        # the process that has imported LiteLLM; Uvicorn's supervisor spawns each one to import it again.
        # Two workers on a bed host (2 CPUs): ready in 21 s instead of 34 s, 21 s of CPU instead of 44 s,
        # 0.8 GB resident instead of 1.7 GB, and every change that restarts the proxy (a model, a rotation,
        # a restore, a rollback) waits for that start. Gunicorn also respawns a worker that dies.
        command += ["--run_gunicorn"]
    return command


# The data services' health checks (Postgres, Valkey). Each check is a process started in the container:
# about 60 ms of CPU (measured, pg_isready). Every 2 s that is 3% of a core for as long as the host runs.
# Where the engine takes a start_interval (tasks/lib/docker.py), the check runs every 10 s once healthy and
# every second while the service starts, so `up --wait` sees it ready as soon as before. Unhealthy after
# 60 s of failed checks either way.
DATA_HEALTH = {
    True: {"interval": "10s", "retries": 6, "start_interval": "1s"},
    False: {"interval": "2s", "retries": 30, "start_interval": None},
}


def data_health(start_interval: bool) -> dict:
    return DATA_HEALTH[bool(start_interval)]


def render_files(settings: Settings, start_interval: bool = False) -> dict[str, str]:
    """file name -> content, for the install directory. start_interval: the host's engine takes a health
    check's start_interval (tasks/lib/docker.py)."""
    env = environment()
    rendered = {
        COMPOSE_FILE: env.get_template("gateway/docker-compose.yml.j2").render(
            settings=settings,
            proxy_command=proxy_command(settings),
            start_interval=start_interval,
            data_health=data_health(start_interval),
            postgres_socket_dir=POSTGRES_SOCKET_DIR,
        ),
        CONFIG_FILE: env.get_template("gateway/litellm-config.yaml.j2").render(
            settings=settings, models=settings.models, front_ranges=list(FRONT_RANGES)
        ),
        ENV_FILE: env.get_template("env.j2").render(env=container_env(settings)),
    }
    if settings.database_mode == "external":
        # For psql and pg_dump in one-shot containers (tasks/gateway/database.py psql): DATABASE_URL as libpq's
        # own files, parsed here once, so no shell on the host parses a URL or a dotenv line.
        url = settings.secrets[S.DATABASE_URL]
        rendered[pgservice.SERVICE_FILE] = pgservice.service_file(url)
        rendered[pgservice.PASSWORD_FILE] = pgservice.password_file(url)
    return rendered
