"""The test bed: fresh Debian 13 hosts (systemd + sshd) on a private Docker network, for real deploys.

Python API (used by pytest and by ``python -m tests.testbed``):

    from tests.testbed import Testbed
    bed = Testbed()
    bed.up(["gw1", "ollama1:ollama", "up1:upstream"], ollama_models=["m1"])
    bed.up(["gw2"], sudo={"gw2": "password"})   # the deploy logs in as a sudoer, not root
    bed.hosts()                       # [{"name", "role", "address", "ssh_*", "api_base", ...}]
    bed.write_inventory(path, extra_data={"gw1": {...}, "*": {...}})
    bed.exec("gw1", "systemctl is-system-running")   # -> ExecResult(rc, output)
    bed.ssh("gw1", "docker ps")                       # the same over real SSH with the bed's key
    bed.restart("gw1")                # a reboot: back when systemd and sshd are up again
    bed.down()                        # everything (or bed.down(["gw1"]))

Roles:
    host      Debian 13, systemd as PID 1, sshd (root with the bed's key), python3, sudo; its own
              /var/lib/docker volume so a Docker engine installed by the deploy really runs.
    ollama    a host that also runs the Ollama API stand-in (ollama.service, port 11434).
    sudo      (an option of a host, not a role) the inventory logs the deploy in as SUDO_USER, a
              non-root sudoer made at `up`: "nopasswd" (password-less sudo, like cloud images) or
              "password" (sudo asks for a password, generated per `up`, kept in the state dir 0600
              and handed to pyinfra as `_sudo_password`). The bed's own ssh()/exec() stay root.
    upstream  the real LiteLLM proxy (local image from PyPI) whose models answer with LiteLLM's own
              `mock_response`; master key generated per `up`, kept in the state dir (0600). No SSH.

Every Docker resource carries the label ``litellm-deploy.testbed=1``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from .images import DEPLOYED, LABEL, Images, Timer, log
from .provision import SEED_LABEL, Seed

ROLES = ("host", "ollama", "upstream")
NETWORK = "litellm-deploy-testbed"
NAME_LABEL = "litellm-deploy.testbed.name"
ROLE_LABEL = "litellm-deploy.testbed.role"
CONTAINER_PREFIX = "litellm-deploy-testbed-"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".testbed"


def default_state_dir() -> Path:
    return Path(os.environ.get("TESTBED_STATE_DIR") or DEFAULT_STATE_DIR)

SUDO_USER = "admin"  # the login of Debian's cloud images
SUDO_KINDS = ("nopasswd", "password")
DEFAULT_OLLAMA_MODELS = ["llama3.2:1b", "qwen2.5:0.5b"]
DEFAULT_UPSTREAM_MODELS = ["upstream-mock"]
OLLAMA_PORT = 11434
UPSTREAM_PORT = 4000

# Host containers: systemd as PID 1 with its own dockerd inside (--privileged fails on these machines
# with "unable to apply caps", and without systempaths=unconfined the inner dockerd cannot start containers).
HOST_CAPS = ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "MKNOD"]
HOST_SECURITY = ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"]
HOST_SECURITY_SDK = [o for o in HOST_SECURITY if not o.startswith("systempaths")]  # see _create_host


def host_config(client, docker_volume: str, network_mode: str, binds: dict | None = None) -> dict:
    """A host container's: systemd (cgroups, tmpfs /run) and its own engine on `docker_volume`."""
    hc = client.api.create_host_config(
        cap_add=HOST_CAPS,
        security_opt=HOST_SECURITY_SDK,
        binds={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
               docker_volume: {"bind": "/var/lib/docker", "mode": "rw"}, **(binds or {})},
        tmpfs={"/run": "", "/run/lock": ""},
        network_mode=network_mode,
    )
    # The SDK has no `systempaths=unconfined`: like the docker CLI, send empty MaskedPaths and
    # ReadonlyPaths (an empty list overrides the engine's default set; absent keeps it).
    hc["MaskedPaths"] = []
    hc["ReadonlyPaths"] = []
    return hc


class TestbedError(RuntimeError):
    __test__ = False  # not a pytest test class


@dataclass
class ExecResult:
    rc: int
    output: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def __str__(self) -> str:
        return self.output


def _env_list(name: str) -> list[str] | None:
    v = os.environ.get(name, "").strip()
    return [x.strip() for x in v.split(",") if x.strip()] or None


