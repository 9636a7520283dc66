"""Settings for the host pyinfra is preparing, built once per run for the whole inventory."""

from __future__ import annotations

from gevent.lock import RLock
from pyinfra.api import Host, State

from tasks import secrets as S
from tasks.filters import dotenv_unquote
from tasks.settings import GATEWAYS, OLLAMA_NODES, HostInput, Settings, build_all
from tasks.uploads import connector_arguments

_built: dict[int, dict[str, Settings]] = {}
# pyinfra prepares hosts in concurrent greenlets; reading a host's .env over SSH yields to the
# next one, which must wait for the first build instead of generating secrets of its own.
_building = RLock()


def read_host_env(host: Host, install_dir: str, names: list[str]) -> dict[str, str]:
    """The named values from a host's existing .env (the one this package wrote).

    Run straight through the connector with output printing off: a pyinfra fact would echo the
    file's lines at -vvv, and these are live secrets.
    """
    ok, output = host.run_shell_command(
        f"cat {install_dir}/.env 2>/dev/null || true",
        print_output=False,
        print_input=False,
        **connector_arguments(host.state, host),
    )
    found: dict[str, str] = {}
    if not ok:
        return found
    for line in output.stdout_lines:
        name, sep, value = line.partition("=")
        if sep and name in names and value:
            found[name] = dotenv_unquote(value)
    return found


def _hosts(state: State, group: str) -> list[Host]:
    return list(state.inventory.get_group(group, default=[]))


def all_settings(state: State) -> dict[str, Settings]:
    with _building:
        return _all_settings(state)


def _all_settings(state: State) -> dict[str, Settings]:
    key = id(state)
    if key not in _built:
        gateways = _hosts(state, GATEWAYS)

        def read_from_hosts(names: list[str]) -> dict[str, str]:
            found: dict[str, str] = {}
            for gateway in gateways:
                if gateway.connected:
                    install_dir = gateway.data.get("install_dir", "/opt/litellm")
                    for name, value in read_host_env(gateway, install_dir, names).items():
                        found.setdefault(name, value)
            return found

        configured = gateways[0].data.get("secrets_file") if gateways else None
        _built[key] = build_all(
            [HostInput(h.name, h.data.get) for h in gateways],
            [HostInput(h.name, h.data.get) for h in _hosts(state, OLLAMA_NODES)],
            S.secrets_path(configured),
            read_from_hosts,
        )
    return _built[key]


def settings_for(state: State, host: Host) -> Settings | None:
    """This host's Settings, or None when it is not a gateway (an Ollama node, say)."""
    return all_settings(state).get(host.name)
