"""Check every gateway without changing anything: `pyinfra inventory verify.py`."""

from pyinfra import host, state

from tasks.context import runbook_settings
from tasks.gateway.verify import verify_gateway
from tasks.key_converge import keys_verified

# Read-only: the secrets file is never completed or written here (values a gateway holds are
# used for this run only).
settings = runbook_settings(state, host, "verify.py", complete=False)

if settings is not None:
    verify_gateway(settings=settings)
    # Every declared virtual key authenticates and sees its models; blocked and absent ones are refused.
    if settings.virtual_keys:
        keys_verified(name="Virtual keys authenticate as declared", settings=settings)
