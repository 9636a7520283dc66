"""Runbook for a LiteLLM gateway: `pyinfra inventory deploy.py`.

Every host in the inventory is validated first (all problems at once, nothing touched on bad input);
then, in order: the db and redis hosts (db_hosts, redis_hosts); on each gateway Docker, images,
files, database, proxy (rolled behind load balancers), TLS front, verification, keys; last, the load
balancers (lb_hosts). Each step waits for the one before on every host (tasks/lib/barrier.py).
"""

from pyinfra import host, state

from tasks.balancer import deploy_load_balancer
from tasks.context import load_balancer_for, runbook_settings, state_host_for
from tasks.deploy_gateway import deploy_gateway
from tasks.lib.barrier import every_host_here
from tasks.state_hosts import deploy_state_host

settings = runbook_settings(state, host, "deploy.py")

# Shared state (tasks/config/topology.py): a db_hosts / redis_hosts host gets Docker and its one service.
state_host = state_host_for(state, host)
if state_host is not None:
    deploy_state_host(host=state_host)

# The database and Valkey are up before any gateway migrates or starts its proxy.
every_host_here(name="State hosts done", what="the db and redis hosts are ready before the gateways")

if settings is not None:
    deploy_gateway(settings=settings)

# The load balancers come after the gateways' roll.
every_host_here(name="Gateways done", what="the gateways' stages are behind every host")

# Load balancers: Caddy, TLS, every gateway health-checked (tasks/balancer.py).
balancer = load_balancer_for(state, host)
if balancer is not None:
    deploy_load_balancer(lb=balancer)
