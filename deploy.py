"""Runbook for a LiteLLM gateway: `pyinfra inventory deploy.py`.

Every gateway in the inventory is validated first (all problems at once, nothing touched on bad
input); then, on each gateway, in order: Docker, images, files, database, proxy, verification.
Load balancers (lb_hosts) come after the gateways, behind an operation every host shares.
"""

from pyinfra import host, state

from tasks.balancer import deploy_load_balancer
from tasks.barrier import every_host_here
from tasks.context import load_balancer_for, runbook_settings
from tasks.deploy_gateway import deploy_gateway

settings = runbook_settings(state, host, "deploy.py")

if settings is not None:
    deploy_gateway(settings)

# Every host waits here for the gateways: pyinfra orders hosts that share no operation side by side
# (tasks/barrier.py), and the load balancers must come after the gateways' roll.
every_host_here(name="Gateways done", what="the gateways' stages are behind every host")

# Load balancers: Caddy, TLS, every gateway health-checked (tasks/balancer.py).
balancer = load_balancer_for(state, host)
if balancer is not None:
    deploy_load_balancer(balancer)
