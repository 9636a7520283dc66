"""One compose project on a host: the lifecycle the gateway, the load balancers and the db and redis
hosts share. Each stage returns what it changed, and a service is (re)started from those changes only
(the chatmail relay's restart signals):

  directory()  the project's directory, root only (0700), before anything goes into it
  images()     the images pulled, or their archives uploaded and loaded, and checked (tasks/lib/images.py)
  write()      a rendered file, never readable by others on its way (staged beside it, renamed over it)
  up()         a service up and healthy, recreated when what it depends on changed (tasks/lib/compose.py)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from tasks.lib import compose
from tasks.lib.images import images_on_host
from tasks.lib.uploads import private_file


@dataclass(frozen=True)
class ComposeComponent:
    install_dir: str
    project: str  # the compose project's name
    start_timeout: int  # seconds a service may take to be healthy

    @property
    def staging_dir(self) -> str:
        """Where a file is staged before it is renamed into place (root only, on the same filesystem)."""
        return f"{self.install_dir}/.staging"

    def path(self, name: str) -> str:
        return f"{self.install_dir}/{name}"

    def directory(self) -> OperationMeta:
        return files.directory(
            name=f"Install directory {self.install_dir} (root only)",
            path=self.install_dir,
            user="root",
            group="root",
            mode="700",
        )

    def images(self, image_source: str, image_archives: Sequence[str], images: dict[str, str]) -> list:
        """`images` ({setting: image}) on the host; archives go to the project's images/ directory."""
        return images_on_host(image_source, image_archives, self.path("images"), images)

    def write(self, name: str, content: str, mode: str, label: str | None = None, **op_args) -> OperationMeta:
        """The file `name` of the project with `content` and `mode`; `label` names the operation
        (default: "Write <name>", and that it holds secrets when it is 0600). op_args: pyinfra's global
        arguments (an attempt's _ignore_errors and _if, tasks/lib/attempt.py)."""
        return private_file(
            name=label or f"Write {name}" + (" (secrets, mode 0600)" if mode == "600" else ""),
            content=content,
            dest=self.path(name),
            staging_dir=self.staging_dir,
            mode=mode,
            **op_args,
        )

    def up(
        self,
        service: str,
        name: str,
        depends_on: Sequence[OperationMeta | None],
        recreate_on: Sequence[OperationMeta | None] = (),
        **op_args,
    ) -> OperationMeta:
        return compose.service_up(
            name=name,
            project=self.project,
            install_dir=self.install_dir,
            service=service,
            depends_on=depends_on,
            recreate_on=recreate_on,
            timeout=self.start_timeout,
            **op_args,
        )
