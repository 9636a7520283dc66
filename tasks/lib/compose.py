"""Facts and operations around one Docker Compose project on a host.

pyinfra's own docker.compose always reports a change; these read the project's state first and
call host.noop() when there is nothing to do, so a second deploy reports no change.
"""

from __future__ import annotations

import json
import shlex
from typing import Iterable, Sequence

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.api.operation import OperationMeta

LOG_LINES = 40
# The services of templates/gateway/docker-compose.yml.j2 that operations name.
PROXY_SERVICE = "litellm"
DB_SERVICE = "db"


def compose_cmd(project: str, install_dir: str) -> str:
    return f"docker compose --project-name {shlex.quote(project)} --project-directory {shlex.quote(install_dir)}"


class ComposeServices(FactBase):
    """service -> {"state": "running", "health": "healthy", "id": ...} for the project's containers."""

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    @staticmethod
    def default() -> dict:
        return {}

    def command(self, project: str, install_dir: str) -> str:
        return f"{compose_cmd(project, install_dir)} ps --all --format json 2>/dev/null || true"

    def process(self, output: list[str]) -> dict:
        services: dict[str, dict] = {}
        text = "\n".join(output).strip()
        if not text:
            return services
        # Compose < 2.21 prints one JSON array, later versions one object per line.
        rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in output if line.strip()]
        for row in rows:
            services[row["Service"]] = {
                "state": row.get("State", ""),
                "health": row.get("Health", ""),
                "id": row.get("ID", ""),
            }
        return services


class ImageId(FactBase):
    """The local image ID of a reference, or None when the image is not on the host."""

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, image: str) -> str:
        return f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)} 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output and output[0].strip() else None


def changed(metas: Iterable[OperationMeta | None]) -> bool:
    """Whether any of these operations changed something in this run.

    Asked at execution time; before that (pyinfra's change preview) the answer is unknown, so
    count it as a change there rather than promise a no-op.
    """
    for meta in metas:
        if meta is None:
            continue
        try:
            if meta.did_change():
                return True
        except RuntimeError:
            return True
    return False


def is_up(service: dict | None) -> bool:
    if not service:
        return False
    return service["state"] == "running" and service["health"] in ("", "healthy")


@operation()
def service_up(
    project: str,
    install_dir: str,
    service: str,
    depends_on: Sequence[OperationMeta | None] | None = None,
    recreate_on: Sequence[OperationMeta | None] | None = None,
    timeout: int = 180,
):
    """`compose up -d --wait` one service when what it depends on changed or it is not healthy.

    recreate_on: changes compose cannot see (a bind-mounted config file), which force a recreate.
    """
    state = host.get_fact(ComposeServices, project=project, install_dir=install_dir).get(service)
    force = changed(recreate_on or [])
    if is_up(state) and not force and not changed(depends_on or []):
        host.noop(f"{service} is running and healthy, nothing it depends on changed")
        return
    yield up_command(project, install_dir, service, force, timeout)


def up_command(project: str, install_dir: str, service: str, force: bool, timeout: int) -> str:
    """`up --wait` for one service; a container the engine created but could not start is tried once more.

    Seen on loaded hosts: runc fails a start now and then ("OCI runtime create failed ... read init-p:
    connection reset by peer") and leaves the container in state "created". That is the engine, not
    the service, so one more start is right; a container that started and then failed is not retried
    (its logs name the cause, and waiting out its health check twice would double the failure time).
    On failure the command quotes the container's last log lines, so the error names the cause.
    """
    base = compose_cmd(project, install_dir)
    flags = "--force-recreate " if force else ""
    quoted = shlex.quote(service)
    up = f"{base} up --detach --wait --wait-timeout {int(timeout)} --no-deps {flags}{quoted}"
    never_started = f"[ \"$({base} ps --all --format '{{{{.State}}}}' {quoted})\" = created ]"
    retry = f"{base} up --detach --wait --wait-timeout {int(timeout)} --no-deps {quoted}"
    return (
        f"{up} || {{ {never_started} && echo 'service {service}: the engine could not start its container; "
        f"trying once more' >&2 && {retry}; }} || "
        f"{{ echo \"service {service} (container $({base} ps --all --format '{{{{.Name}}}}' {quoted})) "
        f'did not become healthy; its last {LOG_LINES} log lines:" >&2; '
        f"{base} logs --no-color --tail {LOG_LINES} {quoted} >&2; exit 1; }}"
    )
