"""Docker Engine + Compose v2 on a gateway host, running and enabled at boot."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, systemd

from tasks.settings import Settings

DOCKER_REPO_KEY_URL = "https://download.docker.com/linux/{distro}/gpg"
DOCKER_REPO_KEYRING = "/etc/apt/keyrings/docker.asc"
APT_CACHE_SECONDS = 24 * 3600

# Distro packages that give Engine + the Compose v2 plugin (`docker compose`).
DISTRO_PACKAGES = {
    # Debian 13 splits the CLI out of docker.io (a mere Recommends); docker-compose is Compose v2 there.
    "debian": ["docker.io", "docker-cli", "docker-compose"],
    "ubuntu": ["docker.io", "docker-compose-v2"],
}
DOCKER_REPO_PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"]


class ComposeVersion(FactBase):
    """`docker compose version --short`, or None when the v2 plugin is missing."""

    def command(self) -> str:
        return "docker compose version --short 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output and output[0].strip() else None


@operation(is_idempotent=True)
def compose_v2_present():
    version = host.get_fact(ComposeVersion)
    if version and version.lstrip("v").split(".")[0] == "2":
        host.noop(f"Docker Compose {version}")
        return
    found = version or "none"
    yield (
        f"echo 'Docker Compose v2 is required (`docker compose`), found: {found}. Fix: install the "
        "compose v2 plugin, or set docker_install = \"docker-repo\" in group data.' >&2; exit 1"
    )


def _distro_id() -> str:
    distro = host.get_fact(LinuxDistribution) or {}
    return str((distro.get("release_meta") or {}).get("ID") or distro.get("name") or "").lower()


@deploy("Docker Engine and Compose v2")
def install_docker(settings: Settings) -> None:
    distro = _distro_id()
    if settings.docker_install == "distro":
        apt.packages(
            name="Install Docker Engine and Compose v2 (distro packages)",
            packages=DISTRO_PACKAGES.get(distro, DISTRO_PACKAGES["debian"]) + ["ca-certificates"],
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
    compose_v2_present(name="Docker Compose v2 present")
