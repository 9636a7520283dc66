"""Runbook for a LiteLLM gateway: `pyinfra inventory deploy.py`.

Every gateway in the inventory is validated first (all problems at once, nothing touched on bad
input); then, on each gateway, in order: Docker, images, files, database, proxy, verification.
"""

from pyinfra import host, state

from tasks.context import settings_for
from tasks.deploy_gateway import deploy_gateway
from tasks.rotate import refuse_during_rotation

settings = settings_for(state, host)
# A half-finished master-key rotation is finished with rotate.py; a deploy now would put the old
# key back on gateways that already have the new one.
refuse_during_rotation(state)

if settings is not None:
    deploy_gateway(settings)
