"""Settings for the host pyinfra is preparing, built once per run for the whole inventory."""

from __future__ import annotations

import shlex
from pathlib import Path

from gevent.lock import RLock
from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.api.state import BaseStateCallback

from tasks import balancer, key_guard, topology
from tasks import secrets as S
from tasks.filters import dotenv_unquote
from tasks.balancer import LoadBalancer
from tasks.key_guard import Completion, HostEnvs
from tasks.rotation.pending import rotation_guard
from tasks.settings import (GATEWAYS, OLLAMA_NODES, HostInput, Settings, build_everything, needed_secrets,
                            read_host_data, refuse_node_group)
from tasks.topology import DB_HOSTS, REDIS_HOSTS, StateHost, wanted_secrets
from tasks.uploads import connector_arguments

_built: dict[int, dict[str, Settings]] = {}
_built_state: dict[int, dict[str, StateHost]] = {}  # the db and redis hosts (tasks/topology.py), same keys
# pyinfra prepares hosts in concurrent greenlets; reading a host's .env over SSH yields to the
# next one, which must wait for the first build instead of generating secrets of its own.
_building = RLock()


def read_host_env(host: Host, install_dir: str, names: list[str]) -> dict[str, str] | None:
    """The named values from a host's existing .env (the one this package wrote): {} when the host
    has none, None when it cannot be read (a directory this user may not enter, a failed command).

    Run straight through the connector with output printing off: a pyinfra fact would echo the
    file's lines at -vvv, and these are live secrets.
    """
    directory = shlex.quote(install_dir.rstrip("/") or "/")
    env = shlex.quote(f"{install_dir.rstrip('/')}/.env")
    # The host's own privilege settings (_sudo in its data, --sudo, a sudo password), as a fact gets them.
    ok, output = host.run_shell_command(
        f"if [ -x {directory} ] || [ ! -e {directory} ]; then [ ! -e {env} ] || cat {env}; else exit 1; fi",
        print_output=False,
        print_input=False,
        **connector_arguments(host.state, host),
    )
    if not ok:
        return None
    found: dict[str, str] = {}
    for line in output.stdout_lines:
        name, sep, value = line.partition("=")
        if sep and name in names and value:
            found[name] = dotenv_unquote(value)
    return found


def _hosts(state: State, group: str) -> list[Host]:
    return list(state.inventory.get_group(group, default=[]))


def _install_dir(gateway: Host) -> str:
    return str(read_host_data(gateway.data.get)["install_dir"])


def gateway_envs(gateways: list[Host], secrets_file: Path, state_wanted: tuple[str, ...] = ()) -> HostEnvs:
    """The generated secrets in every connected gateway's .env (key_guard compares them with the
    secrets file). When the file lacks one that some gateway needs, the gateways not connected
    (--limit left them out) are connected too, only to read their .env: one may hold the live value.
    A gateway that cannot be read is left out, and tasks.key_guard refuses to generate in its place."""
    present = S.read_secrets(secrets_file)
    wanted = {name for g in gateways for name in needed_secrets(read_host_data(g.data.get)["database_mode"])}
    wanted |= set(state_wanted)  # the db and redis hosts' generated secrets: the gateways' .env hold them too
    missing = sorted(name for name in wanted if name in S.GENERATED and not present.get(name))
    names = sorted({*S.GENERATED, *key_guard.GUARDED})
    envs: dict[str, dict[str, str] | None] = {}
    for gateway in gateways:
        opened = False
        if missing and not gateway.connected:
            gateway.connect(reason=f"only to read its .env: the secrets file lacks {', '.join(missing)}")
            opened = gateway.connected
        if gateway.connected:
            envs[gateway.name] = read_host_env(gateway, _install_dir(gateway), names)
        if opened:
            gateway.disconnect()
    return envs


class _RecordWhenOperationsStart(BaseStateCallback):
    """Writes the secrets file's new entries when the first operation starts on any host: never
    under --dry, nor when the user answers no to pyinfra's prompt, and always before any value
    reaches a host."""

    def __init__(self, secrets_file: Path, completion: Completion):
        self.secrets_file = secrets_file
        self.completion = completion
        self.done = False

    def operation_host_start(self, state: State, host: Host, op_hash) -> None:
        with _building:
            if not self.done:
                S.append_secrets(self.secrets_file, self.completion.additions, self.completion.origin)
                self.done = True