def parse_spec(spec: str) -> tuple[str, str]:
    name, _, role = spec.partition(":")
    role = role or "host"
    if role not in ROLES:
        raise TestbedError(f"unknown role {role!r} in {spec!r} (roles: {', '.join(ROLES)})")
    if not name or not all(c.isalnum() or c in "-." for c in name) or not name[0].isalnum():
        raise TestbedError(f"bad host name {name!r}: letters, digits, '-' and '.' only")
    return name, role


def wait_until(what: str, check, timeout: float, interval: float = 0.5):
    """Poll check() until it returns a truthy value; raise TestbedError at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - the last failure is reported at the deadline
            last = e
        if time.monotonic() > deadline:
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


class InventoryCode(str):
    """A value the inventory writes as Python code rather than as a literal."""

    def __repr__(self) -> str:
        return str(self)


def _tar(files: dict[str, tuple[bytes | None, int]]) -> bytes:
    """A tar of {path: (content or None for a directory, mode)}, owned by root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path)
            info.mode = mode
            info.uid = info.gid = 0
            info.mtime = int(time.time())
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def each_at_once(work, items: list[tuple]) -> dict[str, str]:
    """work(*item) for every item, each in a thread of its own; {item's first element: error} of
    those that raised (a host's engine work is seconds each: one after another adds them up)."""
    errors: dict[str, str] = {}

    def run(*item):
        try:
            work(*item)
        except Exception as e:  # noqa: BLE001 - collected and reported together
            errors[str(item[0])] = str(e)

    threads = [threading.Thread(target=run, args=item) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _listing(errors: dict[str, str]) -> str:
    return "\n  " + "\n  ".join(f"{name}: {error}" for name, error in errors.items())


def _port_open(ip: str, port: int) -> bool:
    with socket.create_connection((ip, port), timeout=2):
        return True


def _http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Testbed:
    __test__ = False  # not a pytest test class

    def __init__(self, state_dir: str | os.PathLike | None = None, images: str = "local",
                 client: docker.DockerClient | None = None, verbose: bool = False):
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        if images not in ("local", "official"):
            raise TestbedError("images must be 'local' or 'official'")
        self.images_mode = images
        self.client = client or docker.from_env(timeout=600)
        self.images = Images(self.client, verbose=verbose)
        self._removers: list[threading.Thread] = []
        self.archive_seconds = 0.0  # in archives(): up() logs its image time without it (tests/suite_budget.py)

    # -- state ---------------------------------------------------------------------------------
    @property
    def key_path(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def archives_dir(self) -> Path:
        return self.state_dir / "archives"

    @contextlib.contextmanager
    def _lock(self, what: str):
        """An exclusive lock across processes sharing this state dir (several test runs, a user by hand)."""
        self._ensure_state_dir()
        with open(self.state_dir / f"{what}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _ensure_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)

    def ensure_key(self) -> Path:
        """The bed's SSH keypair (ed25519, 0600), made once with ssh-keygen."""
        self._ensure_state_dir()
        if not self.key_path.is_file() or not self.key_path.with_suffix(".pub").is_file():
            for p in (self.key_path, self.key_path.with_suffix(".pub")):
                p.unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "litellm-deploy-testbed",
                            "-f", str(self.key_path)], check=True)
        os.chmod(self.key_path, 0o600)
        return self.key_path

    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {"hosts": {}}

    def _save_state(self, state: dict) -> None:
        self._ensure_state_dir()
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_file)

    def _key_file(self, name: str) -> Path:
        return self.state_dir / f"upstream-{name}.key"

    def sudo_password_file(self, name: str) -> Path:
        return self.state_dir / f"sudo-{name}.password"

    # -- docker helpers ------------------------------------------------------------------------
    def _labels(self, name: str | None = None, role: str | None = None) -> dict[str, str]:
        labels = {LABEL: "1"}
        if name:
            labels[NAME_LABEL] = name
        if role:
            labels[ROLE_LABEL] = role
        return labels

    def _containers(self, names: list[str] | None = None):
        # The low-level list, then one inspect each: another user of the bed may remove a
        # container in between, which must not fail this one (containers.list would raise).
        found = []
        for summary in self.client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
            name = (summary.get("Labels") or {}).get(NAME_LABEL)
            if name is None or (names is not None and name not in names):
                continue
            try:
                found.append(self.client.containers.get(summary["Id"]))
            except docker.errors.NotFound:
                continue
        return sorted(found, key=lambda c: c.labels[NAME_LABEL])

    def _container(self, name: str):
        found = self._containers([name])
        if not found:
            raise TestbedError(f"no test bed host named {name!r} (see `python -m tests.testbed ls`)")
        return found[0]

    def _network(self):
        nets = self.client.networks.list(names=[NETWORK])
        nets = [n for n in nets if n.name == NETWORK]
        if nets:
            return nets[0]
        # A host keeps its address across a reboot only with a fixed one, and Docker takes fixed
        # addresses only on a network whose subnet was configured: take the free pool Docker picks
        # (no clash with the machine's other networks), then create the network again with it pinned.
        probe = self.client.networks.create(NETWORK, driver="bridge", labels={LABEL: "1"}, check_duplicate=True)
        probe.reload()
        pool = probe.attrs["IPAM"]["Config"][0]
        probe.remove()
        ipam = docker.types.IPAMConfig(pool_configs=[
            docker.types.IPAMPool(subnet=pool["Subnet"], gateway=pool.get("Gateway"))])
        return self.client.networks.create(NETWORK, driver="bridge", labels={LABEL: "1"}, ipam=ipam,
                                           check_duplicate=True)

    def _free_addresses(self, network, count: int) -> list[str]:
        """Addresses no bed container holds, running or stopped (a stopped host's address is still its
        own). Called under the hosts lock, which every creation of a bed container takes."""
        network.reload()
        subnet = ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])
        taken = {network.attrs["IPAM"]["Config"][0].get("Gateway")}
        for c in self._containers():  # not containers.list: a host removed meanwhile must not fail this
            net = c.attrs["NetworkSettings"]["Networks"].get(NETWORK) or {}
            taken.add((net.get("IPAMConfig") or {}).get("IPv4Address"))
            taken.add(net.get("IPAddress"))
        free = [str(a) for a in subnet.hosts() if str(a) not in taken]
        if len(free) < count:
            raise TestbedError(f"the bed network {NETWORK} ({subnet}) has no {count} free addresses")
        return free[:count]

    def _volume_name(self, name: str) -> str:
        return f"{CONTAINER_PREFIX}{name}-docker"

    def _remove(self, name: str) -> None:
        image = None  # the host's own image: it empties the host's volume below
        for c in self._containers([name]):
            image = image or c.attrs.get("Image")
            c.remove(force=True, v=True)
        try:
            other = self.client.containers.get(CONTAINER_PREFIX + name)
        except docker.errors.NotFound:
            other = None
        if other is not None:
            if (other.labels or {}).get(LABEL) != "1":
                raise TestbedError(f"container {other.name} exists and is not the test bed's: remove it by hand")
            other.remove(force=True, v=True)
        for v in self.client.volumes.list(filters={"label": [f"{LABEL}=1", f"{NAME_LABEL}={name}"]}):
            try:
                if image is not None:
                    self._emptied(v.name, image)
                v.remove(force=True)
            except docker.errors.APIError as e:
                raise TestbedError(f"cannot remove volume {v.name}: {e}") from e
        self._key_file(name).unlink(missing_ok=True)
        self.sudo_password_file(name).unlink(missing_ok=True)

    def _emptied(self, volume: str, image: str) -> None:
        """A host's volume emptied from a container of its own before the engine removes it. The engine's
        local volume driver deletes a volume's files while holding the lock every volume call takes (Docker
        20.10, volume/local Root.Remove): removing a host's engine volume (the unpacked images, some 80,000
        files) held up every other suite's volume calls, each up() among them, for as long. Deleting the
        files from a container holds no such lock; the engine then removes an empty directory."""
        # Best effort: whatever is left, the engine's removal deletes.
        with contextlib.suppress(docker.errors.APIError, docker.errors.ContainerError):
            self.client.containers.run(image, ["/volume", "-mindepth", "1", "-delete"], entrypoint=["find"],
                                       remove=True, network_mode="none", labels={LABEL: "1"},
                                       volumes={volume: {"bind": "/volume", "mode": "rw"}})

    @staticmethod
    def _address(container) -> str:
        container.reload()
        net = container.attrs["NetworkSettings"]["Networks"].get(NETWORK) or {}
        return net.get("IPAddress") or ""

    # -- images --------------------------------------------------------------------------------
    def image(self, which: str) -> str:
        """An image's reference: the hosts' always local, the deploy's (DEPLOYED) local or official."""
        with self._lock("images"):
            if self.images_mode == "official" and which in DEPLOYED:
                return self.images.official()[which]
            return getattr(self.images, which)()

    def litellm_image(self) -> str:
        """The LiteLLM image reference the deploy should use (built or pulled on first use)."""
        return self.image("litellm")

    def postgres_image(self) -> str:
        """The Postgres image reference the deploy should use (built or pulled on first use)."""
        return self.image("postgres")

    def caddy_image(self) -> str:
        """The Caddy image (TLS fronts, load balancers) the deploy should use."""
        return self.image("caddy")

    def valkey_image(self) -> str:
        """The Valkey image (redis_hosts) the deploy should use."""
        return self.image("valkey")

    def build_images(self) -> dict[str, str]:
        """All images: the hosts' (always local) and the deploy's (local, or pulled when official)."""
        started = time.monotonic()
        with self._lock("images"):
            if self.images_mode == "official":
                refs = self.images.build(["host", "ollama"])
                refs.update(self.images.official())
            else:
                refs = self.images.all()
            self.images.prune()
        log(f"images ready: {time.monotonic() - started:.1f}s")  # made once per machine (tests/suite_budget.py)
        return refs

    def archives(self, which: tuple[str, ...] = ("litellm", "postgres")) -> dict[str, Path]:
        """`docker save | gzip -1` of the deploy's images named in `which` (of DEPLOYED), cached by image id.

        Returns {name: path}: files named after the image id (a rebuilt image gets a new file);
        `.testbed/archives/<name>.tar.gz` always points at the current one. Each archive restores its
        image reference on `docker load` (see litellm_image(), postgres_image(), caddy_image(), valkey_image())."""
        out = {}
        started = time.monotonic()
        for k in which:
            ref = self.image(k)
            with self._lock("images"):
                path = self.images.archive(ref, self.archives_dir)
            link = self.archives_dir / f"{k}.tar.gz"
            tmp = link.with_name(f".{k}.tar.gz.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(path.name)
            os.replace(tmp, link)
            out[k] = path
        seconds = time.monotonic() - started
        self.archive_seconds += seconds
        log(f"archives ready: {seconds:.1f}s")  # made once per machine (tests/suite_budget.py)
        return out

    def prepare(self) -> None:
        """Everything a suite's hosts are made from, made now: the images, the deploy's archives and the
        provisioned hosts' seed. `make test` starts this beside the unit tiers (tests/conftest.py), so the
        first e2e suites find it ready instead of one making it while the other waits on its lock."""
        self.build_images()
        self._seed()

    # -- up ------------------------------------------------------------------------------------
    def up(self, specs: list[str], ollama_models: list[str] | None = None,
           upstream_models: list[str] | None = None, timeout: float = 180,
           sudo: dict[str, str] | None = None, provisioned: tuple[str, ...] = ()) -> list[dict]:
        """Create fresh hosts ("NAME" or "NAME:ROLE"), replacing any of the same name. Returns hosts().

        sudo: {"NAME": "nopasswd" | "password"} for hosts the deploy reaches as a non-root sudoer.
        provisioned: names of plain hosts that boot with Docker and the deploy's images (provision.py)."""
        parsed = [parse_spec(s) for s in specs]
        if len({n for n, _ in parsed}) != len(parsed):
            raise TestbedError("a host name is given twice")
        sudo = sudo or {}
        for name, kind in sudo.items():
            if kind not in SUDO_KINDS:
                raise TestbedError(f"sudo for {name!r}: {kind!r} is not one of {', '.join(SUDO_KINDS)}")
            if (name, "host") not in parsed and (name, "ollama") not in parsed:
                raise TestbedError(f"sudo for {name!r}: not a host (or ollama) being brought up")
        if not set(provisioned) <= {n for n, r in parsed if r == "host"}:
            raise TestbedError(f"provisioned {sorted(provisioned)}: only plain hosts being brought up can be")
        ollama_models = ollama_models or _env_list("TESTBED_OLLAMA_MODELS") or DEFAULT_OLLAMA_MODELS
        upstream_models = upstream_models or _env_list("TESTBED_UPSTREAM_MODELS") or DEFAULT_UPSTREAM_MODELS
        roles = {r for _, r in parsed}
        t0, archived = time.monotonic(), self.archive_seconds
        refs = {}
        if roles & {"host", "ollama"}:
            refs["host"] = self.image("host")
        if "ollama" in roles:
            refs["ollama"] = self.image("ollama")
        if "upstream" in roles:
            refs["upstream"] = self.litellm_image()
        seed = self._seed() if provisioned else None
        with self._lock("images"):
            self.images.prune()
        # Images and the seed are made once per machine, by the first suite that asks (tests/suite_budget.py).
        log(f"images and seed ready: {time.monotonic() - t0 - (self.archive_seconds - archived):.1f}s")
        with Timer(f"up {' '.join(specs)}"):
            with self._lock("hosts"):
                pub = self.ensure_key().with_suffix(".pub").read_bytes()
                network = self._network()
                state = self._load_state()
                addresses = dict(zip((n for n, _ in parsed), self._free_addresses(network, len(parsed))))
                # Every host at once (each removal, creation and start is seconds of the engine's work).
                created: dict[str, tuple] = {}

                def create(name, role):
                    self._remove(name)
                    endpoint = self.client.api.create_endpoint_config(aliases=[name], ipv4_address=addresses[name])
                    if role == "upstream":
                        c, info = self._create_upstream(name, refs["upstream"], upstream_models, endpoint)
                    else:
                        c, info = self._create_host(name, role, refs[role], pub, ollama_models, endpoint,
                                                    seed if name in provisioned else None)
                    c.start()
                    created[name] = (c, info)

                failed = each_at_once(create, parsed)
                started = []
                for name, role in parsed:
                    state["hosts"].pop(name, None)
                    if name in created:
                        c, info = created[name]
                        started.append((name, role, c))
                        state["hosts"][name] = {"role": role, "container": c.name, **info}
                self._save_state(state)
                if failed:
                    raise TestbedError("hosts not created:" + _listing(failed))

            def ready(name, role, c):
                with Timer(f"host {name} ({role}) ready"):
                    self._wait_ready(name, role, c, timeout)
                    if name in sudo:
                        self._add_sudo_user(name, sudo[name])

            if errors := each_at_once(ready, started):
                raise TestbedError("hosts not ready:" + _listing(errors))
            if sudo:
                with self._lock("hosts"):
                    state = self._load_state()
                    for name, kind in sudo.items():
                        state["hosts"][name]["sudo"] = kind
                    self._save_state(state)
        log(f"up total (images + hosts): {time.monotonic() - t0:.1f}s")
        return self.hosts()

    def _seed(self) -> Seed:
        """The provisioned hosts' image and seed volume, made once per host image and archive set."""
        seed = Seed(self.client, self.image("host"), list(self.archives(DEPLOYED).values()),
                    lambda volume, binds: host_config(self.client, volume, "bridge", binds))
        with self._lock("seed"):
            seed.ensure()
        return seed

    def _create_host(self, name: str, role: str, image: str, pub: bytes, ollama_models: list[str], endpoint,
                     seed: Seed | None = None):
        """image: the role's; a seed (provisioned) replaces it with its own and fills the engine volume."""
        vol = self.client.volumes.create(self._volume_name(name), labels=self._labels(name, role))
        if seed is not None:
            seed.copy_into(vol.name)
            image = seed.image
        resp = self.client.api.create_container(
            image,
            name=CONTAINER_PREFIX + name,
            hostname=name,
            labels=self._labels(name, role),
            host_config=host_config(self.client, vol.name, NETWORK),
            networking_config=self.client.api.create_networking_config({NETWORK: endpoint}),
            stop_signal="SIGRTMIN+3",
            detach=True,
        )
        c = self.client.containers.get(resp["Id"])
        files = {
            "root/.ssh": (None, 0o700),
            "root/.ssh/authorized_keys": (pub, 0o600),
        }
        info: dict = {}
        if role == "ollama":
            files["etc/ollama-standin"] = (None, 0o755)
            files["etc/ollama-standin/models.json"] = (json.dumps(ollama_models).encode() + b"\n", 0o644)
            info["models"] = ollama_models
        c.put_archive("/", _tar(files))
        return c, info

    def _add_sudo_user(self, name: str, kind: str) -> None:
        """SUDO_USER with the bed's key and sudo as `kind` says, made as root over the bed's SSH;
        then checked: the user logs in, and `sudo -n` works exactly when no password is wanted."""
        pub = self.key_path.with_suffix(".pub").read_text().strip()
        rule = "NOPASSWD: ALL" if kind == "nopasswd" else "ALL"
        setup = (
            f"set -e; useradd --create-home --shell /bin/bash {SUDO_USER}; "
            f"install -d -m 700 -o {SUDO_USER} -g {SUDO_USER} /home/{SUDO_USER}/.ssh; "
            f"printf '%s\\n' '{pub}' > /home/{SUDO_USER}/.ssh/authorized_keys; "
            f"chown {SUDO_USER}:{SUDO_USER} /home/{SUDO_USER}/.ssh/authorized_keys; "
            f"chmod 600 /home/{SUDO_USER}/.ssh/authorized_keys; "
            f"printf '%s\\n' '{SUDO_USER} ALL=(ALL:ALL) {rule}' > /etc/sudoers.d/testbed-{SUDO_USER}; "
            f"chmod 440 /etc/sudoers.d/testbed-{SUDO_USER}; visudo -cq"
        )
        r = self.ssh(name, setup, timeout=60)
        if not r.ok:
            raise TestbedError(f"{name}: could not make the sudo user {SUDO_USER}: {r.output}")
        password = None
        if kind == "password":
            password = secrets.token_urlsafe(24)
            path = self.sudo_password_file(name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            # On stdin: never in a command line on either side.
            r = self.ssh(name, "chpasswd", timeout=60, input=f"{SUDO_USER}:{password}\n".encode())
            if not r.ok:
                raise TestbedError(f"{name}: could not set the sudo password: {r.output}")
        ask = self.ssh_as(name, SUDO_USER, "sudo -n true", timeout=30)
        if ask.ok != (kind == "nopasswd"):
            raise TestbedError(f"{name}: `sudo -n true` as {SUDO_USER} gave rc {ask.rc} with sudo {kind}: {ask.output}")
        if password is not None:
            r = self.ssh_as(name, SUDO_USER, "sudo -S -k -p '' id -u", timeout=30, input=f"{password}\n".encode())
            if r.output.strip().splitlines()[-1:] != ["0"]:
                raise TestbedError(f"{name}: sudo with the password did not give root: {r.output}")

    def _create_upstream(self, name: str, image: str, models: list[str], endpoint):
        self._ensure_state_dir()
        key = "sk-" + secrets.token_urlsafe(32)
        key_file = self._key_file(name)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.chmod(key_file, 0o600)
        lines = ["# Upstream LiteLLM of the test bed: every model answers with LiteLLM's own mock_response.",
                 "model_list:"]
        for m in models:
            lines += [f"  - model_name: {json.dumps(m)}",
                      "    litellm_params:",
                      f"      model: {json.dumps('openai/' + m)}",
                      f"      mock_response: {json.dumps(f'Hello from {m} (LiteLLM mock_response on upstream {name})')}"]
        lines += ["general_settings:", "  master_key: os.environ/LITELLM_MASTER_KEY", ""]
        config = "\n".join(lines).encode()
        c = self.client.containers.create(
            image,
            command=["--config", "/app/upstream-config.yaml", "--port", str(UPSTREAM_PORT)],
            name=CONTAINER_PREFIX + name,
            hostname=name,
            labels=self._labels(name, "upstream"),
            environment={"LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            network=NETWORK,
            networking_config={NETWORK: endpoint},
            detach=True,
        )
        c.put_archive("/app", _tar({"upstream-config.yaml": (config, 0o644)}))
        return c, {"models": models, "api_key_file": str(key_file)}

    def _wait_ready(self, name: str, role: str, c, timeout: float) -> None:
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        def running():
            c.reload()
            if c.status in ("exited", "dead"):
                logs = c.logs(tail=40).decode(errors="replace")
                raise TestbedError(f"container exited:\n{logs}")
            return c.status == "running"

        wait_until(f"{name} running", running, left())
        ip = self._address(c)
        if role == "upstream":
            wait_until(f"{name} LiteLLM /health/liveliness", lambda: running() and
                       "alive" in _http_get(f"http://{ip}:{UPSTREAM_PORT}/health/liveliness"), left(), 1.0)
            return
        state_box = {}

        def booted():
            r = c.exec_run(["systemctl", "is-system-running"])
            state_box["state"] = r.output.decode().strip()
            return state_box["state"] in ("running", "degraded")

        wait_until(f"{name} systemd boot", booted, left())
        if state_box["state"] == "degraded":
            failed = c.exec_run(["systemctl", "--failed", "--no-legend", "--plain"]).output.decode().strip()
            log(f"warning: {name} booted degraded; failed units:\n{failed}")
        wait_until(f"{name} sshd on {ip}:22", lambda: _port_open(ip, 22), left())
        wait_until(f"{name} SSH login as root", lambda: self.ssh(name, "true", timeout=10).ok, left(), 1.0)
        if role == "ollama":
            wait_until(f"{name} Ollama stand-in", lambda: "Ollama is running" in _http_get(f"http://{ip}:{OLLAMA_PORT}/"),
                       left())

    # -- queries -------------------------------------------------------------------------------
    def hosts(self) -> list[dict]:
        """One dict per host: name, role, address, ssh_*, and api_base/api_key_file where they apply."""
        out = []
        state = self._load_state()["hosts"]
        key = str(self.key_path)
        for c in self._containers():
            name, role = c.labels[NAME_LABEL], c.labels.get(ROLE_LABEL, "host")
            ip = self._address(c) if c.status == "running" else ""
            h = {"name": name, "role": role, "address": ip, "status": c.status, "container": c.name}
            if role == "upstream":
                h.update(ssh_port=None, ssh_user=None, ssh_key=None,
                         api_base=f"http://{ip}:{UPSTREAM_PORT}" if ip else None,
                         api_key_file=str(self._key_file(name)),
                         models=state.get(name, {}).get("models", []))
            else:
                h.update(ssh_port=22, ssh_user="root", ssh_key=key)
                kind = state.get(name, {}).get("sudo")
                if kind:
                    h.update(sudo=kind, deploy_user=SUDO_USER)
                    if kind == "password":
                        h["sudo_password_file"] = str(self.sudo_password_file(name))
                if role == "ollama":
                    h.update(api_base=f"http://{ip}:{OLLAMA_PORT}" if ip else None,
                             models=state.get(name, {}).get("models", []))
            out.append(h)
        return out

    def host(self, name: str) -> dict:
        for h in self.hosts():
            if h["name"] == name:
                return h
        raise TestbedError(f"no test bed host named {name!r}")

    def upstream_key_file(self, name: str) -> Path:
        """Where an upstream's master key is kept (0600)."""
        return self._key_file(name)

    def upstream_key(self, name: str) -> str:
        return self._key_file(name).read_text().strip()

    # -- actions -------------------------------------------------------------------------------
    def exec(self, name: str, cmd: str | list[str], user: str = "root") -> ExecResult:
        """Run a command inside the host's container (docker exec); a string goes through `sh -c`."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
        r = self._container(name).exec_run(argv, user=user)
        return ExecResult(r.exit_code, r.output.decode(errors="replace"))

    def ssh_command(self, name: str, user: str | None = None) -> list[str]:
        h = self.host(name)
        if not h.get("ssh_user"):
            raise TestbedError(f"{name} ({h['role']}) has no SSH")
        return ["ssh", "-i", h["ssh_key"], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
                f"{user or h['ssh_user']}@{h['address']}"]

    def ssh(self, name: str, cmd: str, timeout: float = 600, input: bytes | None = None) -> ExecResult:
        """Run a command on the host over real SSH with the bed's key, as root."""
        return self.ssh_as(name, None, cmd, timeout, input)

    def ssh_as(self, name: str, user: str | None, cmd: str, timeout: float = 600,
               input: bytes | None = None) -> ExecResult:
        """The same as another user of the host (its sudo user: SUDO_USER)."""
        r = subprocess.run(self.ssh_command(name, user) + [cmd], capture_output=True, timeout=timeout, input=input)
        return ExecResult(r.returncode, (r.stdout + r.stderr).decode(errors="replace"))

    def restart(self, name: str, timeout: float = 180) -> dict:
        """Reboot a host (docker restart: systemd shuts down on SIGRTMIN+3, boots again)."""
        c = self._container(name)
        role = c.labels.get(ROLE_LABEL, "host")
        before = self._address(c)
        with Timer(f"restart {name}"):
            c.restart(timeout=60)
            self._wait_ready(name, role, c, timeout)
        after = self._address(c)
        if after != before:  # the address is fixed at `up` (see _network): this is a fault of the bed
            raise TestbedError(f"{name} came back with address {after} (was {before})")
        return self.host(name)

    def down(self, names: list[str] | None = None, background: bool = False) -> list[str]:
        """Remove hosts (all when names is None), their volumes, and the network when it is empty.

        background=True, for a suite's last teardown: the hosts are killed now (their CPU, memory and
        addresses freed at once) and removed by a thread of their own, which the process waits for
        before it exits (settle() waits sooner). Removing a host that ran a deploy took 25-90 s in a
        loaded run (its engine's volume holds the unpacked images), time the worker then spent idle
        instead of on its next suite. Never for names that are brought up again in the same run."""

        def remove(name):
            with Timer(f"remove {name}"):
                self._remove(name)

        with Timer("down"):
            with self._lock("hosts"):
                targets = [c.labels[NAME_LABEL] for c in self._containers(names)] if names is None else list(names)
            if background and names is not None:
                for c in self._containers(targets):
                    with contextlib.suppress(docker.errors.APIError):  # already stopped, or gone
                        c.kill()
                remover = threading.Thread(target=self._remove_in_background, args=(remove, names, targets),
                                           name=f"testbed down {' '.join(targets)}")
                remover.start()  # not a daemon: the interpreter waits for it at exit
                self._removers.append(remover)
                return targets
            # At once, and outside the lock, so another suite's up() does not wait for this teardown.
            errors = each_at_once(remove, [(name,) for name in targets])
            return self._forget(names, targets, errors)

    def _remove_in_background(self, remove, names: list[str], targets: list[str]) -> None:
        try:
            self._forget(names, targets, each_at_once(remove, [(name,) for name in targets]))
        except Exception as e:  # noqa: BLE001 - nobody waits on this thread to raise to; `down` removes leftovers
            log(f"background removal of {', '.join(targets)} failed: {e}")

    def settle(self) -> None:
        """Wait for the hosts being removed in the background (down(background=True))."""
        while self._removers:
            self._removers.pop().join()

    def _forget(self, names: list[str] | None, targets: list[str], errors: dict[str, str]) -> list[str]:
        """The removed hosts out of the state file (returned), and the network once nothing uses it."""
        gone = []
        with self._lock("hosts"):
            state = self._load_state()
            for name in targets:
                if name not in errors:
                    state["hosts"].pop(name, None)
                    gone.append(name)
            if errors:
                self._save_state(state)
                raise TestbedError("hosts not removed:" + _listing(errors))
            if names is None:  # also anything else carrying the label (e.g. a test's own containers)
                for c in self.client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
                    c.remove(force=True, v=True)
                # The seed stays, as the images do: made from them once per machine, replaced when they change.
                for v in self.client.volumes.list(filters={"label": f"{LABEL}=1"}):
                    if SEED_LABEL not in (v.attrs.get("Labels") or {}):
                        v.remove(force=True)
            self._save_state(state)
            for net in self.client.networks.list(names=[NETWORK]):
                if net.name != NETWORK:
                    continue
                net.reload()
                if not net.attrs.get("Containers"):
                    net.remove()
        return gone

    # -- inventory -----------------------------------------------------------------------------
    def inventory_text(self, extra_data: dict[str, dict] | None = None, names: list[str] | None = None) -> str:
        """A pyinfra inventory (Python) for the current hosts (only `names` when given).

        extra_data: {"host name": {...}, "*": {...}} merged into each host's data ("*" = every host).
        Gateways are the one group, `litellm_hosts` (pyinfra turns every module-level list into a
        group). Ollama stand-ins are not inventory hosts, as a user's Ollama nodes are not: every
        gateway gets them as data, ollama_nodes = {name: {"url": ...}}, so pyinfra never logs into them.
        """
        extra_data = extra_data or {}
        gateways, upstreams = [], []
        hosts = [h for h in self.hosts() if names is None or h["name"] in names]
        nodes = {h["name"]: {"url": h["api_base"]} for h in hosts if h["role"] == "ollama"}
        for h in hosts:
            if h["role"] == "upstream":
                upstreams.append(h)
                continue
            if not h["address"]:
                raise TestbedError(f"{h['name']} is not running; `up` it again")
            if h["role"] == "ollama":
                continue
            data = {
                "ssh_hostname": h["address"],
                "ssh_user": h.get("deploy_user") or h["ssh_user"],
                "ssh_key": h["ssh_key"],
                "ssh_known_hosts_file": "/dev/null",
                "ssh_strict_host_key_checking": "off",
            }
            if nodes:
                data["ollama_nodes"] = nodes
            if h.get("sudo"):
                data["_sudo"] = True
            if h.get("sudo_password_file"):
                # Read when pyinfra loads the inventory: the password stays in its 0600 file.
                data["_sudo_password"] = InventoryCode(
                    f"__import__('pathlib').Path({h['sudo_password_file']!r}).read_text().strip()")
            data.update(extra_data.get("*", {}))
            data.update(extra_data.get(h["name"], {}))
            gateways.append((h["name"], data))
        lines = [
            "# pyinfra inventory written by `python -m tests.testbed inventory` for the test bed's hosts.",
            "# Regenerate it after every `up` (addresses change). Run: pyinfra THIS_FILE deploy.py",
        ]
        for u in upstreams:
            lines.append(f"# upstream LiteLLM {u['name']}: api_base {u['api_base']}, key in {u['api_key_file']}")
        for name, node in nodes.items():
            lines.append(f"# Ollama stand-in {name}: {node['url']}, a node in each gateway's ollama_nodes (no SSH)")
        lines += ["", "litellm_hosts = ["]
        for name, data in gateways:
            lines.append(f"    ({name!r}, {{")
            for k, v in data.items():
                lines.append(f"        {k!r}: {v!r},")
            lines.append("    }),")
        lines += ["]", ""]
        return "\n".join(lines)

    def write_inventory(self, path: str | os.PathLike | None = None, extra_data: dict[str, dict] | None = None,
                        names: list[str] | None = None) -> Path:
        path = Path(path) if path else self.state_dir / "inventory.py"
        text = self.inventory_text(extra_data, names)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path.resolve()
