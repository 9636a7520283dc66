"""The gateway deploy's plan: which operations it adds, in which order, with which commands and
global arguments, for a first deploy and for an upgrade (issue 15, defect 3, and the runbook's stages).

The host is stood in for at the level of facts (canned answers, as a gateway would give them); the
deploy is added through pyinfra's API against @local and its commands collected, never executed. The
upgrade that fails verification and rolls back, and the bad tag that changes nothing, run for real on
the test bed: tests/e2e/test_upgrade.py.
"""

from __future__ import annotations

import subprocess

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.host import Host
from pyinfra.context import ctx_host, ctx_state

from tasks.deploy_gateway import deploy_gateway
from tasks.gateway import migrations, upgrade
from tasks.lib import compose, docker, firewall
from tests.unit.conftest import IMAGE

PREVIOUS = "ghcr.io/berriai/litellm-database:main-v1.108.6"
POSTGRES = "postgres:16.4"
HEALTHY = {"state": "running", "health": "healthy", "id": "c0ffee"}


def plan(settings, monkeypatch, previous: str | None, facts: dict | None = None, deploy=deploy_gateway):
    """[(op name, [commands], global arguments)] of `deploy` (deploy_gateway) on a gateway that runs
    `previous` (verified), healthy, or on a fresh host (previous None)."""
    on_host = {POSTGRES: "sha256:postgres"}
    if previous:
        on_host[previous] = "sha256:previous"
    canned = {
        docker.ComposeVersion: lambda **_: {"compose": "2.26.1"},
        upgrade.DeployedImage: lambda **_: ("verified", previous) if previous else None,
        upgrade.VerifiedImage: lambda **_: previous,
        compose.ImageId: lambda image, **_: on_host.get(image),
        compose.ComposeServices: lambda **_: {"db": HEALTHY, "litellm": HEALTHY} if previous else {},
        migrations.MigratedImageId: lambda **_: "sha256:previous" if previous else None,
        **(facts or {}),
    }
    def get_fact(self, fact_cls, *args, **kwargs):
        if fact_cls in canned:
            return canned[fact_cls](*args, **kwargs)
        # Everything else (files, systemd, the bootstrap check): as on a host that has none of it.
        # pyinfra's own facts never run here: reading this machine would be a test of this machine.
        assert fact_cls.__module__.startswith(("pyinfra.", "tasks.")), fact_cls
        fact = fact_cls()
        return fact.default() if hasattr(fact, "default") else None

    monkeypatch.setattr(Host, "get_fact", get_fact)
    monkeypatch.setattr(Host, "noop", lambda self, description: None)
    state = State(Inventory((["@local"], {})), Config(), check_for_changes=False)
    connect_all(state)
    try:
        add_deploy(state, deploy, settings)
        (host,) = state.inventory.get_active_hosts()
        ops = []
        with ctx_state.use(state), ctx_host.use(host):
            for op_hash in state.get_op_order():
                name = " ".join(sorted(state.op_meta[op_hash].names))
                data = state.get_op_data_for_host(host, op_hash)
                commands = [c.get_raw_value() if hasattr(c, "get_raw_value") else str(c)
                            for c in data.command_generator()]
                ops.append((name, commands, data.global_arguments))
        return ops
    finally:
        disconnect_all(state)


def position(ops, text: str) -> int:
    """Index of the first operation whose name contains `text`."""
    return next(i for i, (name, _, _) in enumerate(ops) if text in name)


def first_write(ops) -> int:
    return min(position(ops, f"Write {name}") for name in ("docker-compose.yml", "litellm-config.yaml", ".env"))


@pytest.fixture
def archives(tmp_path):
    paths = [tmp_path / "litellm.tar.gz", tmp_path / "postgres.tar.gz"]
    for path in paths:
        path.write_bytes(b"not read: the plan only names it")
    return [str(p) for p in paths]


def settings_for(build, source: str, archives: list[str], **extra):
    more = {"image_source": "archives", "image_archives": archives} if source == "archives" else {}
    return build(docker_install="skip", postgres_image=POSTGRES, **more, **extra)


