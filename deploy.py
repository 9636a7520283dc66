"""Runbook for a LiteLLM gateway: `pyinfra inventory deploy.py`.

Every gateway in the inventory is validated first (all problems at once, nothing touched on bad
input); then, on each gateway, in order: Docker, images, files, database, proxy, verification.
"""

from pyinfra import host, state

from tasks.context import runbook_settings, state_host_for
from tasks.deploy_gateway import deploy_gateway
from tasks.state_hosts import deploy_state_host

settings = runbook_settings(state, host, "deploy.py")

# Shared state (tasks/topology.py): a db_hosts / redis_hosts host gets Docker and its one service.
# pyinfra orders operations by the line of their call, so this call stays ABOVE the gateway's: the
# database and Valkey are up before any gateway migrates or starts its proxy.
state_host = state_host_for(state, host)
if state_host is not None:
    deploy_state_host(state_host)

if settings is not None:
    deploy_gateway(settings)
