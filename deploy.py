"""Runbook for a LiteLLM gateway: `pyinfra inventory deploy.py`.

Every gateway in the inventory is validated first (all problems at once, nothing touched on bad
input); then, on each gateway, in order: Docker, images, files, database, proxy, verification.
Load balancers (lb_hosts) come after the gateways: pyinfra orders operations by the line of their
call here, so every gateway's operations run before any load balancer's.
"""

from pyinfra import host, state

from tasks.balancer import deploy_load_balancer
from tasks.context import load_balancer_for, runbook_settings
from tasks.deploy_gateway import deploy_gateway

settings = runbook_settings(state, host, "deploy.py")

if settings is not None:
    deploy_gateway(settings)

# Load balancers: Caddy, TLS, every gateway health-checked (tasks/balancer.py).
balancer = load_balancer_for(state, host)
if balancer is not None:
    deploy_load_balancer(balancer)
