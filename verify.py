"""Check every gateway without changing anything: `pyinfra inventory verify.py`."""

from pyinfra import host, state

from tasks.context import runbook_settings
from tasks.verify import verify_gateway

settings = runbook_settings(state, host, "verify.py")

if settings is not None:
    verify_gateway(settings)
