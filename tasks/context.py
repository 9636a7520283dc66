"""Settings for the host pyinfra is preparing, built once per run for the whole inventory."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from gevent.lock import RLock
from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.api.state import BaseStateCallback

from tasks import balancer
from tasks.balancer import LoadBalancer
from tasks.config import certificates, key_guard, tls_config, topology, virtual_keys
from tasks.config import secrets as S
from tasks.config.filters import dotenv_unquote
from tasks.config.key_guard import Completion
from tasks.config.pending_rotation import rotation_guard
from tasks.config.registry import run_get, run_value
from tasks.config.settings import (
    GATEWAYS,
    OLLAMA_NODES,
    ConfigError,
    HostInput,
    Settings,
    build_everything,
    needed_secrets,
    read_host_data,
    refuse_node_group,
)
from tasks.config.topology import DB_HOSTS, REDIS_HOSTS, StateHost, wanted_secrets
from tasks.config.virtual_keys import default_key_env
from tasks.gateway import roll, tls
from tasks.lib.uploads import connector_arguments

# pyinfra prepares hosts in concurrent greenlets; reading a host's .env over SSH yields to the
# next one, which must wait for the first build instead of generating secrets of its own.
_building = RLock()


# Before each file's content in a host read's output: a line no .env this package writes can hold.
_FILE_MARK = "#litellm-deploy-read "


@dataclass
class HostRead:
    """What one host holds of the deployment's state: the asked .env values, and asked files' text
    ("" when the file does not exist)."""

    env: dict[str, str]
    files: dict[str, str] = field(default_factory=dict, repr=False)


def read_host(host: Host, install_dir: str | None, names: list[str], paths: tuple[str, ...] = ()) -> HostRead | None:
    """The named values from a host's existing .env (the one this package wrote in install_dir; {} when
    it has none, or install_dir is None: not a gateway) and the text of `paths`, in one command; None
    when any of it cannot be read (a directory this user may not enter, a failed command).

    Run straight through the connector with output printing off: a pyinfra fact would echo the
    file's lines at -vvv, and these are live secrets.
    """
    directory = shlex.quote((install_dir or "/").rstrip("/") or "/")
    # `echo` after each file: a file without a final newline must not run into the next mark.
    steps = ["true"]
    if install_dir is not None:
        env = shlex.quote(f"{install_dir.rstrip('/')}/.env")
        steps += [f"{{ [ ! -e {env} ] || cat {env}; }}", "echo"]
    for path in paths:
        steps += [
            f"echo {shlex.quote(_FILE_MARK + path)}",
            f"{{ [ ! -e {shlex.quote(path)} ] || cat {shlex.quote(path)}; }}",
            "echo",
        ]
    # The host's own privilege settings (_sudo in its data, --sudo, a sudo password), as a fact gets them.
    ok, output = host.run_shell_command(
        f"if [ -x {directory} ] || [ ! -e {directory} ]; then {' && '.join(steps)}; else exit 1; fi",
        print_output=False,
        print_input=False,
        **connector_arguments(host.state, host),
    )
    if not ok:
        return None
    files: dict[str, list[str]]
    found, files, current = {}, {}, None
    for line in output.stdout_lines:
        if line.startswith(_FILE_MARK):
            current = line[len(_FILE_MARK) :]
            files[current] = []
        elif current is not None:
            files[current].append(line)
        else:
            name, sep, value = line.partition("=")
            if sep and name in names and value:
                found[name] = dotenv_unquote(value)
    return HostRead(env=found, files={path: "\n".join(lines).strip() for path, lines in files.items()})


def read_host_env(host: Host, install_dir: str, names: list[str]) -> dict[str, str] | None:
    """read_host's .env values alone."""
    read = read_host(host, install_dir, names)
    return None if read is None else read.env


def _hosts(state: State, group: str) -> list[Host]:
    return list(state.inventory.get_group(group, default=[]))


def _install_dir(gateway: Host) -> str:
    return str(read_host_data(gateway.data.get)["install_dir"])


def _declared_key_aliases(gateway: Host) -> dict[str, str]:
    """{key_env: alias} of the present keys the gateway's data declares (validated later, with the rest)."""
    found = {}
    for entry in gateway.data.get("virtual_keys") or []:
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("alias"), str)
            and entry.get("state", "present") == "present"
        ):
            key_env = entry.get("key_env", default_key_env(entry["alias"]))
            if isinstance(key_env, str):
                found[key_env] = entry["alias"]
    return found


@dataclass
class ControllerState:
    """What the hosts hold of the state the controller keeps (tasks/config/key_guard.py, tasks/config/certificates.py):
    the gateways' generated secrets (None: not read), the declared keys' values in their root-only
    values file ({alias: value}; None: not read), and the certificate each self-signed front serves."""

    envs: dict[str, dict[str, str] | None] = field(default_factory=dict, repr=False)
    key_values: dict[str, dict[str, str] | None] = field(default_factory=dict, repr=False)
    served: dict[str, tuple[str, bytes | None]] = field(default_factory=dict)


