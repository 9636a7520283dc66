"""Docker on a gateway host: which Compose versions pass, and what `docker_install = "distro"` does to a
host that already runs Docker CE.

No Ubuntu, Debian 13 or Docker CE packages can be had here, so the host is stood in for at the level
of the commands the facts run: a fake `docker` / `docker-compose` answering as the real ones do, and
the real dpkg-query reading a dpkg status database written by the test. The deploy's operations are
then added through pyinfra's API against @local and their commands collected, never executed.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.facts import get_facts
from pyinfra.api.host import Host
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File
from pyinfra.facts.server import LinuxDistribution
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from tasks.lib import docker

REAL_DPKG_QUERY = shutil.which("dpkg-query")
needs_dpkg = pytest.mark.skipif(REAL_DPKG_QUERY is None, reason="dpkg-query not on this machine")

DOCKER_CE = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"]


# --- Compose versions -----------------------------------------------------------------------------


@pytest.mark.parametrize("output,expected", [
    ("v2.26.1", (2, 26, 1)),
    ("2.29.7", (2, 29, 7)),
    ("v5.0.1", (5, 0, 1)),
    ("5.0.1", (5, 0, 1)),
    ("Docker Compose version v5.0.1", (5, 0, 1)),
    ("Docker Compose version v2.26.1", (2, 26, 1)),
    ("2.24.6+ds1-0ubuntu2", (2, 24, 6)),
    ("1.29.2", (1, 29, 2)),
    ("docker-compose version 1.29.2, build unknown", (1, 29, 2)),
    ("docker: 'compose' is not a docker command.", None),
    ("unknown flag: --short", None),
    ("", None),
    (None, None),
])
def test_compose_version_parser(output, expected):
    assert docker.parse_compose_version(output) == expected


@pytest.mark.parametrize("found", [
    {"compose": "v2.26.1"}, {"compose": "2.29.7"}, {"compose": "v5.0.1"}, {"compose": "5.0.1"},
    {"compose": "2.26.1", "docker-compose": "1.29.2"},  # a leftover v1 next to the plugin is not used
])
def test_compose_v2_and_later_is_accepted(found):
    assert docker.compose_refusal(found) is None


@pytest.mark.parametrize("found,quoted", [
    ({"docker-compose": "1.29.2"}, "docker-compose 1.29.2"),
    ({"compose": "1.29.2"}, "1.29.2"),
    ({"compose": "garbage"}, "garbage"),
    ({}, "none"),
])
def test_compose_v1_missing_or_garbage_is_refused_naming_the_fix(found, quoted):
    refusal = docker.compose_refusal(found)
    assert refusal is not None and quoted in refusal
    assert "v2 or later" in refusal and "docker-compose-plugin" in refusal and "docker_install" in refusal


# --- dpkg's view of the host and the decision ------------------------------------------------------

CE_INSTALLED = """\
containerd.io install ok installed
docker-ce install ok installed
docker-ce-cli install ok installed
docker-compose-plugin install ok installed
"""
DISTRO_INSTALLED = """\
docker-cli install ok installed
docker-compose install ok installed
docker.io install ok installed
"""
CE_REMOVED = """\
docker-ce deinstall ok config-files
docker.io unknown ok not-installed
"""


def plan_for(dpkg_output: str, distro: str = "debian") -> docker.DistroPlan:
    return docker.distro_plan(distro, docker.parse_dpkg_states(dpkg_output.splitlines()))


def test_docker_ce_installed_is_left_alone():
    plan = plan_for(CE_INSTALLED)
    assert plan.install == () and plan.problem is None
    assert plan.note == ("Docker CE from Docker's repository is installed; leaving it as it is "
                         "(docker_install = distro would replace it with docker.io)")


@pytest.mark.parametrize("state", ["hold ok installed", "install ok unpacked", "install ok half-configured"])
def test_docker_ce_held_or_half_installed_is_left_alone_too(state):
    """Its files are on the host either way; apt would still remove them for docker.io."""
    assert plan_for(f"docker-ce {state}\n").install == ()


def test_docker_io_installed_is_fine():
    plan = plan_for(DISTRO_INSTALLED)
    assert plan.install == ("docker.io", "docker-cli", "docker-compose") and plan.problem is None


@pytest.mark.parametrize("distro,packages", [
    ("debian", ("docker.io", "docker-cli", "docker-compose")),
    ("ubuntu", ("docker.io", "docker-compose-v2")),
    ("", ("docker.io", "docker-cli", "docker-compose")),
])
def test_nothing_installed_installs_docker_io_and_the_compose_plugin_package(distro, packages):
    plan = plan_for("", distro)
    assert plan.install == packages and plan.problem is None


def test_docker_ce_removed_with_config_files_left_counts_as_not_installed():
    assert plan_for(CE_REMOVED).install == ("docker.io", "docker-cli", "docker-compose")


@pytest.mark.parametrize("leftover", ["containerd.io", "docker-ce-cli"])
def test_dockers_packages_without_docker_ce_are_refused_not_replaced(leftover):
    """apt would remove them for docker.io (it conflicts with docker-ce-cli; containerd.io conflicts with
    the containerd docker.io needs): a host that runs containerd.io for something else would lose it."""
    plan = plan_for(f"{leftover} install ok installed\n")
    assert plan.install == ()
    assert leftover in plan.problem and 'docker_install = "docker-repo"' in plan.problem


def test_dockers_compose_plugin_next_to_docker_io_is_kept():
    plan = plan_for("docker.io install ok installed\ndocker-compose-plugin install ok installed\n")
    assert plan.install == ("docker.io", "docker-cli")


# --- the facts' own commands, on a stand-in host ---------------------------------------------------


def dpkg_status(packages: dict[str, str]) -> str:
    """A dpkg status database: {package: Status}."""
    stanzas = []
    for package, status in packages.items():
        conffiles = "Conffiles:\n /etc/default/docker 0123456789abcdef0123456789abcdef\n" if "config-files" in status else ""
        stanzas.append(textwrap.dedent(f"""\
            Package: {package}
            Status: {status}
            Priority: optional
            Section: admin
            Installed-Size: 100
            Maintainer: Test <test@example.com>
            Architecture: amd64
            Version: 1.0-1
            """) + conffiles + "Description: stand-in\n")
    return "\n".join(stanzas) + "\n"


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """fakes(compose=..., docker_compose=..., dpkg={package: Status}): the host's commands, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    admin = tmp_path / "dpkg"
    admin.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(REAL_DPKG_QUERY or '/usr/bin/dpkg-query').parent}:/usr/bin:/bin")

    def script(name: str, body: str) -> None:
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)

    def fakes(compose: str | None = None, docker_compose: str | None = None, dpkg: dict | None = None):
        missing = "echo \"$0: not found\" >&2; exit 127\n"
        # The real CLI without the plugin: an error on stderr, exit 1.
        plugin = f"echo '{compose}'\n" if compose else "echo \"docker: 'compose' is not a docker command.\" >&2; exit 1\n"
        script("docker", '[ "$1 $2 $3" = "compose version --short" ] || exit 64\n' + plugin)
        script("docker-compose", f'[ "$1 $2" = "version --short" ] || exit 64\necho \'{docker_compose}\'\n'
               if docker_compose else missing)
        (admin / "status").write_text(dpkg_status(dpkg or {}))
        script("dpkg-query", f'exec {REAL_DPKG_QUERY} --admindir={admin} "$@"\n')

    return fakes


