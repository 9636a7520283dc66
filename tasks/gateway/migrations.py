"""Schema migrations as a one-shot compose service, run before the proxy starts.

The image decides the schema, so migrations run when the image on the host is not the one last
migrated with (recorded by image ID under .state/), and never otherwise: a re-run stays quiet.
A failed migration stops this host's deploy before the proxy is started.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation

from tasks.lib.compose import ImageId, compose_cmd


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
        f'mkdir -p "$(dirname {marker})" && '
        f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)} > {marker}"
    )


# --- a database shared by several gateways (a db host's, tasks/config/topology.py) --------------------------

# The key `prisma migrate deploy` (and the bed's psql migration job) holds while it migrates.
PRISMA_ADVISORY_LOCK = 72707369
# "ready" once the ledger exists, no migration is half-applied and nobody holds the migration lock.
SCHEMA_READY_SQL = f"""SELECT CASE WHEN to_regclass('public._prisma_migrations') IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = {PRISMA_ADVISORY_LOCK} AND granted)
  THEN 'schema-' || (SELECT count(*) FROM public._prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL)
  ELSE 'schema-missing' END;
"""


class SchemaReady(FactBase):
    """True when the shared database's schema is migrated and no migration runs now (psql: the
    gateway's own invocation for its database, tasks.gateway.database.psql; the SQL on its stdin)."""

    def command(self, psql: str) -> str:
        return f"echo {shlex.quote(SCHEMA_READY_SQL)} | {psql} -A -t 2>/dev/null || true"

    def process(self, output: list[str]) -> bool:
        return any(line.strip() == "schema-0" for line in output)


@operation()
def schema_waited(psql: str, owner: str, timeout: int):
    """A gateway that does not migrate the shared database waits, up to `timeout` seconds, for the one
    that does (`owner`): the schema ledger there, nothing half-applied, the migration lock free."""
    if host.get_fact(SchemaReady, psql=psql):
        host.noop(f"the shared schema is migrated (by {owner})")
        return
    check = f"echo {shlex.quote(SCHEMA_READY_SQL)} | {psql} -A -t 2>/dev/null | grep -qx schema-0"
    yield (
        f"deadline=$(( $(date +%s) + {int(timeout)} )); until {check}; do "
        f"if [ $(date +%s) -ge $deadline ]; then echo 'the shared database schema is not migrated after {int(timeout)} s: "
        f"{owner} migrates it (run the deploy on {owner} too, or see its output)' >&2; exit 1; fi; sleep 1; done"
    )
