"""Settings are built once per run, even though pyinfra prepares hosts in concurrent greenlets."""

import gevent
from pyinfra.api import Config, Inventory, State

from tasks import context
from tasks import secrets as S
from tests.unit.conftest import example_models, group_data


def test_concurrent_hosts_share_one_generation_of_secrets(secrets_file, monkeypatch):
    monkeypatch.setenv("LITELLM_DEPLOY_SECRETS", str(secrets_file))
    data = {**group_data("all"), "models": example_models()[:1]}
    inventory = Inventory((["gw1", "gw2"], {}), litellm_hosts=(["gw1", "gw2"], data))
    state = State(inventory, Config())
    original = S.append_secrets

    def slow_append(*args, **kwargs):
        # Between reading the file and writing it back the real run asks hosts over SSH, which
        # yields to the other host's greenlet.
        gevent.sleep(0.05)
        return original(*args, **kwargs)

    monkeypatch.setattr(S, "append_secrets", slow_append)
    results = [gevent.spawn(context.all_settings, state) for _ in range(2)]
    gevent.joinall(results, raise_error=True)
    first, second = (r.value for r in results)
    assert first["gw1"].secrets.master_key == second["gw2"].secrets.master_key
    assert secrets_file.read_text().count("LITELLM_MASTER_KEY=") == 1
