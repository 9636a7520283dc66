"""Verification a user runs against their own gateways, any time:

    pytest tests/testinfra --hosts=ssh://root@192.0.2.10 [--litellm-inventory=inventory] \
        [--ssh-identity-file=KEY] [--ssh-extra-args='-o StrictHostKeyChecking=accept-new']

Settings come from the same inventory and group data the deploy used (and the secrets file, only
to know which provider keys exist; nothing is generated or written).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.config.secrets import secrets_path
from tasks.config.settings import GATEWAYS, HostInput, Settings, build_all

ROOT = Path(__file__).resolve().parents[2]


def pytest_addoption(parser):
    parser.addoption("--litellm-inventory", default=os.environ.get("LITELLM_DEPLOY_INVENTORY", "inventory"),
                     help="the pyinfra inventory the gateways were deployed with (default: ./inventory)")


def pytest_collection_modifyitems(config, items):
    """Without --hosts testinfra would test the machine pytest runs on: skip, and say how to run."""
    if config.getoption("hosts", None):
        return
    skip = pytest.mark.skip(reason="checks your gateways: pytest tests/testinfra --hosts=ssh://root@GATEWAY "
                                   "--litellm-inventory=inventory")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def host(_testinfra_host, pytestconfig):
    """testinfra's host, with --ssh-extra-args honoured: pytest-testinfra parses the flag but never
    hands it to the SSH backend (pytest-dev/pytest-testinfra#618, still so in 10.2)."""
    extra = pytestconfig.getoption("ssh_extra_args", None)
    backend = _testinfra_host.backend
    if extra and hasattr(backend, "ssh_extra_args") and not backend.ssh_extra_args:
        backend.ssh_extra_args = extra
    return _testinfra_host


@pytest.fixture(scope="session")
def all_settings(pytestconfig) -> dict[str, tuple[dict, Settings]]:
    """inventory host name -> (its data, its Settings)."""
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    path = pytestconfig.getoption("--litellm-inventory")
    if not Path(path).is_file():
        pytest.exit(f"--litellm-inventory: {path} is not a file (the pyinfra inventory of your gateways)", 2)
    # pyinfra executes an inventory file inside a State context, as its CLI does.
    state = State(check_for_changes=False)
    state.cwd = str(ROOT)
    with ctx_state.use(state):
        inventory = make_inventory(str(Path(path).absolute()), cwd=str(ROOT))
    gateways = inventory.get_group(GATEWAYS, default=[])
    settings = build_all(
        [HostInput(h.name, h.data.get) for h in gateways],
        secrets_path(gateways[0].data.get("secrets_file") if gateways else None),
        host_envs={},  # the secrets file of a deployed inventory is complete: nothing to read
        complete=False,
    )
    return {h.name: (h.data.dict(), settings[h.name]) for h in gateways}


@pytest.fixture
def settings(host, all_settings) -> Settings:
    """The Settings of the inventory gateway this testinfra host is (by ssh_hostname or name)."""
    address = host.backend.hostname
    for name, (data, gateway) in all_settings.items():
        if address in (name, data.get("ssh_hostname")):
            return gateway
    pytest.fail(f"{address} is not a gateway of the inventory ({', '.join(all_settings)})")
