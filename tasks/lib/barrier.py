"""One operation every host of the run shares, so that what a runbook adds after it runs after what
it added before it, on every host.

pyinfra 3 does not order a run's operations by their line in deploy.py alone: it sorts them
topologically over each host's own sequence (State.get_op_order), and uses line numbers only to break
ties. Two hosts that share no operation have independent sequences, and their operations run side
by side: seen on the bed, a load balancer's whole deploy ran while the gateways were still migrating.
An operation called at one line for every host joins the sequences: every host's operations before
it come first.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation


@operation(is_idempotent=True)
def every_host_here(what: str):
    """Changes nothing; its place in the order is the point."""
    host.noop(what)
    yield from ()  # an operation is a generator, even one that never yields a command
