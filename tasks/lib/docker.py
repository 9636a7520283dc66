"""Docker Engine + Compose v2 or later on a gateway host, running and enabled at boot."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy, operation
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, systemd

from tasks.lib.outcome import failing_command

DOCKER_REPO_KEY_URL = "https://download.docker.com/linux/{distro}/gpg"
DOCKER_REPO_KEYRING = "/etc/apt/keyrings/docker.asc"
APT_CACHE_SECONDS = 24 * 3600

# Distro packages that give Engine + the Compose v2 plugin (`docker compose`), the Compose package last.
DISTRO_PACKAGES = {
    # Debian 13 splits the CLI out of docker.io (a mere Recommends); docker-compose is Compose v2 there.
    "debian": ["docker.io", "docker-cli", "docker-compose"],
    "ubuntu": ["docker.io", "docker-compose-v2"],
}
DOCKER_REPO_PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"]
# Docker's packages that apt removes to install docker.io: docker.io conflicts with the first three, and
# containerd.io conflicts with the containerd package docker.io depends on.
REPLACED_BY_DOCKER_IO = ["docker-ce", "docker-ce-cli", "docker-ce-rootless-extras", "containerd.io"]
WATCHED_PACKAGES = sorted(
    {*REPLACED_BY_DOCKER_IO, *DOCKER_REPO_PACKAGES, *(p for packages in DISTRO_PACKAGES.values() for p in packages)}
)
# dpkg states in which none of a package's files are left; in every other one (half-installed,
# unpacked, ...) apt would still remove it for a conflicting package.
DPKG_ABSENT = {"not-installed", "config-files"}

DOCKER_CE_NOTE = (
    "Docker CE from Docker's repository is installed; leaving it as it is "
    "(docker_install = distro would replace it with docker.io)"
)
COMPOSE_FIX = (
    "Fix: install the Compose plugin, v2 or later: on a Docker CE host `apt-get install "
    'docker-compose-plugin` from Docker\'s repository (docker_install = "docker-repo" installs it), '
    "otherwise Debian 13's docker-compose or Ubuntu 24.04's docker-compose-v2 (docker_install = "
    '"distro" installs them).'
)


def parse_compose_version(output: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) from `docker compose version [--short]` or `docker-compose version` output:
    "v2.26.1", "2.29.7", "Docker Compose version v5.0.1", "2.24.6+ds1-0ubuntu2"; None when none is there."""
    found = re.search(r"(?<![\w.])v?(\d+)\.(\d+)(?:\.(\d+))?", output or "")
    if not found:
        return None
    return int(found[1]), int(found[2]), int(found[3] or 0)


def compose_refusal(found: dict[str, str]) -> str | None:
    """Why this host's Compose cannot run the deploy, or None when `docker compose` is v2 or later.

    `found` is the ComposeVersion fact: the plugin's output under "compose", a standalone
    `docker-compose`'s under "docker-compose"."""
    plugin = found.get("compose")
    version = parse_compose_version(plugin)
    if version and version[0] >= 2:
        return None
    if plugin:
        seen = f"`docker compose` {plugin}"
    elif found.get("docker-compose"):
        # A standalone docker-compose (v1, or a v2 binary outside the CLI's plugins) is a program the
        # deploy never calls: it runs `docker compose`.
        seen = f"no `docker compose`, only docker-compose {found['docker-compose']}"
    else:
        seen = "none"
    return f"Docker Compose v2 or later is required (`docker compose`), found: {seen}. {COMPOSE_FIX}"


def parse_dpkg_states(lines: list[str]) -> dict[str, str]:
    """{package: dpkg state} from `dpkg-query -W -f='${Package} ${Status}\\n'` lines, e.g.
    "docker-ce install ok installed" -> {"docker-ce": "installed"}."""
    states = {}
    for line in lines:
        words = line.split()
        if len(words) == 4:
            states[words[0].split(":")[0]] = words[3]
    return states


@dataclass(frozen=True)
class DistroPlan:
    install: tuple[str, ...]  # apt packages to ensure; () leaves the host's Docker packages as they are
    note: str  # what the deploy says about the host's packages
    problem: str | None = None  # set: the host fails with it, nothing installed


def distro_plan(distro: str, states: dict[str, str]) -> DistroPlan:
    """What `docker_install = "distro"` does on a host whose Docker packages are in these dpkg states."""
    present = {package for package, status in states.items() if status not in DPKG_ABSENT}
    if "docker-ce" in present:
        return DistroPlan((), DOCKER_CE_NOTE)
    doomed = [package for package in REPLACED_BY_DOCKER_IO if package in present]
    if doomed:
        listed = ", ".join(doomed)
        return DistroPlan(
            (),
            f"Docker's packages without docker-ce: {listed}",
            problem=(
                f"Docker's repository packages {listed} are installed without docker-ce; docker_install = distro "
                f'would replace them with docker.io. Fix: set docker_install = "docker-repo" for this host '
                f"(adds docker-ce to them), or remove them (apt-get remove {' '.join(doomed)}) if nothing uses them."
            ),
        )
    packages = DISTRO_PACKAGES.get(distro, DISTRO_PACKAGES["debian"])
    if "docker-compose-plugin" in present:
        # Docker's plugin already is Compose v2+, and the distro's package would clash with its files.
        packages = packages[:-1]
    installed = [package for package in packages if package in present]
    return DistroPlan(tuple(packages), f"distro packages, installed: {', '.join(installed) or 'none'}")


