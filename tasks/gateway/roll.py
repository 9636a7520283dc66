"""Rolling a change across gateways behind load balancers: at most roll_width gateways at a time are
drained from every load balancer, recreated, verified and re-admitted, so clients see no failed
request. The first gateway that fails stops the roll: the gateways not rolled yet keep serving their
running containers (the previous configuration), and every one of them is reported failed, saying so.

How it runs in pyinfra. pyinfra executes one operation at a time on every host at once (a greenlet
per host), and the next operation only when all hosts finished this one. Three mechanisms were weighed:
  - one operation per step (drain, recreate, readmit) with `_serial` or `_parallel=N`: wrong, every
    gateway would be drained (in batches) before the first one is recreated;
  - `_parallel=roll_width` on one operation doing all steps: batches count every active host of the
    inventory (load balancers, database hosts), a batch waits for its slowest member, and a failure
    in one batch does not stop the next one;
  - one operation per gateway whose command is a Python callback (a FunctionCommand, what python.call
    yields) running the whole drain -> recreate -> verify -> readmit sequence for its host, with the
    callbacks of all gateways sharing one `Roll` for the run: a gevent semaphore of roll_width slots
    (the callbacks run in pyinfra's greenlets, so it bounds them exactly), a lock around every change
    of the load balancers' configuration, and a stop flag a failure sets before its slot is released.
    The load balancers are other hosts of the same run: their connections (state.inventory) are used
    directly with run_shell_command. This is the mechanism used.
Whether a gateway needs recreating at all is decided the way tasks.gateway.stack.start_proxy decides it (its
files or images changed, or the proxy is not healthy), plus a marker left by an unfinished roll: the
files of a gateway the roll stopped before are already new, so the next deploy must still roll it.

Draining is a graceful configuration reload of Caddy (`caddy reload` through its admin API, inside
the container) with a Caddyfile that leaves the gateway out: new requests go to the others at once,
requests in flight finish on the old configuration (grace_period). Caddy's active health checks are
not used for draining: they take effect only after an interval, and a failing check is no promise
about requests already sent.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable

import gevent.lock
from pyinfra import host, logger, state
from pyinfra.api import Host, State, operation
from pyinfra.api.command import FunctionCommand
from pyinfra.facts.files import File

from tasks.config.registry import run_get, run_value
from tasks.config.settings import Settings
from tasks.gateway import verify
from tasks.lib import compose
from tasks.lib.uploads import connector_arguments

PENDING = ".state/roll-pending"  # in a gateway's install_dir: its new files are not running yet


def pending_path(install_dir: str) -> str:
    return f"{install_dir.rstrip('/')}/{PENDING}"


@dataclass
class Roll:
    """The roll of one run, shared by every gateway's callback. The load-balancer side is given as
    functions so the logic is tested without hosts (tests/unit/test_roll.py)."""

    width: int
    # (gateways out of the rotation) -> None; raises RollError when a load balancer refused.
    apply: Callable[[frozenset[str]], None]
    drained: set[str] = field(default_factory=set)  # out of the rotation now (a failed one stays out)
    failed: dict[str, str] = field(default_factory=dict)  # gateway -> why its roll failed
    not_rolled: dict[str, str] = field(default_factory=dict)  # gateway -> why it was left as it runs
    stopped_by: str | None = None
    log: list[tuple[str, str, float]] = field(default_factory=list)  # (gateway, event, time)

    def __post_init__(self):
        self.slots = gevent.lock.BoundedSemaphore(self.width)
        self.lock = gevent.lock.RLock()

    def run(
        self,
        gateway: str,
        recreate: Callable[[], str | None],
        verified: Callable[[], str | None],
        pending: Callable[[bool], None],
        serving: bool = True,
    ) -> str | None:
        """One gateway's turn: None when it rolled, else why it failed. recreate/verified return a
        problem or None; pending(True/False) sets or clears the gateway's unfinished-roll marker.
        serving: its proxy is running. One that is not (a first deploy, a crashed proxy) takes no slot:
        taking it out of the rotation costs no capacity, so it need not wait for the others."""
        with self.slots if serving else contextlib.nullcontext():
            if self.stopped_by is not None:
                left = (
                    "this gateway keeps serving its running proxy with the previous configuration"
                    if serving
                    else "this gateway's proxy, not running, was not started"
                )
                why = (
                    f"not rolled: the roll stopped when {self.stopped_by} failed; {left} (its new files are "
                    "in place, and the next deploy rolls it)"
                )
                self.not_rolled[gateway] = why
                pending(True)
                return why
            pending(True)
            self._event(gateway, "drain")
            problem = self._change(gateway, drain=True)
            if problem is None:
                problem = recreate()
            if problem is None:
                problem = verified()
            if problem is not None:
                # Stop before the slot is released: a gateway waiting for it must see the flag.
                self.stopped_by = self.stopped_by or gateway
                self.failed[gateway] = problem
                self._event(gateway, "failed")
                # It stays out of the rotation: its proxy is new and unverified.
                return (
                    f"{problem}; the roll stopped here: it stays out of the load balancers' rotation, and "
                    "the gateways not rolled yet keep serving the previous configuration"
                )
            problem = self._change(gateway, drain=False)
            if problem is not None:
                self.stopped_by = self.stopped_by or gateway
                self.failed[gateway] = problem
                return problem
            pending(False)
            self._event(gateway, "readmitted")
            return None

    def _change(self, gateway: str, drain: bool) -> str | None:
        with self.lock:
            wanted = (self.drained | {gateway}) if drain else (self.drained - {gateway})
            try:
                self.apply(frozenset(wanted))
            except RollError as error:
                return f"could not {'drain it from' if drain else 're-admit it to'} the load balancers: {error}"
            self.drained = set(wanted)
            return None

    def _event(self, gateway: str, event: str) -> None:
        self.log.append((gateway, event, time.time()))

    @property
    def held(self) -> frozenset[str]:
        """Gateways the load balancers must keep out once the roll ended: the ones that failed it."""
        return frozenset(self.failed)


class RollError(RuntimeError):
    pass


# --- the run's roll, on real hosts -----------------------------------------------------------------


def run_roll(st: State, width: Callable[[], int], apply: Callable[[frozenset[str]], None]) -> Roll:
    """The run's roll, made while the deploy is planned (never by the callbacks themselves, which run
    side by side). The load-balancer side comes from the caller (tasks/context.py gateway_roll):
    the width of the roll and how a rotation is applied to the load balancers."""
    return run_value(st, Roll, lambda: Roll(width=width(), apply=apply))


def held_out(st: State) -> frozenset[str]:
    """The gateways this run's roll left out of the rotation (failed mid-roll); none without a roll."""
    roll = run_get(st, Roll)
    return roll.held if roll else frozenset()


