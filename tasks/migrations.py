"""Schema migrations as a one-shot compose service, run before the proxy starts.

The image decides the schema, so migrations run when the image on the host is not the one last
migrated with (recorded by image ID under .state/), and never otherwise: a re-run stays quiet.
A failed migration stops this host's deploy before the proxy is started.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation

from tasks.compose import ImageId, compose_cmd


def marker_path(install_dir: str) -> str:
    return f"{install_dir}/.state/migrated-image-id"


class MigratedImageId(FactBase):
    def command(self, install_dir: str) -> str:
        return f"cat {shlex.quote(marker_path(install_dir))} 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output and output[0].strip() else None


@operation()
def schema_migrated(project: str, install_dir: str, image: str):
    image_id = host.get_fact(ImageId, image=image)
    if image_id and host.get_fact(MigratedImageId, install_dir=install_dir) == image_id:
        host.noop(f"schema already migrated with {image}")
        return
    marker = shlex.quote(marker_path(install_dir))
    yield (
        f"{compose_cmd(project, install_dir)} run --rm -T migrate || "
        "{ echo 'database migration failed (output above); the proxy was not started' >&2; exit 1; }"
    )
    yield (
        f"mkdir -p \"$(dirname {marker})\" && "
        f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)} > {marker}"
    )
