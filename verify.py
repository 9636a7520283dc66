"""Check every gateway without changing anything: `pyinfra inventory verify.py`."""

from pyinfra import host, state

from tasks.context import runbook_settings
from tasks.verify import verify_gateway

# Read-only: the secrets file is never completed or written here (values a gateway holds are
# used for this run only).
settings = runbook_settings(state, host, "verify.py", complete=False)

if settings is not None:
    verify_gateway(settings)
