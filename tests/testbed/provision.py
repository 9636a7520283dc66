"""Provisioned bed hosts: made like machines from a golden image, they boot with Docker Engine and Compose
installed (the packages the deploy's distro install chooses for Debian), the deploy's images already in
their engine, and the image archives already in the gateway's archive directory (0600, as the deploy
uploads them). The deploy's Docker and image stages then find nothing to do, as on a host it converged
before. Suites whose subject is not the install or the image transfer run on them: each fresh gateway is
then about two minutes of CPU cheaper (apt, the archive upload, `docker load`) on the bed's 2 cores. The
suites that prove the fresh path keep a bare host for it (the main bed's gw-db, the sudo suite's
gw-password, faults, leaks, demo, benchmarks).

The seed is made once per host image, archive files and package list (SEED_RECIPE, bumped when the steps
below change): a host boots on the default bridge network, installs the packages from Debian, copies and
loads the archives, and stops its engine; the container is committed as the provisioned image, and its
/var/lib/docker volume is kept as the seed. Each provisioned host gets its own copy of the seed volume
(`cp -a`, about 9 s for the 1.8 GB the images unpack to, against about 60 s of install and load).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import docker.errors

from tasks.config.settings import DEFAULTS
from tasks.lib.docker import DISTRO_PACKAGES

from .images import LABEL, REPO, Timer, log

SEED_RECIPE = "3"
SEED_LABEL = "litellm-deploy.testbed.seed"
PROVISIONED_REPO = f"{REPO}/host-provisioned"
PACKAGES = (*DISTRO_PACKAGES["debian"], "ca-certificates")
INSTALL_DIR = str(DEFAULTS["install_dir"])  # the suites' gateways keep the shipped install_dir
ARCHIVE_DIR = f"{INSTALL_DIR}/images"  # where the deploy uploads the archives (tasks/gateway/stack.py)
MOUNTED_ARCHIVES = "/mnt/testbed-archives"


class Seed:
    """The provisioned image and seed volume of one (host image, archives, packages)."""

    def __init__(self, client, host_image: str, archives: list[Path], host_config: Callable[[str, dict], dict]):
        self.client = client
        self.host_image = host_image
        self.archives = archives  # of every image a bed host may deploy (images.DEPLOYED)
        self.host_config = host_config  # (engine volume, extra binds) -> a bed host's container config
        # The archives by name (their image) and by size and time: the seed's copies must be the controller's
        # files as the deploy would upload them, or its upload skip (tasks/gateway/stack.py archive_uploaded) would
        # upload and load every archive again on a provisioned host. A new clone's archives are new files.
        parts = [client.images.get(host_image).id, SEED_RECIPE, *PACKAGES,
                 *sorted(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in archives)]
        self.key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
        self.image = f"{PROVISIONED_REPO}:{self.key}"
        self.volume = f"litellm-deploy-testbed-seed-{self.key}"

    def ready(self) -> bool:
        try:
            self.client.images.get(self.image)
            self.client.volumes.get(self.volume)
        except docker.errors.NotFound:
            return False
        return True

    def ensure(self) -> None:
        """Make the seed unless it exists; the caller holds the bed's lock for it."""
        if self.ready():
            return
        self._remove_stale()
        with Timer(f"provisioned host image {self.image} and its seed volume"):
            self._make()

    def copy_into(self, volume: str) -> None:
        """The seed's engine data into a new host's /var/lib/docker volume."""
        self.client.containers.run(self.host_image, ["cp", "-a", "/from/.", "/to/"], remove=True, network_mode="none",
                                   labels={LABEL: "1"}, volumes={self.volume: {"bind": "/from", "mode": "ro"},
                                                                 volume: {"bind": "/to", "mode": "rw"}})

    def _remove_stale(self) -> None:
        """Seeds of other keys: their images and volumes hold gigabytes no host uses any more."""
        for v in self.client.volumes.list(filters={"label": SEED_LABEL}):
            if v.name != self.volume:
                try:
                    v.remove(force=True)
                except docker.errors.APIError as e:  # a host still being copied from it
                    log(f"stale seed volume {v.name} kept: {e}")
        for img in self.client.images.list(name=PROVISIONED_REPO):
            for tag in img.tags:
                if tag != self.image:
                    try:
                        self.client.images.remove(tag)
                    except docker.errors.APIError as e:  # a host still runs it
                        log(f"stale provisioned image {tag} kept: {e}")

    def _make(self) -> None:
        labels = {LABEL: "1", SEED_LABEL: self.key}
        self.client.volumes.create(self.volume, labels=labels)
        mounts = {str(path): {"bind": f"{MOUNTED_ARCHIVES}/{path.name}", "mode": "ro"} for path in self.archives}
        made = self.client.api.create_container(self.host_image, name=f"litellm-deploy-testbed-seeding-{self.key}",
                                                labels=labels, host_config=self.host_config(self.volume, mounts),
                                                stop_signal="SIGRTMIN+3", detach=True)
        container = self.client.containers.get(made["Id"])
        try:
            container.start()
            self._run(container, "for i in $(seq 180); do case $(systemctl is-system-running) in "
                                 "running|degraded) exit 0;; esac; sleep 1; done; exit 1", "boot (180 s)")
            self._run(container, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                                 f"--no-install-recommends {' '.join(PACKAGES)} >/dev/null", "install Docker")
            names = " ".join(p.name for p in self.archives)
            # Side by side, as the deploy loads them: each load is one process bound by decompression.
            self._run(container, f"install -d -m 700 {INSTALL_DIR} {ARCHIVE_DIR} && pids= && for f in {names}; do "
                                 f"(cp --preserve=timestamps {MOUNTED_ARCHIVES}/$f {ARCHIVE_DIR}/$f && "
                                 f"chmod 600 {ARCHIVE_DIR}/$f && docker load --input {ARCHIVE_DIR}/$f >/dev/null) & "
                                 "pids=\"$pids $!\"; done; for p in $pids; do wait $p || exit 1; done", "load the images")
            # Each host makes its own SSH host keys and machine id at its first boot, as the bare image does.
            # Its engine also picks its own bridge subnet then: the seed's engine, booted on the default bridge,
            # chose the next pool (172.18/16 on a fresh machine, the bed network's own), and a host keeping it
            # routes its replies into its empty docker0, unreachable ("No route to host": a CI failure).
            self._run(container, "systemctl stop docker.socket docker.service containerd.service && apt-get clean && "
                                 "rm -rf /var/lib/docker/network && rm -f /etc/ssh/ssh_host_* && : > /etc/machine-id",
                      "settle")
            with Timer("seed: stop and commit"):
                container.stop(timeout=60)
                container.commit(repository=PROVISIONED_REPO, tag=self.key, conf={"Labels": {LABEL: "1"}})
        except BaseException:  # half made: nothing of it may pass for a seed
            container.remove(force=True)
            self.client.volumes.get(self.volume).remove(force=True)
            raise
        container.remove(force=True)

    @staticmethod
    def _run(container, script: str, what: str) -> None:
        with Timer(f"seed: {what}"):
            result = container.exec_run(["sh", "-c", script])
        if result.exit_code != 0:
            raise RuntimeError(f"provisioning the seed host: {what} failed:\n"
                               f"{result.output.decode(errors='replace')[-2000:]}")
