"""State in its own engines (tasks/config/topology.py, tasks/state_hosts.py, tasks/lib/firewall.py): the
inventory's db and redis hosts checked before any host is touched, and what they are given."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tasks.config.settings import ConfigError, HostInput, build_everything
from tasks.lib import firewall, render
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
    # The firewall letting in only the gateways is iptables (IPv4): an IPv6 address would be unfiltered.
    ({"db": [host("db1", "fd00::21")]}, "host db1 (db_hosts): private_address 'fd00::21' is an IPv6 address"),
    ({"redis": [host("redis1", "10.0.0.31", private_address="fd00::31")]},
     "host redis1 (redis_hosts): private_address 'fd00::31' is an IPv6 address"),
    ({"gateways": [host("gw1", "fd00::11"), GW[1]]}, "host gw1 (litellm_hosts): private_address 'fd00::11' is an IPv6"),
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
    own = firewall.chain("litellm-db")
    assert rules == [
        "-I DOCKER-USER 1 -p tcp -m conntrack --ctorigdstport 5432 --ctdir ORIGINAL "
        f"-m comment --comment litellm-deploy:litellm-db:{firewall.digest('litellm-db', 5432, ['10.0.0.11', '10.0.0.12'])} "
        f"-j {own}",
        f"-A {own} -s 10.0.0.11/32 -j RETURN",
        f"-A {own} -s 10.0.0.12/32 -j RETURN",
        f"-A {own} -j DROP",
    ]
    # Another source list is another mark, so the deploy re-applies; the same list in another order is not.
    assert firewall.mark("litellm-db", 5432, ["10.0.0.11"]) != firewall.mark("litellm-db", 5432, ["10.0.0.11", "10.0.0.12"])
    assert firewall.mark("x", 1, ["10.0.0.2", "10.0.0.1"]) == firewall.mark("x", 1, ["10.0.0.1", "10.0.0.2"])
    script = firewall.script("litellm-db", 5432, ["10.0.0.11"])
    assert script.index("-j DROP") < script.index("-I DOCKER-USER 1")  # the chain is complete before the jump


def test_at_boot_the_rules_are_in_place_before_docker_starts_the_containers():
    """dockerd starts the restart-policy containers, publishing their ports, before it reports ready:
    a unit after docker.service would leave each port open to all until it ran. Docker keeps the
    DOCKER-USER rules it finds (its docs), so the unit goes first; a docker restart re-runs it too."""
    unit = firewall.unit("litellm-db", "/usr/local/sbin/x").splitlines()
    assert "Before=docker.service" in unit and not any(line.startswith("After=docker") for line in unit)
    assert "PartOf=docker.service" in unit and "WantedBy=multi-user.target docker.service" in unit
    assert "iptables -w -N DOCKER-USER 2>/dev/null || true" in firewall.script("litellm-db", 5432, ["10.0.0.11"])


# Two services of one long compose_project on one host: cut at iptables' 28 characters, their names
# were one chain, and each run flushed the other's rules.
LONG_DB, LONG_REDIS = "a-long-compose-project-name-db", "a-long-compose-project-name-redis"


def test_firewall_chains_of_names_sharing_a_long_prefix_differ_and_fit_iptables():
    assert LONG_DB[:25] == LONG_REDIS[:25]
    names = [LONG_DB, LONG_REDIS, "litellm-db", "litellm-redis", "litellm-proxy", "x", "a" * 200,
             *(f"{'p' * 40}-{i}" for i in range(50))]
    chains = [firewall.chain(name) for name in names]
    assert len(set(chains)) == len(names), chains
    assert all(len(c) <= 28 and c.startswith("LD-") for c in chains), chains
    assert firewall.chain("litellm-db").startswith("LD-litellm-db-")  # still readable in `iptables -S`


def test_a_firewall_refuses_an_ipv6_address_it_cannot_filter():
    """Rules are iptables (IPv4) only: validation refuses IPv6 earlier; this is the last guard."""
    with pytest.raises(ValueError, match="IPv4"):
        firewall.script("litellm-db", 5432, ["fd00::11"])
    with pytest.raises(ValueError, match="IPv4"):
        firewall.script("litellm-proxy", 4000, ["10.0.0.2"], "fd00::11")


def in_private_netfilter(script: str) -> str:
    """`iptables -S` after `script` ran as root in a network namespace of its own: real netfilter,
    and nothing of this machine's rules seen or touched."""
    if os.geteuid() != 0 or not shutil.which("iptables") or not shutil.which("unshare"):
        pytest.skip("needs root, iptables and unshare (a private network namespace)")
    result = subprocess.run(["unshare", "--net", "sh", "-c", f"{script}\niptables -w -S"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def legacy_rules(name: str, port: int, sources: list[str]) -> list[str]:
    """What an earlier version left on a host: a chain named LD-<name> cut at 28 characters."""
    old = f"LD-{name}"[:28]
    return [f"iptables -w -N {old} 2>/dev/null || true",
            *(f"iptables -w -A {old} -s {s}/32 -j RETURN" for s in sources),
            f"iptables -w -A {old} -j DROP",
            f"iptables -w -I DOCKER-USER 1 -p tcp -m conntrack --ctorigdstport {port} --ctdir ORIGINAL "
            f"-m comment --comment {firewall.mark(name, port, sources)} -j {old}"]


def jumps(rules: str) -> list[str]:
    return [line for line in rules.splitlines() if line.startswith("-A DOCKER-USER")]


def test_a_firewall_installed_over_one_of_an_earlier_version_leaves_none_of_the_old_chain():
    """The old chain's DROP or RETURN left behind would block or open the port the new rules decide."""
    old = "LD-litellm-db"
    host = ["iptables -w -N DOCKER-USER", *legacy_rules("litellm-db", 5432, ["10.0.0.11", "10.0.0.12"])]
    after = in_private_netfilter("\n".join([*host, firewall.script("litellm-db", 5432, ["10.0.0.11"])]))
    own = firewall.chain("litellm-db")
    assert f"-N {old}\n" not in after and f"-j {old}\n" not in after, after
    (jump,) = jumps(after)
    assert jump.endswith(f"-j {own}") and firewall.mark("litellm-db", 5432, ["10.0.0.11"]) in jump, after
    assert [line for line in after.splitlines() if line.startswith(f"-A {own} ")] == [
        f"-A {own} -s 10.0.0.11/32 -j RETURN", f"-A {own} -j DROP"]


def test_the_script_runs_before_dockerd_made_its_chain_and_again_without_doubling_a_rule():
    script = firewall.script("litellm-redis", 6379, ["10.0.0.11"])
    after = in_private_netfilter("\n".join([script, script]))
    own = firewall.chain("litellm-redis")
    assert len(jumps(after)) == 1 and jumps(after)[0].endswith(f"-j {own}"), after
    assert [line for line in after.splitlines() if line.startswith(f"-A {own} ")] == [
        f"-A {own} -s 10.0.0.11/32 -j RETURN", f"-A {own} -j DROP"]


def test_two_services_that_shared_an_old_chain_each_get_their_own_and_the_old_one_goes():
    """The shared chain stays while the other service still jumps to it (its port stays closed to
    outsiders until its own rules replace it), and goes with the last jump."""
    old = f"LD-{LONG_DB}"[:28]
    assert old == f"LD-{LONG_REDIS}"[:28]
    host = ["iptables -w -N DOCKER-USER", *legacy_rules(LONG_DB, 5432, ["10.0.0.11"]),
            *legacy_rules(LONG_REDIS, 6379, ["10.0.0.11"])]
    db_only = in_private_netfilter("\n".join([*host, firewall.script(LONG_DB, 5432, ["10.0.0.11"])]))
    still_old = [j for j in jumps(db_only) if j.endswith(f"-j {old}")]
    assert len(still_old) == 1 and "--ctorigdstport 6379" in still_old[0], db_only
    assert f"-A {old} -j DROP" in db_only
    both = in_private_netfilter("\n".join([*host, firewall.script(LONG_DB, 5432, ["10.0.0.11"]),
                                             firewall.script(LONG_REDIS, 6379, ["10.0.0.12"])]))
    assert f"-j {old}\n" not in both and f"-N {old}\n" not in both, both
    assert sorted(j.rsplit(" -j ", 1)[1] for j in jumps(both)) == sorted(
        [firewall.chain(LONG_DB), firewall.chain(LONG_REDIS)]), both
    assert f"-A {firewall.chain(LONG_REDIS)} -s 10.0.0.12/32 -j RETURN" in both
    assert f"-A {firewall.chain(LONG_DB)} -s 10.0.0.11/32 -j RETURN" in both


def test_removing_a_firewall_removes_the_old_chain_too():
    host = ["iptables -w -N DOCKER-USER", *legacy_rules("litellm-proxy", 4000, ["10.9.0.2"])]
    after = in_private_netfilter("\n".join([*host, firewall.removal("litellm-proxy")]))
    assert jumps(after) == [] and "LD-" not in after, after


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
    from tasks.gateway import backup

    db = everything(secrets_file)[1]["db1"]
    view = db.backup
    assert (view.host_name, view.database_mode, view.compose_project, view.install_dir) == (
        "db1", "bundled", "litellm-db", "/opt/litellm-db")
    assert backup.dump_command(view).startswith(
        "docker compose --project-name litellm-db --project-directory /opt/litellm-db exec -T db pg_dump")
    assert everything(secrets_file)[1]["redis1"].backup is None


# --- a changed POSTGRES_PASSWORD: the db host's role first, then the gateways ------------------------


def password_plan(secrets_file, monkeypatch, host_line: str | None, name: str = "db1"):
    """The plan of the db host (or of gateway `name`) whose .env has `host_line` as the hash of its
    POSTGRES_PASSWORD line (None: no .env yet)."""
    from tasks.lib.envfile import EnvLineHashes
    from tasks.state_hosts import deploy_state_host
    from tests.unit.test_deploy_plan import plan

    gateways, state = everything(secrets_file)
    facts = {EnvLineHashes: lambda **_: None if host_line is None else {"POSTGRES_PASSWORD": host_line}}
    if name in gateways:
        return plan(gateways[name], monkeypatch, previous=None, facts=facts)
    return plan(state[name], monkeypatch, previous=None, facts=facts, deploy=deploy_state_host)


def test_a_changed_postgres_password_is_set_on_the_db_hosts_role_before_its_env_is_written(secrets_file, monkeypatch):
    from tasks.lib.envfile import line_hash
    from tests.unit.test_deploy_plan import position

    password = "the-new-password-in-the-secrets-file"
    with open(secrets_file, "a") as handle:
        handle.write(f'POSTGRES_PASSWORD="{password}"\n')
    ops = password_plan(secrets_file, monkeypatch, "0" * 64)
    role = position(ops, "Database role litellm: POSTGRES_PASSWORD from the secrets file")
    assert role < position(ops, "Write /opt/litellm-db/.env"), [name for name, _, _ in ops]
    (command,) = ops[role][1]
    assert command.startswith("docker compose --project-name litellm-db --project-directory /opt/litellm-db "
                              "exec -T db psql -U litellm -d litellm")
    assert password not in " ".join(c for _, commands, _ in ops for c in commands)
    # The .env already holds it (a second run), or there is none yet (Postgres initialises with it).
    for host_line in (line_hash("POSTGRES_PASSWORD", password), None):
        ops = password_plan(secrets_file, monkeypatch, host_line)
        assert ops[position(ops, "Database role litellm: POSTGRES_PASSWORD")][1] == []


def test_a_gateway_takes_a_changed_postgres_password_only_after_the_db_host(secrets_file, monkeypatch):
    from tests.unit.test_deploy_plan import first_write, position

    ops = password_plan(secrets_file, monkeypatch, "0" * 64, name="gw1")
    guard = position(ops, "POSTGRES_PASSWORD: set on the role by the db host db1 first")
    assert guard < first_write(ops), [name for name, _, _ in ops]


@pytest.mark.parametrize("start_interval", [False, True])
def test_the_db_and_redis_hosts_are_checked_rarely_once_healthy_where_the_engine_can(secrets_file, start_interval):
    """Each check is a process in the container (tasks/lib/render.py DATA_HEALTH): every 10 s once healthy and
    every second while starting where the engine takes start_interval, every 2 s where it cannot; 60 s of
    failed checks before unhealthy either way."""
    state = everything(secrets_file)[1]
    for host, service in ((state["db1"], "db"), (state["redis1"], "redis")):
        files = render_service(host, service, start_interval)
        check = yaml.safe_load(files["docker-compose.yml"])["services"][service]["healthcheck"]
        assert (check["interval"], check.get("start_interval")) == (("10s", "1s") if start_interval else ("2s", None))
        assert int(check["interval"].rstrip("s")) * check["retries"] == 60