@pytest.mark.parametrize("source,getting", [("pull", f"Image {IMAGE}"), ("archives", "Load images from the archives")])
def test_an_upgrade_gets_and_checks_the_new_image_before_it_stops_backs_up_or_writes_anything(
        build, monkeypatch, archives, source, getting):
    ops = plan(settings_for(build, source, archives), monkeypatch, previous=PREVIOUS)
    got = position(ops, getting)
    backup = position(ops, "Proxy stopped, database backed up before the upgrade")
    assert got < backup < first_write(ops), [name for name, _, _ in ops]
    # Nothing before the image stops the proxy or writes a file of the project.
    assert not any("stop" in c or "Write" in name for name, commands, _ in ops[:got] for c in commands)
    # The image's operation itself fails the host, naming the image and the setting to fix.
    (commands,) = [commands for name, commands, _ in ops if getting in name]
    check = commands[-1]
    assert f"docker image inspect --format '{{{{.Id}}}}' {IMAGE}" in check and check.endswith("exit 1; }")
    assert f"{IMAGE} (litellm_image)" in check and "the running gateway was not touched" in check
    if source == "pull":
        # One command: the pull's own error and the message naming the setting fail it together.
        assert commands == [check] and check.startswith(f"docker pull --quiet {IMAGE}; docker image inspect ")
    else:
        assert [c for c in commands if "docker load" in c] == [
            'pids=""; docker load --input /opt/litellm/images/litellm.tar.gz & pids="$pids $!"; '
            'docker load --input /opt/litellm/images/postgres.tar.gz & pids="$pids $!"; '
            'status=0; for pid in $pids; do wait "$pid" || status=1; done; exit $status']
        assert "none of the image archives contains" in check and "image_archives" in check
    # The image is no part of the attempt: its failure stops the host; there is nothing to roll back.
    assert not ops[got][2]["_ignore_errors"]


@pytest.mark.parametrize("source", ["pull", "archives"])
def test_a_first_deploy_gets_the_images_into_a_root_only_install_directory_before_writing_files(
        build, monkeypatch, archives, source):
    ops = plan(settings_for(build, source, archives), monkeypatch, previous=None)
    names = [name for name, _, _ in ops]
    directory = position(ops, "Install directory /opt/litellm (root only)")
    images = position(ops, f"Image {IMAGE}" if source == "pull" else "Image archive directory")
    assert directory < images < first_write(ops), names
    assert any("chmod 700 /opt/litellm" in c for c in ops[directory][1]), ops[directory]
    assert not any("before the upgrade" in name or "Rollback" in name or "Upgrade to" in name for name in names)
    if source == "archives":
        assert position(ops, "Upload image archive litellm.tar.gz") < position(ops, "Load images from the archives")


def test_an_upgrade_holds_the_errors_of_every_stage_after_the_backup_and_nothing_else(build, monkeypatch, archives):
    """One wrapper, not one argument per call: every operation of every stage is in the attempt, so a
    stage added to the runbook is rolled back without knowing of upgrades."""
    ops = plan(settings_for(build, "pull", archives), monkeypatch, previous=PREVIOUS)
    backup = position(ops, "Proxy stopped, database backed up before the upgrade")
    rollback = position(ops, "Rollback to the previous image")
    attempt = ops[backup + 1:rollback]
    assert {name.split(" | ")[1] for name, _, _ in attempt} >= {
        "Compose project files", "Start the database", "Database migration",
        "LiteLLM admin user and master-key link", "Scheduled database backup", "Start the proxy", "Verify"}
    for name, _, arguments in attempt:
        assert arguments["_ignore_errors"] and len(arguments["_if"]) == 1, name
    for name, _, arguments in ops[:backup + 1]:
        assert not arguments["_ignore_errors"] and not arguments["_if"], name
    assert position(ops, "Upgrade to ") > rollback


def test_a_re_run_on_the_same_image_runs_the_stages_plainly(build, monkeypatch, archives):
    ops = plan(settings_for(build, "pull", archives), monkeypatch, previous=IMAGE)
    names = [name for name, _, _ in ops]
    assert not any("before the upgrade" in n or "Rollback" in n or "Upgrade to" in n for n in names), names
    assert all(not arguments["_ignore_errors"] and not arguments["_if"] for _, _, arguments in ops)
    # The image is on the host: nothing pulled.
    assert [commands for name, commands, _ in ops if f"Image {IMAGE}" in name] == [[]]