def _self_signed_fronts(state: State) -> dict[Host, str]:
    """Each gateway and load balancer that takes a leaf from the deployment CA -> where it keeps the
    certificate it serves."""
    fronts = {}
    for gateway in _hosts(state, GATEWAYS):
        raw = read_host_data(gateway.data.get)
        if raw["tls"] == "self-signed":
            fronts[gateway] = tls.served_certificate(str(raw["install_dir"]))
    for lb in _hosts(state, balancer.LB_HOSTS):
        raw = read_host_data(lb.data.get)
        if raw["tls"] == "self-signed":
            fronts[lb] = f"{balancer.lb_install_dir(str(raw['install_dir']))}/{balancer.CERT_FILE}"
    return fronts


def read_controller_state(state: State, secrets_file: Path, state_wanted: tuple[str, ...] = ()) -> ControllerState:
    """Every host's copy of the state the controller keeps, read while the plan is built.

    The connected gateways are always read. When the controller lacks a piece some host may hold (a
    generated secret, a declared key's value, the deployment CA), hosts `--limit` left out are connected
    too, only to be read: one may hold the live value. A host that cannot be read is left out (None),
    and tasks.config.key_guard and tasks.config.settings refuse to make a value in its place."""
    gateways = _hosts(state, GATEWAYS)
    present = S.read_secrets(secrets_file)
    wanted = {name for g in gateways for name in needed_secrets(read_host_data(g.data.get)["database_mode"])}
    wanted |= set(state_wanted)  # the db and redis hosts' generated secrets: the gateways' .env hold them too
    missing = sorted(name for name in wanted if name in S.GENERATED and not present.get(name))
    key_aliases = {g.name: _declared_key_aliases(g) for g in gateways}
    missing += sorted({env for aliases in key_aliases.values() for env in aliases if not present.get(env)})
    fronts = _self_signed_fronts(state)
    store = certificates.tls_dir(secrets_file)
    if fronts and not ((store / certificates.CA_CERT).exists() and (store / certificates.CA_KEY).exists()):
        missing.append(f"the deployment CA ({store})")
    names = sorted({*S.GENERATED, *key_guard.GUARDED})
    found = ControllerState()
    for host in [*gateways, *(h for h in fronts if h not in gateways)]:
        opened = False
        if missing and not host.connected:
            host.connect(reason=f"only to read what it holds: this controller lacks {', '.join(missing)}")
            opened = host.connected
        if host.connected:
            is_gateway = host in gateways
            values_file = virtual_keys.values_file(_install_dir(host)) if is_gateway else None
            paths = tuple(p for p in (values_file, fronts.get(host)) if p)
            read = read_host(host, _install_dir(host) if is_gateway else None, names, paths)
            if is_gateway:
                assert values_file is not None  # a gateway's, set above
                found.envs[host.name] = None if read is None else read.env
                found.key_values[host.name] = None if read is None else _key_values(read.files.get(values_file))
            if host in fronts:
                pem = None if read is None else read.files.get(fronts[host])
                found.served[host.name] = (fronts[host], pem.encode() if pem else None)
        if opened:
            host.disconnect()
    return found


def _key_values(text: str | None) -> dict[str, str] | None:
    """{alias: value} of a gateway's values file ({} when it has none; None when it is not one)."""
    if not text:
        return {}
    try:
        values = json.loads(text)
    except ValueError:
        return None
    return values if isinstance(values, dict) else None


class _RecordWhenOperationsStart(BaseStateCallback):
    """Writes the secrets file's new entries when the first operation starts on any host: never
    under --dry, nor when the user answers no to pyinfra's prompt, and always before any value
    reaches a host."""

    def __init__(self, secrets_file: Path, completion: Completion):
        self.secrets_file = secrets_file
        self.completion = completion
        self.done = False

    # The type-ignore: pyinfra's BaseStateCallback declares its callbacks static, yet calls them on the instance.
    def operation_host_start(self, state: State, host: Host, op_hash) -> None:  # type: ignore[override]
        with _building:
            if not self.done:
                S.append_secrets(self.secrets_file, self.completion.additions, self.completion.origin)
                self.done = True


def all_settings(state: State, complete: bool = True) -> dict[str, Settings]:
    with _building:
        return _everything(state, complete)[0]


def settings_built(state: State) -> dict[str, Settings]:
    """The gateways' Settings this run has built so far ({} before any runbook asked for them)."""
    built = run_get(state, _settings_key(complete=True))
    return built[0] if built else {}


def _settings_key(complete: bool) -> tuple[str, bool]:
    return "settings", complete