def _shell(st: State, hst: Host, command: str) -> tuple[bool, list[str], list[str]]:
    ok, output = hst.run_shell_command(command, print_output=False, print_input=False, **connector_arguments(st, hst))
    return ok, output.stdout_lines, output.stderr_lines


def roll_gateway(state: State, host: Host, roll: Roll, settings: Settings, force: bool, serving: bool) -> bool:
    """The FunctionCommand of one gateway (pyinfra passes state and host: this gateway)."""
    marker = shlex.quote(pending_path(settings.install_dir))

    def pending(on: bool) -> None:
        _shell(state, host, f'mkdir -p "$(dirname {marker})" && touch {marker}' if on else f"rm -f {marker}")

    def recreate() -> str | None:
        up = compose.up_command(
            settings.compose_project, settings.install_dir, compose.PROXY_SERVICE, force, settings.start_timeout
        )
        ok, _, stderr = _shell(state, host, up)
        return None if ok else "the proxy did not come up: " + " / ".join(line for line in stderr[-5:] if line.strip())

    def verified() -> str | None:
        spec = verify.container_spec(settings)
        command = verify.ContainerChecks().command(settings.compose_project, settings.install_dir, spec)
        ok, stdout, _ = _shell(state, host, command)
        try:
            results = json.loads(stdout[-1])
        except (IndexError, ValueError):
            return "verification could not run in the proxy container"
        failures = [f"{r['name']}: {r['problem']}" for r in results if not r["ok"]]
        return f"verification failed: {'; '.join(failures)}" if failures else None

    host.log(
        f"roll: draining, recreating, verifying (at most {roll.width} gateway(s) at a time)"
        if serving
        else "roll: proxy not running, so recreated without waiting for the others",
        logger.info,
    )
    problem = roll.run(host.name, recreate, verified, pending, serving)
    if problem is None:
        host.log("roll: verified and back in the load balancers' rotation", logger.info)
        return True
    host.log_styled(f"roll: {problem}", fg="red", log_func=logger.error)
    return False


@operation()
def proxy_rolled(roll: Roll, settings: Settings, changes):
    """The proxy recreated through the roll when its files or image changed, it is not healthy, or
    an earlier roll did not reach it; otherwise nothing."""
    service = host.get_fact(
        compose.ComposeServices, project=settings.compose_project, install_dir=settings.install_dir
    ).get(compose.PROXY_SERVICE)
    unfinished = bool(host.get_fact(File, path=pending_path(settings.install_dir)))
    force = compose.changed([changes.config_file]) or unfinished
    serving = compose.is_up(service)
    if serving and not force and not compose.changed(changes.project):
        host.noop("proxy is running and healthy, nothing it depends on changed")
        return
    yield FunctionCommand(roll_gateway, (roll, settings, force, serving), {})


def rolling(start_proxy: Callable, roll_of: Callable[[State], Roll]) -> Callable:
    """The proxy-start stage, rolled when the gateway is behind load balancers; unchanged otherwise.
    roll_of(state): the run's roll (tasks/context.py gateway_roll)."""

    def start(settings: Settings, changes, **op_args):
        if not settings.behind_load_balancer:
            return start_proxy(settings, changes, **op_args)
        return proxy_rolled(
            name="LiteLLM proxy rolled (drained, recreated, verified, re-admitted)",
            roll=roll_of(state),
            settings=settings,
            changes=changes,
            **op_args,
        )

    return start