def read_fact(fact_cls):
    """The fact through pyinfra's own runner on @local (the stand-in's commands come first on PATH)."""
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    try:
        (value,) = get_facts(state, fact_cls).values()
        assert not state.failed_hosts, "the fact must answer, not fail the host"
        return value
    finally:
        disconnect_all(state)


@needs_dpkg
def test_dpkg_fact_reads_states_as_dpkg_reports_them(stand_in):
    stand_in(dpkg={"docker-ce": "deinstall ok config-files", "containerd.io": "install ok installed",
                   "vim": "install ok installed"})
    assert read_fact(docker.DockerPackageStates) == {"docker-ce": "config-files", "containerd.io": "installed"}
    stand_in(dpkg={})
    assert read_fact(docker.DockerPackageStates) == {}


@pytest.mark.parametrize("compose,docker_compose,expected", [
    ("5.0.1", None, {"compose": "5.0.1"}),
    ("v2.26.1", "1.29.2", {"compose": "v2.26.1", "docker-compose": "1.29.2"}),
    (None, "1.29.2", {"docker-compose": "1.29.2"}),
    (None, None, {}),
])
def test_compose_fact_reads_the_plugin_and_a_standalone_v1(stand_in, compose, docker_compose, expected):
    stand_in(compose=compose, docker_compose=docker_compose)
    assert read_fact(docker.ComposeVersion) == expected


