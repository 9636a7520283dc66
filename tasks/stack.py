"""The gateway's compose project: its files, its images, and bringing services up.

Each step returns what it changed, so later steps restart exactly what needs it (the chatmail
relay's "restart signal" pattern): a new model recreates the proxy, never the database.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from tasks import compose
from tasks.render import COMPOSE_FILE, CONFIG_FILE, ENV_FILE, render_files
from tasks.settings import Settings
from tasks.uploads import private_file


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


# Compose file and config hold no secret; .env holds them all.
FILE_MODES = {COMPOSE_FILE: "644", CONFIG_FILE: "644", ENV_FILE: "600"}


def staging_dir(settings: Settings) -> str:
    return f"{settings.install_dir}/.staging"


@deploy("Compose project files")
def write_files(settings: Settings, changes: Changes) -> None:
    files.directory(
        name=f"Install directory {settings.install_dir} (root only)",
        path=settings.install_dir,
        user="root",
        group="root",
        mode="700",
    )
    rendered = render_files(settings)
    written = {
        name: private_file(
            name=f"Write {name}" + (" (secrets, mode 0600)" if mode == "600" else ""),
            content=rendered[name],
            dest=f"{settings.install_dir}/{name}",
            staging_dir=staging_dir(settings),
            mode=mode,
        )
        for name, mode in FILE_MODES.items()
    }
    changes.compose_file, changes.config_file, changes.env_file = (written[n] for n in FILE_MODES)


def required_images(settings: Settings) -> list[str]:
    images = [settings.litellm_image]
    if settings.database_mode in ("bundled", "external"):
        # external mode runs psql from the Postgres image as a one-shot container.
        images.append(settings.postgres_image)
    return images


@operation()
def image_present(image: str):
    """Pull a pinned image only when it is not on the host yet."""
    if host.get_fact(compose.ImageId, image=image):
        host.noop(f"{image} is present")
        return
    yield f"docker pull --quiet {shlex.quote(image)}"


@operation()
def archives_loaded(uploads: dict[str, OperationMeta], images: list[str]):
    """`docker load` the uploaded archives that are new, or all of them when an image is missing;
    then insist every image the project needs is there."""
    missing = [image for image in images if not host.get_fact(compose.ImageId, image=image)]
    to_load = list(uploads) if missing else [path for path, meta in uploads.items() if compose.changed([meta])]
    if not to_load:
        host.noop(f"{len(images)} image(s) loaded from {len(uploads)} archive(s)")
        return
    for remote_archive in to_load:
        yield f"docker load --input {shlex.quote(remote_archive)}"
    for image in missing:
        # Fail here, naming the image, rather than later with a confusing compose error.
        yield (
            f"docker image inspect {shlex.quote(image)} >/dev/null 2>&1 || "
            f"{{ echo 'none of the image archives contains {image}' >&2; exit 1; }}"
        )


@deploy("Container images")
def get_images(settings: Settings, changes: Changes) -> None:
    images = required_images(settings)
    if settings.image_source == "pull":
        changes.images = [image_present(name=f"Image {image}", image=image) for image in images]
        return
    archive_dir = f"{settings.install_dir}/images"
    files.directory(name=f"Image archive directory {archive_dir}", path=archive_dir, mode="700")
    uploads = {}
    for archive in settings.image_archives:
        remote = f"{archive_dir}/{Path(archive).name}"
        uploads[remote] = files.put(name=f"Upload image archive {Path(archive).name}", src=archive, dest=remote, mode="600")
    changes.images = [archives_loaded(name="Load images from the archives", uploads=uploads, images=images)]


@deploy("Start the database")
def start_database(settings: Settings, changes: Changes) -> None:
    if settings.database_mode != "bundled":
        return
    compose.service_up(
        name="Postgres up and healthy",
        project=settings.compose_project,
        install_dir=settings.install_dir,
        service=compose.DB_SERVICE,
        depends_on=changes.project,
        timeout=settings.start_timeout,
    )


@deploy("Start the proxy")
def start_proxy(settings: Settings, changes: Changes):
    return compose.service_up(
        name="LiteLLM proxy up and healthy",
        project=settings.compose_project,
        install_dir=settings.install_dir,
        service=compose.PROXY_SERVICE,
        depends_on=changes.project,
        recreate_on=[changes.config_file],
        timeout=settings.start_timeout,
    )
