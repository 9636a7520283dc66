"""Restore every targeted bundled gateway from a backup (docs/backup.md):

    pyinfra inventory restore.py --limit HOST --data restore_from=latest
    pyinfra inventory restore.py --limit HOST --data restore_from=backups/HOST/20261127T030000Z.dump

The backup is checked on the controller before any operation exists (a bad file changes nothing).
"""

from pyinfra import host, state

from tasks.context import runbook_settings
from tasks.gateway.restore import plan_for, restore_gateway

settings = runbook_settings(state, host, "restore.py")

if settings is not None:
    restore_gateway(settings=settings, plan=plan_for(settings, host.data.get("restore_from")))
