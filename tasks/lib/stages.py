"""A runbook's stages: named steps that a caller may run under pyinfra global arguments and whose
operations it may want to see afterwards (tasks.gateway.upgrade holds the errors of an upgrade's stages and
rolls back when one failed).

A stage knows nothing of that: it is a function and its arguments, as the runbook would call it
(the chatmail relay's deployers know nothing of CMDEPLOY_STAGES either).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pyinfra import host, state
from pyinfra.api.operation import OperationMeta


@dataclass(frozen=True)
class Stage:
    label: str  # what failed, in a report: "the database migration"
    run: Callable[..., Any]  # an @operation or @deploy function
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __call__(self, **op_args) -> list[OperationMeta]:
        """Adds the stage's operations with `op_args` (pyinfra global arguments: _if, _ignore_errors)
        for the current host; returns them, in order."""
        added = len(host.op_hash_order)  # pyinfra's append-only list of the host's operations
        self.run(*self.args, **self.kwargs, **op_args)
        return [state.get_op_data_for_host(host, op_hash).operation_meta for op_hash in host.op_hash_order[added:]]


def stage(label: str, run: Callable[..., Any], *args, **kwargs) -> Stage:
    """stage("starting the proxy", stack.start_proxy, settings, changes): one line of a runbook."""
    return Stage(label, run, args, kwargs)


def run_plainly(stages: list[Stage]) -> None:
    """In order, as a runbook calls them: the first failure stops the host."""
    for each in stages:
        each()