def all_settings(state: State, complete: bool = True) -> dict[str, Settings]:
    with _building:
        return _all_settings(state, complete)


def _all_settings(state: State, complete: bool) -> dict[str, Settings]:
    key = (id(state), complete)
    if key not in _built:
        gateways = _hosts(state, GATEWAYS)
        configured = gateways[0].data.get("secrets_file") if gateways else None
        # group_data/ollama_nodes.py refuses the old node group before pyinfra connects; this is for
        # runs that load no group data.
        refuse_node_group([HostInput(h.name, h.data.get) for h in _hosts(state, OLLAMA_NODES)])
        secrets_file = S.secrets_path(configured)

        def record(path: Path, completion: Completion) -> None:
            logger.warning(f"--> Secrets file {path}: {completion.describe()}; written there when the "
                           "operations start (not with --dry)")
            state.add_callback_handler(_RecordWhenOperationsStart(path, completion))

        _built[key], _built_state[key] = build_everything(
            [HostInput(h.name, h.data.get) for h in gateways],
            secrets_file,
            gateway_envs(gateways, secrets_file, tuple(wanted_secrets(_hosts(state, DB_HOSTS), _hosts(state, REDIS_HOSTS)))),
            complete=complete,
            record=record,
            db_hosts=[HostInput(h.name, h.data.get) for h in _hosts(state, DB_HOSTS)],
            redis_hosts=[HostInput(h.name, h.data.get) for h in _hosts(state, REDIS_HOSTS)],
        )
        _built[key] = _behind_load_balancers(state, _built[key])
    return _built[key]


def state_host_for(state: State, host: Host, complete: bool = True) -> StateHost | None:
    """This host's db/redis services (tasks/topology.py), or None when it is neither."""
    with _building:
        _all_settings(state, complete)
        return _built_state[(id(state), complete)].get(host.name)


# --- load balancers (lb_hosts) ------------------------------------------------------------------

_balancers: dict[int, dict[str, LoadBalancer]] = {}


def _addresses(state: State, group: str) -> dict[str, str]:
    return {h.name: balancer.host_address(h.name, h.data.get) for h in _hosts(state, group)}


def _behind_load_balancers(state: State, gateways: dict[str, Settings]) -> dict[str, Settings]:
    """With lb_hosts in the inventory, every gateway's proxy is published for them (and localhost) only."""
    if not _hosts(state, balancer.LB_HOSTS):
        return gateways
    lb_sources = {h.name: topology.private_address(topology.StateInput(h.name, h.data.get))
                  for h in _hosts(state, balancer.LB_HOSTS)}
    return balancer.placed_behind(gateways, _addresses(state, GATEWAYS), lb_sources)


def load_balancers(state: State) -> dict[str, LoadBalancer]:
    """Every load balancer of the inventory, validated with the gateways they front."""
    with _building:
        if id(state) not in _balancers:
            _balancers[id(state)] = balancer.build_load_balancers(
                [HostInput(h.name, h.data.get) for h in _hosts(state, balancer.LB_HOSTS)],
                all_settings(state), _addresses(state, balancer.LB_HOSTS))
        return _balancers[id(state)]


def load_balancer_for(state: State, host: Host) -> LoadBalancer | None:
    """This host's load balancer settings, or None when it is not in lb_hosts."""
    return load_balancers(state).get(host.name)


def settings_for(state: State, host: Host, complete: bool = True) -> Settings | None:
    """This host's Settings, or None when it is not a gateway.
    complete=False for runbooks that only read (verify.py): nothing generated, nothing written."""
    return all_settings(state, complete).get(host.name)


def runbook_settings(state: State, host: Host, runbook: str, complete: bool = True) -> Settings | None:
    """settings_for, as every runbook starts: the whole inventory validated, then the rotation guard
    (tasks.rotation.pending.DURING_ROTATION says what `runbook` does while a rotation is pending)."""
    settings = settings_for(state, host, complete)
    rotation_guard(state, runbook)
    return settings