# --- what a deploy adds for such a host ------------------------------------------------------------

DEBIAN_13 = {"name": "Debian", "major": 13, "release_meta": {"ID": "debian", "VERSION_CODENAME": "trixie"}}


def deploy_ops(settings, monkeypatch, installed: dict[str, list[str]], running: bool = True):
    """[(op name, [commands])] install_docker adds, and the noop messages; built-in facts canned, the
    module's own facts through the stand-in. Nothing is executed."""
    canned = {
        LinuxDistribution: lambda **_: DEBIAN_13,
        DebPackages: lambda **_: installed,
        File: lambda path, **_: None,  # no apt update stamp
        SystemdStatus: lambda services, **_: {s: running for s in services},
        SystemdEnabled: lambda services, **_: {s: running for s in services},
    }
    real_get_fact = Host.get_fact

    def get_fact(self, fact_cls, *args, **kwargs):
        if fact_cls.__module__ == docker.__name__:
            return real_get_fact(self, fact_cls, *args, **kwargs)
        assert fact_cls in canned, f"unexpected fact {fact_cls.__name__}: it would read this machine"
        return canned[fact_cls](*args, **kwargs)

    noops: list[str] = []
    monkeypatch.setattr(Host, "get_fact", get_fact)
    monkeypatch.setattr(Host, "noop", lambda self, description: noops.append(description))
    state = State(Inventory((["@local"], {})), Config(), check_for_changes=False)
    connect_all(state)
    try:
        add_deploy(state, docker.install_docker, settings)
        (host,) = state.inventory.get_active_hosts()
        ops = []
        # The generators read pyinfra's current host and state, as they do when pyinfra runs them.
        with ctx_state.use(state), ctx_host.use(host):
            for op_hash in state.get_op_order():
                name = " ".join(sorted(state.op_meta[op_hash].names))
                commands = state.get_op_data_for_host(host, op_hash).command_generator()
                ops.append((name, [c.get_raw_value() if hasattr(c, "get_raw_value") else str(c) for c in commands]))
        return ops, noops
    finally:
        disconnect_all(state)


def installs(ops) -> list[str]:
    """apt installs among the commands (a failing check's message may name one: not a command)."""
    return [c for _, commands in ops for c in commands if re.match(r"(\S+=\S+ )*apt-get .* install ", c)]


@needs_dpkg
@pytest.mark.parametrize("compose", ["2.29.7", "5.0.1"])
def test_a_docker_ce_host_gets_no_apt_install_and_still_a_running_docker_and_compose(
        build, stand_in, monkeypatch, compose):
    stand_in(compose=compose, dpkg={p: "install ok installed" for p in DOCKER_CE})
    ops, noops = deploy_ops(build(docker_install="distro"), monkeypatch, {p: ["1"] for p in DOCKER_CE}, running=False)
    assert installs(ops) == [] and not any("apt-get" in c for _, cs in ops for c in cs)  # no update either
    assert not any("distro packages" in name for name, _ in ops)
    assert docker.DOCKER_CE_NOTE in noops
    (service,) = [commands for name, commands in ops if "Docker running and enabled" in name]
    assert any("start docker.service" in c for c in service) and any("enable docker.service" in c for c in service)
    (compose_check,) = [commands for name, commands in ops if "Docker Compose" in name]
    assert compose_check == [] and f"Docker Compose {compose}" in noops