def _everything(state: State, complete: bool) -> tuple[dict[str, Settings], dict[str, StateHost]]:
    """The gateways' Settings and the db and redis hosts' (tasks/config/topology.py), built once per run."""
    return run_value(state, _settings_key(complete), lambda: _build_everything(state, complete))


def _build_everything(state: State, complete: bool) -> tuple[dict[str, Settings], dict[str, StateHost]]:
    gateways = _hosts(state, GATEWAYS)
    configured = gateways[0].data.get("secrets_file") if gateways else None
    # group_data/ollama_nodes.py refuses the old node group before pyinfra connects; this is for
    # runs that load no group data.
    refuse_node_group([HostInput(h.name, h.data.get) for h in _hosts(state, OLLAMA_NODES)])
    secrets_file = S.secrets_path(configured)

    def record(path: Path, completion: Completion) -> None:
        logger.warning(
            f"--> Secrets file {path}: {completion.describe()}; written there when the "
            "operations start (not with --dry)"
        )
        state.add_callback_handler(_RecordWhenOperationsStart(path, completion))

    held = read_controller_state(
        state, secrets_file, tuple(wanted_secrets(_hosts(state, DB_HOSTS), _hosts(state, REDIS_HOSTS)))
    )
    # Before anything else is made: a run never issues from a CA other than the one the hosts trust.
    if problems := certificates.served_problems(certificates.tls_dir(secrets_file), held.served):
        raise ConfigError(problems)
    gateway_settings, state_hosts = build_everything(
        [HostInput(h.name, h.data.get) for h in gateways],
        secrets_file,
        held.envs,
        host_key_values=held.key_values,
        complete=complete,
        record=record,
        db_hosts=[HostInput(h.name, h.data.get) for h in _hosts(state, DB_HOSTS)],
        redis_hosts=[HostInput(h.name, h.data.get) for h in _hosts(state, REDIS_HOSTS)],
    )
    return _behind_load_balancers(state, gateway_settings), state_hosts


def state_host_for(state: State, host: Host, complete: bool = True) -> StateHost | None:
    """This host's db/redis services (tasks/config/topology.py), or None when it is neither."""
    with _building:
        return _everything(state, complete)[1].get(host.name)


# --- load balancers (lb_hosts) ------------------------------------------------------------------


def _addresses(state: State, group: str) -> dict[str, str]:
    return {h.name: tls_config.host_address(h.name, h.data.get) for h in _hosts(state, group)}


def _behind_load_balancers(state: State, gateways: dict[str, Settings]) -> dict[str, Settings]:
    """With lb_hosts in the inventory, every gateway's proxy is published for them (and localhost) only."""
    if not _hosts(state, balancer.LB_HOSTS):
        return gateways
    lb_sources = {
        h.name: topology.private_address(topology.StateInput(h.name, h.data.get))
        for h in _hosts(state, balancer.LB_HOSTS)
    }
    return balancer.placed_behind(gateways, _addresses(state, GATEWAYS), lb_sources)


def load_balancers(state: State) -> dict[str, LoadBalancer]:
    """Every load balancer of the inventory, validated with the gateways they front."""
    with _building:
        return run_value(
            state,
            LoadBalancer,
            lambda: balancer.build_load_balancers(
                [HostInput(h.name, h.data.get) for h in _hosts(state, balancer.LB_HOSTS)],
                all_settings(state),
                _addresses(state, balancer.LB_HOSTS),
            ),
        )


def gateway_roll(state: State) -> roll.Roll:
    """The run's roll of the gateways behind this inventory's load balancers (tasks/gateway/roll.py)."""
    lb_hosts = [(state.inventory.get_host(name), lb) for name, lb in load_balancers(state).items()]
    return roll.run_roll(
        state,
        width=lambda: balancer.roll_width([lb for _, lb in lb_hosts]),
        apply=lambda out: balancer.apply_to_load_balancers(state, lb_hosts, out),
    )


def load_balancer_for(state: State, host: Host) -> LoadBalancer | None:
    """This host's load balancer settings, or None when it is not in lb_hosts."""
    return load_balancers(state).get(host.name)


def settings_for(state: State, host: Host, complete: bool = True) -> Settings | None:
    """This host's Settings, or None when it is not a gateway.
    complete=False for runbooks that only read (verify.py): nothing generated, nothing written."""
    return all_settings(state, complete).get(host.name)


def runbook_settings(state: State, host: Host, runbook: str, complete: bool = True) -> Settings | None:
    """settings_for, as every runbook starts: the whole inventory validated, then the rotation guard
    (tasks.config.pending_rotation.DURING_ROTATION says what `runbook` does while a rotation is pending)."""
    settings = settings_for(state, host, complete)
    rotation_guard(state, runbook)
    return settings
