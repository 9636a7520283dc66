"""The db host's PostgreSQL and the redis host's Valkey, each in a compose project of its own.

A host only in db_hosts / redis_hosts gets Docker and its one service, nothing else: the install
directory (`<install_dir>-db`, `<install_dir>-redis`, root only), the image, docker-compose.yml and
.env (0600; pg_hba.conf for the db), the service up and healthy, published on the host's private
address only, and the firewall (tasks/lib/firewall.py) letting in only the gateways' addresses.
deploy.py calls this before the gateways' deploy, so both are up before any gateway migrates.
"""

from __future__ import annotations

from typing import cast

from pyinfra.api import HiddenValue, deploy

from tasks.config import secrets as S
from tasks.config.settings import Settings
from tasks.config.topology import DB_PORT, REDIS_PORT, StateHost
from tasks.gateway import backup, database
from tasks.lib import docker, firewall
from tasks.lib.component import ComposeComponent
from tasks.lib.render import data_health, environment

PORTS = {"db": DB_PORT, "redis": REDIS_PORT}
COMPOSE_FILE = "docker-compose.yml"
ENV_FILE = ".env"
HBA_FILE = "pg_hba.conf"


def service_env(host: StateHost, service: str) -> dict[str, str]:
    if service == "db":
        return {
            "POSTGRES_USER": host.postgres_user,
            "POSTGRES_PASSWORD": host.secrets[S.POSTGRES_PASSWORD],
            "POSTGRES_DB": host.postgres_db,
        }
    return {S.REDIS_PASSWORD: host.secrets[S.REDIS_PASSWORD]}


def render_service(host: StateHost, service: str, start_interval: bool = False) -> dict[str, str]:
    """file name -> content for one service's directory. Pure, so a re-run uploads nothing. start_interval:
    the host's engine takes a health check's start_interval (tasks/lib/docker.py)."""
    env = environment()
    rendered = {
        COMPOSE_FILE: env.get_template(f"state_hosts/{service}-compose.yml.j2").render(
            host=host, port=PORTS[service], data_health=data_health(start_interval)
        ),
        ENV_FILE: env.get_template("env.j2").render(env=service_env(host, service)),
    }
    if service == "db":
        rendered[HBA_FILE] = env.get_template("state_hosts/pg_hba.conf.j2").render(host=host)
    return rendered


FILE_MODES = {COMPOSE_FILE: "644", ENV_FILE: "600", HBA_FILE: "644"}


def images(host: StateHost) -> dict[str, str]:
    wanted = {}
    if "db" in host.services:
        wanted["postgres_image"] = host.postgres_image
    if "redis" in host.services:
        wanted["redis_image"] = host.redis_image
    return wanted


@deploy("Shared state host")
def deploy_state_host(host: StateHost) -> None:
    docker.install_docker(settings=host)
    loaded = _images(host)
    for service in host.services:
        _service(host, service, loaded)


def component(host: StateHost, service: str) -> ComposeComponent:
    """A service's compose project, in the lifecycle every component shares (tasks/lib/component.py)."""
    return ComposeComponent(host.service_dir(service), host.service_project(service), host.start_timeout)


def _images(host: StateHost) -> list:
    first = component(host, host.services[0])
    if host.image_source == "archives":  # the archives' directory is inside the first service's
        first.directory()
    return first.images(host.image_source, host.image_archives, images(host))


def _service(host: StateHost, service: str, loaded: list) -> None:
    compose_project = component(host, service)
    directory = compose_project.install_dir
    compose_project.directory()
    if service == "db":
        # Postgres applies POSTGRES_PASSWORD only when it initialises a database: a changed one goes to
        # the role first, while the .env still holds the old one (a failure here leaves both as they were).
        database.role_password(
            name=f"Database role {host.postgres_user}: {S.POSTGRES_PASSWORD} from the secrets file",
            psql=database.compose_psql(compose_project.project, directory, host.postgres_user, host.postgres_db),
            install_dir=directory,
            compose_project=compose_project.project,
            role=host.postgres_user,
            password=HiddenValue(host.secrets[S.POSTGRES_PASSWORD]),
        )
    start_interval = docker.health_start_interval_supported(host.docker_install)
    written = {
        name: compose_project.write(
            name,
            content,
            FILE_MODES[name],
            label=f"Write {directory}/{name}" + (" (secrets, mode 0600)" if FILE_MODES[name] == "600" else ""),
        )
        for name, content in render_service(host, service, start_interval).items()
    }
    # In DOCKER-USER before the port is published: dockerd already runs (install_docker), and the
    # service's first start must not be open to all until the rules follow.
    firewall.port_only_from(service=compose_project.project, port=PORTS[service], sources=host.allowed)
    what = "PostgreSQL" if service == "db" else "Valkey"
    compose_project.up(
        service,
        name=f"{what} up and healthy (db host)" if service == "db" else f"{what} up and healthy (redis host)",
        depends_on=[written[COMPOSE_FILE], written[ENV_FILE], *loaded],
        # pg_hba.conf is bind-mounted: compose cannot see it change.
        recreate_on=[written[HBA_FILE]] if HBA_FILE in written else [],
    )
    if service == "db" and host.backup is not None:
        # Scheduled pg_dump backups of the shared database, on the db host (backup_enabled, backup_schedule).
        # StateHost.backup is a Settings (tasks/config/settings.py backup_view), typed object in topology.py.
        backup.scheduled_backup(settings=cast(Settings, host.backup))
