"""The gateway's compose project: its files, its images, and bringing services up.

Each step returns what it changed, so later steps restart exactly what needs it (the chatmail
relay's "restart signal" pattern): a new model recreates the proxy, never the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from tasks.config import pgservice, sizing
from tasks.config.settings import Settings
from tasks.lib import compose, docker
from tasks.lib.component import ComposeComponent
from tasks.lib.render import COMPOSE_FILE, CONFIG_FILE, ENV_FILE, render_files


@dataclass
class Changes:
    """What this run changed, for the steps that decide on restarts."""

    compose_file: OperationMeta | None = None
    config_file: OperationMeta | None = None
    env_file: OperationMeta | None = None
    images: list[OperationMeta | None] | None = None

    @property
    def project(self) -> list[OperationMeta | None]:
        """Changes that concern every service of the project."""
        return [self.compose_file, self.env_file, *(self.images or [])]


# Compose file and config hold no secret; .env holds them all, and libpq's files of an external
# database (rendered in that mode only) its address and password.
FILE_MODES = {
    COMPOSE_FILE: "644",
    CONFIG_FILE: "644",
    ENV_FILE: "600",
    pgservice.SERVICE_FILE: "600",
    pgservice.PASSWORD_FILE: "600",
}


def component(settings: Settings) -> ComposeComponent:
    """The gateway's compose project, in the lifecycle every component shares (tasks/lib/component.py)."""
    return ComposeComponent(settings.install_dir, settings.compose_project, settings.start_timeout)


def staging_dir(settings: Settings) -> str:
    return component(settings).staging_dir


def install_directory(settings: Settings):
    """The project's directory, root only, before anything goes into it (image archives, files)."""
    return component(settings).directory()


@deploy("Compose project files")
def write_files(settings: Settings, changes: Changes) -> None:
    # The worker count for this host's CPUs and memory, when proxy_workers is "auto" (tasks/config/sizing.py).
    # The proxy's health checked every 2 s while it starts, when the host's engine can (tasks/lib/docker.py).
    rendered = render_files(
        sizing.sized(settings), start_interval=docker.health_start_interval_supported(settings.docker_install)
    )
    project = component(settings)
    written = {name: project.write(name, rendered[name], mode) for name, mode in FILE_MODES.items() if name in rendered}
    for name in (name for name in FILE_MODES if name not in rendered):
        # An external database's credentials do not outlive a switch to another database mode.
        files.file(
            name=f"No {name} (only an external database uses it)", path=f"{settings.install_dir}/{name}", present=False
        )
    changes.compose_file, changes.config_file, changes.env_file = (
        written[n] for n in (COMPOSE_FILE, CONFIG_FILE, ENV_FILE)
    )


def required_images(settings: Settings) -> dict[str, str]:
    """{setting: image} of the images the project runs, so an error can name the setting to fix."""
    images = {"litellm_image": settings.litellm_image}
    if settings.database_mode in ("bundled", "external"):
        # external mode runs psql from the Postgres image as a one-shot container.
        images["postgres_image"] = settings.postgres_image
    if settings.tls != "off":
        images["tls_image"] = settings.tls_image  # the TLS front (tasks/gateway/tls.py)
    return images


def archive_dir(settings: Settings) -> str:
    return component(settings).path("images")


@deploy("Container images")
def get_images(settings: Settings, changes: Changes) -> None:
    """The images on the host and checked, before any file of the project is written: on an upgrade a
    mistyped tag or an unreachable registry must fail the host while the old image still serves."""
    changes.images = component(settings).images(
        settings.image_source, settings.image_archives, required_images(settings)
    )


@deploy("Start the database")
def start_database(settings: Settings, changes: Changes) -> None:
    if settings.database_mode != "bundled":
        return
    component(settings).up(compose.DB_SERVICE, name="Postgres up and healthy", depends_on=changes.project)


@deploy("Start the proxy")
def start_proxy(settings: Settings, changes: Changes):
    return component(settings).up(
        compose.PROXY_SERVICE,
        name="LiteLLM proxy up and healthy",
        depends_on=changes.project,
        recreate_on=[changes.config_file],
    )
