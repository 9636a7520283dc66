"""Back up every bundled gateway's database: `pyinfra inventory backup.py` (docs/backup.md).

On each host: pg_dump (custom format) inside the Postgres container, read back, 0600, sha256,
retention; then a copy on the controller under backups/<host>/<UTC stamp>.dump, checksum verified.
"""

from typing import cast

from pyinfra import host, state

from tasks.config.settings import Settings
from tasks.context import runbook_settings, state_host_for
from tasks.gateway.backup import backup_gateway, utc_stamp

settings = runbook_settings(state, host, "backup.py")

if settings is not None:
    # One stamp per run and host, taken when the operations are added (UTC, sortable).
    backup_gateway(settings=settings, stamp=host.data.get("backup_stamp") or utc_stamp())

# A db host (tasks/config/topology.py): the gateways' shared database, dumped on the db host like a bundled one.
state_host = state_host_for(state, host)
if state_host is not None and state_host.backup is not None:
    # StateHost.backup is a Settings (tasks/config/settings.py backup_view), typed object in topology.py.
    backup_gateway(settings=cast(Settings, state_host.backup), stamp=host.data.get("backup_stamp") or utc_stamp())
