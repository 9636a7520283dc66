"""Settings are built once per run, even though pyinfra prepares hosts in concurrent greenlets; the
secrets file gains its new entries only when operations start (never under --dry)."""

import gevent
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.operations import server

from tasks import context
from tests.unit.conftest import example_models, group_data


def test_concurrent_hosts_share_one_generation_of_secrets(secrets_file, monkeypatch):
    monkeypatch.setenv("LITELLM_DEPLOY_SECRETS", str(secrets_file))
    data = {**group_data("all"), "models": example_models()[:1]}
    inventory = Inventory((["gw1", "gw2"], {}), litellm_hosts=(["gw1", "gw2"], data))
    state = State(inventory, Config())

    def slow_read(state, path, *state_wanted):
        # The real run reads each gateway's .env over SSH, which yields to the other host's greenlet.
        gevent.sleep(0.05)
        return context.ControllerState(envs={"gw1": {}, "gw2": {}}, key_values={"gw1": {}, "gw2": {}})

    monkeypatch.setattr(context, "read_controller_state", slow_read)
    results = [gevent.spawn(context.all_settings, state) for _ in range(2)]
    gevent.joinall(results, raise_error=True)
    first, second = (r.value for r in results)
    assert first["gw1"].secrets.master_key == second["gw2"].secrets.master_key
    recorders = [h for h in state.callback_handlers if isinstance(h, context._RecordWhenOperationsStart)]
    assert len(recorders) == 1


def test_secrets_written_when_operations_start_not_while_planning(secrets_file, monkeypatch, tmp_path):
    """A real pyinfra run on @local: building settings (what --dry does) leaves the file as it was;
    the first operation writes it, once, before it runs."""
    monkeypatch.setenv("LITELLM_DEPLOY_SECRETS", str(secrets_file))
    before = secrets_file.read_bytes()
    data = {**group_data("all"), "models": example_models()[:1], "install_dir": str(tmp_path / "opt")}
    state = State(Inventory((["@local"], {}), litellm_hosts=(["@local"], data)), Config())
    connect_all(state)
    try:
        settings = context.all_settings(state)["@local"]
        assert secrets_file.read_bytes() == before
        add_op(state, server.shell, name="first operation", commands=["true"])
        add_op(state, server.shell, name="second operation", commands=["true"])
        run_ops(state)
    finally:
        disconnect_all(state)
    text = secrets_file.read_text()
    assert text.startswith(before.decode())
    assert text.count("LITELLM_MASTER_KEY=") == 1 and settings.secrets.master_key in text