@needs_dpkg
def test_a_host_without_docker_gets_docker_io_and_compose_installed(build, stand_in, monkeypatch):
    """The control: the same harness does see the distro install where it belongs."""
    stand_in(compose="2.26.1", dpkg={"docker-ce": "deinstall ok config-files"})
    ops, _ = deploy_ops(build(docker_install="distro"), monkeypatch, {})
    (install,) = installs(ops)
    assert all(f" {p}" in install for p in ("docker.io", "docker-cli", "docker-compose", "ca-certificates"))


@needs_dpkg
def test_containerd_io_without_docker_ce_fails_the_host_instead_of_installing(build, stand_in, monkeypatch):
    stand_in(compose=None, dpkg={"containerd.io": "install ok installed"})
    ops, _ = deploy_ops(build(docker_install="distro"), monkeypatch, {"containerd.io": ["1"]})
    assert installs(ops) == []
    failing = [c for _, commands in ops for c in commands if c.endswith("exit 1")]
    assert failing and "containerd.io" in failing[0]


@pytest.mark.parametrize("compose,docker_compose,passes", [
    ("v2.26.1", None, True), ("2.29.7", None, True), ("v5.0.1", None, True), ("5.0.1", None, True),
    (None, "1.29.2", False), (None, None, False),
])
def test_the_compose_check_passes_v2_and_later_and_fails_v1(build, stand_in, monkeypatch, compose,
                                                            docker_compose, passes):
    stand_in(compose=compose, docker_compose=docker_compose)
    ops, noops = deploy_ops(build(docker_install="skip"), monkeypatch, {})
    (commands,) = [commands for name, commands in ops if "Docker Compose" in name]
    if passes:
        assert commands == [] and f"Docker Compose {compose}" in noops
    else:
        (command,) = commands
        assert command.endswith("exit 1") and "docker-compose-plugin" in command
        assert (docker_compose or "none") in command


# --- the engine's version: whether health checks may have a start_interval ------------------------

@pytest.mark.parametrize("daemon,program,expected", [
    ("26.1.5+dfsg1", "Docker version 26.1.5+dfsg1, build a72d7cd", (26, 1)),
    (None, "Docker version 24.0.7, build 24.0.7-0ubuntu4.1", (24, 0)),  # daemon stopped: its program
    (None, None, None),  # not installed
])
def test_engine_version_fact_asks_the_daemon_then_its_program(tmp_path, monkeypatch, daemon, program, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Only the stand-ins and a shell: this machine's own docker and dockerd must not answer.
    (bin_dir / "sh").symlink_to(shutil.which("sh"))
    monkeypatch.setenv("PATH", str(bin_dir))
    cannot = "echo 'Cannot connect to the Docker daemon' >&2; exit 1\n"
    scripts = {
        "docker": f"[ \"$1\" = version ] && echo '{daemon}' && exit 0\n" if daemon else cannot,
        "dockerd": f"[ \"$1\" = --version ] && echo '{program}'\n" if program else None,
    }
    for name, body in scripts.items():
        if body is not None:
            (bin_dir / name).write_text("#!/bin/sh\n" + body)
            (bin_dir / name).chmod(0o755)
    assert read_fact(docker.EngineVersion) == expected


@pytest.mark.parametrize("engine,docker_install,expected", [
    ((26, 1), "distro", True),
    ((25, 0), "skip", True),
    ((24, 0), "distro", False),  # Compose refuses start_interval on an engine before 25
    ((20, 10), "docker-repo", False),
    (None, "distro", True),  # installed by this run: Debian 13's 26.1, Ubuntu's backported current one
    (None, "docker-repo", True),
    (None, "skip", False),  # nothing known of an engine this run does not install
])
def test_start_interval_only_where_the_engine_takes_it(engine, docker_install, expected):
    assert docker.start_interval_supported(engine, docker_install) is expected
