"""Runbook for a LiteLLM gateway: `pyinfra inventory deploy.py`.

Every gateway in the inventory is validated first (all problems at once, nothing touched on bad
input); then, on each gateway, in order: Docker, images, files, database, proxy, verification.
"""

from pyinfra import host, state

from tasks.context import runbook_settings
from tasks.deploy_gateway import deploy_gateway

settings = runbook_settings(state, host, "deploy.py")

if settings is not None:
    deploy_gateway(settings)
