"""Teams and virtual keys alone: `pyinfra inventory keys.py`.

Every gateway is validated first (nothing touched on bad input); then, on one gateway per database,
the declared teams and keys (group data `teams`, `virtual_keys`) are made true through the proxy's
API, checked, and listed: alias, team, models, budget, spend, expiry, state. Key values are never
shown; they stay in the secrets file.
"""

from pyinfra import host, state

from tasks.context import runbook_settings
from tasks.key_converge import converge_access

settings = runbook_settings(state, host, "keys.py")

if settings is not None:
    converge_access(settings=settings)
