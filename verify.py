"""Check every gateway without changing anything: `pyinfra inventory verify.py`."""

from pyinfra import host, state

from tasks.context import settings_for
from tasks.verify import verify_gateway

settings = settings_for(state, host)

if settings is not None:
    verify_gateway(settings)