def test_declared_keys_converge_after_verification_with_their_values_in_a_root_only_file(build, monkeypatch, archives):
    keys = [{"alias": "everything", "models": "all"}]
    ops = plan(settings_for(build, "pull", archives, virtual_keys=keys), monkeypatch, previous=None)
    names = [name for name, _, _ in ops]
    verified = position(ops, "Gateway, Ollama nodes and upstreams answer")
    written = position(ops, "Write virtual-keys.json (virtual key values, mode 0600)")
    assert verified < written < position(ops, "Teams and virtual keys as declared") \
        < position(ops, "Virtual keys authenticate as declared"), names
    assert any("install -m 600 -o root -g root" in c for c in ops[written][1])
    # No declaration, no key operation at all.
    plain = [name for name, _, _ in plan(settings_for(build, "pull", archives), monkeypatch, previous=None)]
    assert not [name for name in plain if "irtual key" in name]


@pytest.mark.parametrize("present", [True, False])
def test_without_load_balancers_a_firewall_left_on_the_proxy_port_is_removed(build, monkeypatch, archives, present):
    """lb_hosts taken out of the inventory: the proxy is published to everyone again, so the rules that
    let in only the load balancers go too (unit, script, jumps, chain); none there, nothing to do."""
    ops = plan(settings_for(build, "pull", archives), monkeypatch, previous=PREVIOUS,
               facts={firewall.FirewallPresent: lambda **_: present})
    name, commands, _ = ops[position(ops, "No firewall on the proxy's port")]
    if not present:
        assert commands == []
        return
    text = "\n".join(commands)
    own, old = firewall.chain("litellm-proxy"), firewall.legacy_chain("litellm-proxy")
    for expected in ("systemctl disable litellm-firewall-litellm-proxy.service",
                     "rm -f /etc/systemd/system/litellm-firewall-litellm-proxy.service "
                     "/usr/local/sbin/litellm-firewall-litellm-proxy",
                     f"grep -e ' -j {own}$' -e litellm-deploy:litellm-proxy: | sed 's/^-A/-D/'",
                     f"iptables -w -F {own} && iptables -w -X {own}",
                     f"iptables -w -F {old} && iptables -w -X {old}"):  # an earlier version's chain
        assert expected in text, expected
    assert position(ops, "No firewall on the proxy's port") < first_write(ops)


def test_behind_load_balancers_the_proxy_port_is_firewalled_before_the_proxy_publishes_it(build, monkeypatch, archives):
    from tasks import balancer, context

    gateway = balancer.placed_behind(build(hosts={"gw1": {}}), {"gw1": "10.9.0.11"}, {"lb1": "10.9.0.2"})["gw1"]
    # The roll looks its load balancers up in the run's inventory, which here holds @local only.
    monkeypatch.setattr(context, "load_balancers", lambda st: {})
    ops = plan(gateway, monkeypatch, previous=None)
    names = [name for name, _, _ in ops]
    firewalled = position(ops, "Port 4000 (litellm-proxy) reachable only from 10.9.0.2")
    assert firewalled < position(ops, "LiteLLM proxy rolled") and firewalled < first_write(ops), names
    assert position(ops, "Docker") < firewalled  # DOCKER-USER is there: the engine runs


@pytest.mark.parametrize("service, port, started", [("db", 5432, "PostgreSQL up and healthy"),
                                                    ("redis", 6379, "Valkey up and healthy")])
def test_a_state_hosts_port_is_firewalled_before_its_service_publishes_it(secrets_file, monkeypatch, service, port,
                                                                         started):
    from tasks.state_hosts import deploy_state_host
    from tests.unit.test_topology import everything

    state_host = everything(secrets_file)[1][f"{service}1"]
    ops = plan(state_host, monkeypatch, previous=None, deploy=deploy_state_host)
    names = [name for name, _, _ in ops]
    assert position(ops, f"Port {port} (litellm-{service}) reachable only from") < position(ops, started), names


def test_every_archive_is_loaded_and_one_failed_load_fails_the_command(tmp_path):
    """The loads run in the background side by side: each must still be run and waited for (a stand-in
    `docker` on PATH records its calls and fails for the archive named 'bad')."""
    from tasks.lib.images import archives_load_command

    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\necho "$3" >> "$CALLS"\ncase "$3" in *bad*) exit 1;; esac\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls")}
    for archives, status in ((["/a/one.tar.gz", "/a/two.tar"], 0), (["/a/bad.tar.gz", "/a/good.tar.gz"], 1)):
        (tmp_path / "calls").write_text("")
        r = subprocess.run(["sh", "-c", archives_load_command(archives)], env=env, capture_output=True, text=True)
        assert r.returncode == status, r.stderr
        assert sorted((tmp_path / "calls").read_text().split()) == sorted(archives)
