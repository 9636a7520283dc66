"""Where the rotation works on a host: a root-only directory under install_dir holding the probes'
key file, the host-side scripts (poller.py, proof.py, shipped from this package) and the poller's log;
and how those scripts are run (python3 of the proxy image, on the host's network)."""

from __future__ import annotations

import shlex

from tasks.config.filters import url_host
from tasks.config.settings import Settings
from tasks.remote import program

WORKSPACE = ".rotation"  # under install_dir, 0700: the probes' key file and the poller's log
KEYS_FILE = "keys"
POLLER_SCRIPT = "poller.py"
PROOF_SCRIPT = "proof.py"
POLL_LOG = "poll.log"
STOP_FILE = "stop"

# The scripts run on the host (tasks/remote/poller.py and proof.py), each one self-contained source.
SCRIPTS = {name: program(name.removesuffix(".py")) for name in (POLLER_SCRIPT, PROOF_SCRIPT)}


def workspace(install_dir: str) -> str:
    return f"{install_dir.rstrip('/')}/{WORKSPACE}"


def poller_name(project: str) -> str:
    return f"{project}-rotation-poller"


def probe_base(settings: Settings) -> str:
    """The proxy's URL from the host itself (its published port)."""
    address = "127.0.0.1" if settings.proxy_bind in ("0.0.0.0", "::", "127.0.0.1") else settings.proxy_bind
    return f"http://{url_host(address)}:{settings.proxy_port}"


def host_python(image: str, install_dir: str, read_only: bool, detach_name: str | None = None) -> str:
    mount = f"{workspace(install_dir)}:/rotation" + (":ro" if read_only else "")
    detach = f"-d --name {shlex.quote(detach_name)} " if detach_name else ""
    return (
        f"docker run --rm {detach}--user 0:0 --network host -v {shlex.quote(mount)} "
        f"--entrypoint python3 {shlex.quote(image)}"
    )
