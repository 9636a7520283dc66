"""State in its own engines (tasks/topology.py, tasks/state_hosts.py, tasks/firewall.py): the
inventory's db and redis hosts checked before any host is touched, and what they are given."""

from __future__ import annotations

import pytest
import yaml

from tasks import firewall, render
from tasks.settings import ConfigError, HostInput, build_everything
from tasks.state_hosts import render_service
from tests.unit.conftest import example_models, group_data, lookup


def host(name: str, address: str, **data) -> HostInput:
    return HostInput(name, lookup({**group_data("all"), "models": example_models(),
                                    "ollama_nodes": {"smarthome": {"address": "192.0.2.20"}},
                                    "ssh_hostname": address, **data}))


GW = [host("gw1", "10.0.0.11"), host("gw2", "10.0.0.12")]
DB = [host("db1", "10.0.0.21")]
REDIS = [host("redis1", "10.0.0.31")]


def everything(secrets_file, gateways=GW, db=DB, redis=REDIS):
    return build_everything(gateways, secrets_file, {g.name: {} for g in gateways}, record=lambda *a: None,
                            db_hosts=db, redis_hosts=redis)


def problems(secrets_file, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        everything(secrets_file, **kwargs)
    return refused.value.problems


def test_gateways_reach_the_db_host_and_share_the_redis_host(secrets_file):
    gateways, state = everything(secrets_file)
    gw = gateways["gw1"]
    assert gw.db_host == "db1" and gw.database_mode == "external" and gw.redis_address == "10.0.0.31"
    password = gw.secrets["POSTGRES_PASSWORD"]
    assert gw.secrets["DATABASE_URL"] == f"postgresql://litellm:{password}@10.0.0.21:5432/litellm"
    assert len(gw.secrets["REDIS_PASSWORD"]) >= 16  # generated, never a default
    assert state["db1"].services == ("db",) and state["redis1"].services == ("redis",)
    assert state["db1"].allowed == ("10.0.0.11", "10.0.0.12")


@pytest.mark.parametrize("kwargs, expected", [
    ({"db": DB + [host("db2", "10.0.0.22")]}, "db_hosts lists db1, db2; one db host is supported"),
    ({"redis": REDIS + [host("redis2", "10.0.0.32")]}, "redis_hosts lists redis1, redis2"),
    ({"db": [host("gw1", "10.0.0.11")]}, "host gw1 is in both litellm_hosts and db_hosts"),
    ({"redis": [host("gw2", "10.0.0.12")]}, "host gw2 is in both litellm_hosts and redis_hosts"),
    ({"db": [host("db1", "db.internal")]}, "host db1 (db_hosts): private_address 'db.internal' is not an IP"),
    ({"gateways": [host("gw1", "10.0.0.11", database_mode="external")]}, "host gw1: database_mode 'external' while"),
    ({"gateways": [host("gw1", "10.0.0.11", database_mode="db_host")], "db": []}, "no db_hosts group"),
])
def test_a_bad_topology_is_refused_naming_the_field_and_fix(secrets_file, kwargs, expected):
    found = problems(secrets_file, **kwargs)
    assert any(expected in p and "fix:" in p for p in found), found


def test_redis_url_and_a_redis_host_together_are_refused(secrets_file):
    secrets_file.write_text(secrets_file.read_text() + 'REDIS_URL="redis://:pw@10.0.0.40:6379/0"\n')
    assert any(p.startswith("REDIS_URL: set in the secrets file while the inventory has redis_hosts")
               for p in problems(secrets_file))


def test_database_url_with_a_db_host_is_refused(secrets_file):
    secrets_file.write_text(secrets_file.read_text() + 'DATABASE_URL="postgresql://u:p@10.0.0.9/db"\n')
    assert any(p.startswith("DATABASE_URL: set in the secrets file while the inventory has db_hosts")
               for p in problems(secrets_file))


def test_an_external_redis_is_wired_by_url(secrets_file):
    secrets_file.write_text(secrets_file.read_text() + 'REDIS_URL="redis://:pw@10.0.0.40:6379/0"\n')
    gateways, state = everything(secrets_file, redis=[])
    gw = gateways["gw1"]
    config = yaml.safe_load(render.render_files(gw)[render.CONFIG_FILE])
    assert config["general_settings"]["coordination_redis"] == {"url": "os.environ/REDIS_URL"}
    assert render.container_env(gw)["REDIS_URL"] == "redis://:pw@10.0.0.40:6379/0"
    assert set(state) == {"db1"}


def test_the_gateway_config_shares_limits_through_redis_without_response_caching(secrets_file):
    gw = everything(secrets_file)[0]["gw1"]
    config = yaml.safe_load(render.render_files(gw)[render.CONFIG_FILE])
    assert config["general_settings"]["coordination_redis"] == {
        "host": "os.environ/REDIS_HOST", "port": "os.environ/REDIS_PORT", "password": "os.environ/REDIS_PASSWORD"}
    assert "cache" not in config["litellm_settings"]
    env = render.container_env(gw)
    assert (env["REDIS_HOST"], env["REDIS_PORT"]) == ("10.0.0.31", "6379")
    assert env["DATABASE_URL"].endswith("@10.0.0.21:5432/litellm")


def test_a_single_host_inventory_is_unchanged(secrets_file):
    gateways, state = everything(secrets_file, gateways=[GW[0]], db=[], redis=[])
    gw = gateways["gw1"]
    assert state == {} and gw.database_mode == "bundled" and not gw.has_redis and not gw.db_host
    assert "coordination_redis" not in render.render_files(gw)[render.CONFIG_FILE]


def test_the_db_host_listens_on_its_private_address_for_the_gateways_only(secrets_file):
    db = everything(secrets_file)[1]["db1"]
    files = render_service(db, "db")
    service = yaml.safe_load(files["docker-compose.yml"])["services"]["db"]
    assert service["ports"] == ["10.0.0.21:5432:5432"]
    assert "password_encryption=scram-sha-256" in service["command"]
    hba = [line for line in files["pg_hba.conf"].splitlines() if line and not line.startswith("#")]
    assert hba == ["local all all trust", "host all all 10.0.0.11/32 scram-sha-256",
                   "host all all 10.0.0.12/32 scram-sha-256"]
    assert db.secrets["POSTGRES_PASSWORD"] not in files["docker-compose.yml"]


def test_valkey_gets_its_password_from_env_never_a_command_line(secrets_file):
    redis = everything(secrets_file)[1]["redis1"]
    files = render_service(redis, "redis")
    password = redis.secrets["REDIS_PASSWORD"]
    assert password not in files["docker-compose.yml"] and f'REDIS_PASSWORD="{password}"' in files[".env"]
    service = yaml.safe_load(files["docker-compose.yml"])["services"]["redis"]
    assert service["ports"] == ["10.0.0.31:6379:6379"]
    assert "requirepass" in service["entrypoint"][2] and "protected-mode yes" in service["entrypoint"][2]


def test_the_firewall_rule_set():
    rules = firewall.rules("litellm-db", 5432, ["10.0.0.12", "10.0.0.11"])
    assert rules == [
        "-I DOCKER-USER 1 -p tcp -m conntrack --ctorigdstport 5432 --ctdir ORIGINAL "
        f"-m comment --comment litellm-deploy:litellm-db:{firewall.digest('litellm-db', 5432, ['10.0.0.11', '10.0.0.12'])} "
        "-j LD-litellm-db",
        "-A LD-litellm-db -s 10.0.0.11/32 -j RETURN",
        "-A LD-litellm-db -s 10.0.0.12/32 -j RETURN",
        "-A LD-litellm-db -j DROP",
    ]
    # Another source list is another mark, so the deploy re-applies; the same list in another order is not.
    assert firewall.mark("litellm-db", 5432, ["10.0.0.11"]) != firewall.mark("litellm-db", 5432, ["10.0.0.11", "10.0.0.12"])
    assert firewall.mark("x", 1, ["10.0.0.2", "10.0.0.1"]) == firewall.mark("x", 1, ["10.0.0.1", "10.0.0.2"])
    script = firewall.script("litellm-db", 5432, ["10.0.0.11"])
    assert script.index("-j DROP") < script.index("-I DOCKER-USER 1")  # the chain is complete before the jump
    assert "After=docker.service" in firewall.unit("litellm-db", "/usr/local/sbin/x")


def test_only_the_first_gateway_migrates_and_bootstraps_a_db_hosts_database(secrets_file):
    """key_converge.owner: the first gateway of the run on the shared database; the others wait."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_state

    from tasks.key_converge import owner

    gateways = everything(secrets_file)[0]
    inventory = Inventory((["gw1", "gw2", "db1"], {}), litellm_hosts=(["gw1", "gw2"], {}), db_hosts=(["db1"], {}))
    with ctx_state.use(State(inventory, Config())):
        assert owner(gateways["gw1"]) == "gw1" and owner(gateways["gw2"]) == "gw1"
    alone = everything(secrets_file, gateways=[GW[1]], db=DB, redis=[])[0]["gw2"]
    with ctx_state.use(State(Inventory((["gw2"], {}), litellm_hosts=(["gw2"], {})), Config())):
        assert owner(alone) == "gw2"  # --limit gw2: it is the first gateway of its run


def test_backups_of_the_shared_database_are_taken_on_the_db_host(secrets_file):
    from tasks import backup

    db = everything(secrets_file)[1]["db1"]
    view = db.backup
    assert (view.host_name, view.database_mode, view.compose_project, view.install_dir) == (
        "db1", "bundled", "litellm-db", "/opt/litellm-db")
    assert backup.dump_command(view).startswith(
        "docker compose --project-name litellm-db --project-directory /opt/litellm-db exec -T db pg_dump")
    assert everything(secrets_file)[1]["redis1"].backup is None