class DockerPackageStates(FactBase):
    """{package: dpkg state} of the Docker packages dpkg knows about ({} without dpkg)."""

    default = dict

    def requires_command(self) -> str:
        return "dpkg-query"

    def command(self) -> str:
        # dpkg-query exits 1 when any of the packages is unknown to it, as most of them always are.
        return f"dpkg-query -W -f='${{Package}} ${{Status}}\\n' {' '.join(WATCHED_PACKAGES)} 2>/dev/null || true"

    def process(self, output: list[str]) -> dict[str, str]:
        return parse_dpkg_states(output)


class ComposeVersion(FactBase):
    """{"compose": `docker compose version --short`, "docker-compose": a standalone program's}, each
    only when it answers."""

    default = dict

    def command(self) -> str:
        return (
            "docker compose version --short 2>/dev/null | sed 's/^/compose /'; "
            "docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /'; true"
        )

    def process(self, output: list[str]) -> dict[str, str]:
        found = {}
        for line in output:
            source, _, version = line.strip().partition(" ")
            if source in ("compose", "docker-compose") and version.strip() and source not in found:
                found[source] = version.strip()
        return found


# A health check's start_interval (checks this often until the container is first healthy, then every
# interval) needs Docker Engine 25 or later: Compose refuses the key on an older engine.
START_INTERVAL_ENGINE = 25


class EngineVersion(FactBase):
    """(major, minor) of the Docker Engine, from the daemon or else from its program; None when neither
    answers (not installed yet)."""

    def command(self) -> str:
        return "docker version --format '{{.Server.Version}}' 2>/dev/null || dockerd --version 2>/dev/null || true"

    def process(self, output: list[str]) -> tuple[int, int] | None:
        found = re.search(r"(\d+)\.(\d+)", " ".join(output))
        return (int(found[1]), int(found[2])) if found else None


def start_interval_supported(engine: tuple[int, int] | None, docker_install: str) -> bool:
    """Whether the compose file may give health checks a start_interval on this host. An engine not there
    yet is the one this run installs: Debian 13's is 26.1, Ubuntu backports Docker's current releases to
    its LTS, Docker's repository has the latest; with docker_install = "skip" nothing is known of it."""
    if engine is None:
        return docker_install != "skip"
    return engine[0] >= START_INTERVAL_ENGINE


def health_start_interval_supported(docker_install: str) -> bool:
    """start_interval_supported for the host being deployed (its engine's version fact)."""
    return start_interval_supported(host.get_fact(EngineVersion), docker_install)


@operation(is_idempotent=True)
def docker_packages_checked(distro: str):
    plan = distro_plan(distro, host.get_fact(DockerPackageStates))
    if plan.problem:
        yield failing_command(plan.problem)
        return
    host.noop(plan.note)


@operation(is_idempotent=True)
def compose_v2_present():
    found = host.get_fact(ComposeVersion)
    refusal = compose_refusal(found)
    if refusal:
        yield failing_command(refusal)
        return
    host.noop(f"Docker Compose {found['compose']}")


def _distro_id() -> str:
    distro = host.get_fact(LinuxDistribution) or {}
    return str((distro.get("release_meta") or {}).get("ID") or distro.get("name") or "").lower()


class DockerInstall(Protocol):
    """What install_docker reads of a host's config: a gateway's Settings, a db/redis host's StateHost
    or a load balancer's LoadBalancer."""

    @property
    def docker_install(self) -> str: ...


@deploy("Docker Engine and Compose v2")
def install_docker(settings: DockerInstall) -> None:
    distro = _distro_id()
    if settings.docker_install == "distro":
        plan = distro_plan(distro, host.get_fact(DockerPackageStates))
        if not plan.install and not plan.problem:
            # Said once per run at the default verbosity; the operation's noop shows only with -v.
            host.log(plan.note, logger.info)
        docker_packages_checked(name="Docker packages on the host", distro=distro)
        if plan.install:
            apt.packages(
                name="Install Docker Engine and Compose v2 (distro packages)",
                packages=[*plan.install, "ca-certificates"],
                update=True,
                cache_time=APT_CACHE_SECONDS,
                no_recommends=True,
            )
    elif settings.docker_install == "docker-repo":
        apt_distro = "ubuntu" if distro == "ubuntu" else "debian"
        files.directory(name="apt keyrings directory", path="/etc/apt/keyrings", mode="755")
        files.download(
            name="Docker's apt signing key",
            src=DOCKER_REPO_KEY_URL.format(distro=apt_distro),
            dest=DOCKER_REPO_KEYRING,
            mode="644",
        )
        codename = (host.get_fact(LinuxDistribution) or {}).get("release_meta", {}).get("VERSION_CODENAME", "")
        apt.repo(
            name="Docker's apt repository",
            src=f"deb [signed-by={DOCKER_REPO_KEYRING}] https://download.docker.com/linux/{apt_distro} {codename} stable",
            filename="docker",
        )
        apt.packages(
            name="Install Docker Engine and Compose v2 (Docker's repository)",
            packages=DOCKER_REPO_PACKAGES,
            update=True,
            cache_time=APT_CACHE_SECONDS,
        )
    if settings.docker_install != "skip":
        systemd.service(name="Docker running and enabled at boot", service="docker", running=True, enabled=True)
    compose_v2_present(name="Docker Compose v2 or later present")
