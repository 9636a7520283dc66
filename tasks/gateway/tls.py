"""The TLS front: a Caddy service (`tls`) in the gateway's compose project, in front of the proxy.

HTTPS on tls_port with the certificate of settings.tls (tasks/config/certificates.py: the deployment CA's
leaf, the user's files, or ACME by Caddy itself); plain HTTP on http_port answers only with a
redirect to HTTPS; requests go to litellm:4000 over the compose network. The proxy's own port is then
published on 127.0.0.1 only (templates/gateway/docker-compose.yml.j2), so host-local tools and checks keep it
and no other host reaches it in clear.

Caddy reads its files only when it starts, so the service is recreated when the Caddyfile, the
certificate or the key changed (as the proxy is for its config), and otherwise left running. Every
changed Caddyfile is first checked by the image's own `caddy validate`, so a Caddyfile the pinned Caddy
refuses fails the host before the running front is replaced.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.api.state import BaseStateCallback
from pyinfra.facts.files import Directory
from pyinfra.operations import files

from tasks.config import certificates
from tasks.config import secrets as S
from tasks.config.certificates import CertificateStore, TlsMaterial
from tasks.config.filters import url_host
from tasks.config.registry import run_value
from tasks.config.settings import Settings
from tasks.config.tls_config import port_suffix
from tasks.gateway import stack
from tasks.lib import compose
from tasks.lib.fact_cache import absent_reads, directory_reads
from tasks.lib.render import environment
from tasks.lib.uploads import private_file_reads
from tasks.remote import program

SERVICE = "tls"
# Where the front's files live on the host (a root-only directory of the install dir) and where the
# container sees them (read-only).
DIRECTORY = "tls"
MOUNT = "/etc/litellm-tls"
CADDYFILE = "Caddyfile"
CERT = "cert.pem"
KEY = "key.pem"
CA = "ca.crt"


def remote_dir(settings: Settings) -> str:
    return f"{settings.install_dir}/{DIRECTORY}"


def served_certificate(install_dir: str) -> str:
    """Where a gateway keeps the certificate its front serves (read back before a run issues one)."""
    return f"{install_dir.rstrip('/')}/{DIRECTORY}/{CERT}"


def render_caddyfile(settings: Settings) -> str:
    env = environment()
    return env.get_template("gateway/Caddyfile.j2").render(
        settings=settings,
        mount=MOUNT,
        cert=CERT,
        key=KEY,
        upstream="litellm:4000",
        https_suffix=port_suffix(settings.tls_port, 443),
    )


# --- certificates ------------------------------------------------------------------------------


class _SaveWhenOperationsStart(BaseStateCallback):
    """Writes new certificates (and a new CA) beside the secrets file when the first operation starts:
    never under --dry, and before any of them reaches a host."""

    def __init__(self, store: CertificateStore):
        self.store = store

    # The type-ignore: pyinfra's BaseStateCallback declares its callbacks static, yet calls them on the instance.
    def operation_host_start(self, state, host, op_hash) -> None:  # type: ignore[override]
        for line in self.store.save():
            logger.warning(f"--> TLS: wrote {line}")


def store_for(secrets_file: Path) -> CertificateStore:
    """The deployment's certificate store for this run (one per run and directory, so every host of
    the run sees the same new CA)."""
    directory = certificates.tls_dir(secrets_file)

    def new_store() -> CertificateStore:
        store = CertificateStore(directory)
        host.state.add_callback_handler(_SaveWhenOperationsStart(store))
        return store

    return run_value(host.state, (CertificateStore, directory), new_store)


def material(settings: Settings) -> TlsMaterial | None:
    """This gateway's certificate, key and CA (None with acme: Caddy obtains and keeps its own)."""
    if settings.tls == "self-signed":
        store = store_for(S.secrets_path(host.data.get("secrets_file")))
        return store.leaf(settings.host_name, settings.tls_names)
    if settings.tls == "files":
        return certificates.read_files(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    return None


# --- on the host -------------------------------------------------------------------------------


@operation()
def caddyfile_valid(
    image: str,
    mounts: dict[str, str],
    caddyfile: str,
    changed: list[OperationMeta | None],
    front: str = "the TLS front",
):
    """`caddy validate` by the pinned image on the files as written, when any of them changed: the
    gateway's TLS front, or a load balancer (tasks/balancer.py). `mounts`: host directory -> where
    the service's container sees it (read-only here too); `caddyfile`: its path in the container."""
    if not compose.changed(changed):
        host.noop(f"{front}'s files did not change")
        return
    on_host = next(
        (source + caddyfile[len(target) :] for source, target in mounts.items() if caddyfile.startswith(f"{target}/")),
        caddyfile,
    )
    volumes = " ".join(f"-v {shlex.quote(f'{source}:{target}:ro')}" for source, target in mounts.items())
    validate = (
        f"docker run --rm --network none {volumes} --entrypoint caddy {shlex.quote(image)} validate "
        f"--config {shlex.quote(caddyfile)} --adapter caddyfile"
    )
    refusal = f"{front} ({image}) refuses {on_host}; caddy validate says:"
    # Caddy logs its refusal as a JSON line of level "error": keep that, drop the progress lines.
    yield (
        f"{validate} >/dev/null 2>&1 || {{ echo {shlex.quote(refusal)} >&2; "
        f'{validate} 2>&1 | grep -Ev \'^[{{]"level":"(debug|info)"\' | tail -n 5 >&2; exit 1; }}'
    )


class FrontContainers(FactBase):
    """IDs of the project's containers of the TLS front's service, running or not (an orphan of a
    compose file that no longer has it included)."""

    def command(self, project: str) -> str:
        return (
            f"docker ps --all --quiet --filter label=com.docker.compose.project={shlex.quote(project)} "
            f"--filter label=com.docker.compose.service={SERVICE} 2>/dev/null || true"
        )

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


@operation()
def front_absent(project: str, install_dir: str):
    """With tls off: no front container (it would keep ports 80/443) and no certificate files."""
    containers = host.get_fact(FrontContainers, project=project)
    directory = f"{install_dir}/{DIRECTORY}"
    present = host.get_fact(Directory, path=directory)
    if not containers and not present:
        host.noop("no TLS front")
        return
    if containers:
        yield f"docker rm --force {' '.join(shlex.quote(c) for c in containers)}"
    if present:
        yield f"rm -rf {shlex.quote(directory)}"


def facts_read(settings: Settings) -> list:
    """What tls_front reads when it has nothing to do: [(fact, arguments)] (tasks/lib/fact_cache.py)."""
    if settings.tls == "off":
        return [(Directory, {"path": remote_dir(settings)}), (FrontContainers, {"project": settings.compose_project})]
    directory = remote_dir(settings)
    tls = material(settings)
    written = (
        {CADDYFILE}
        | ({CERT, KEY} if tls is not None else set())
        | ({CA} if tls is not None and tls.ca_pem is not None else set())
    )
    reads = directory_reads(directory)
    for name in (CADDYFILE, CERT, KEY, CA):
        path = f"{directory}/{name}"
        reads += private_file_reads(path) if name in written else absent_reads(path)
    return reads


@deploy("TLS front")
def tls_front(settings: Settings, changes) -> None:
    """The front's files, checked, and the service up; recreated only when they or its image changed."""
    if settings.tls == "off":
        front_absent(
            name="No TLS front (tls is off)", project=settings.compose_project, install_dir=settings.install_dir
        )
        return
    directory = remote_dir(settings)
    files.directory(
        name=f"TLS front directory {directory} (root only)", path=directory, user="root", group="root", mode="700"
    )
    project = stack.component(settings)
    written = [project.write(f"{DIRECTORY}/{CADDYFILE}", render_caddyfile(settings), "644")]
    tls = material(settings)
    wanted = {CADDYFILE}
    if tls is not None:
        written.append(
            project.write(
                f"{DIRECTORY}/{CERT}", tls.cert_pem.decode(), "644", label=f"Write {DIRECTORY}/{CERT} (certificate)"
            )
        )
        written.append(
            project.write(
                f"{DIRECTORY}/{KEY}",
                tls.key_pem.decode(),
                "600",
                label=f"Write {DIRECTORY}/{KEY} (private key, mode 0600)",
            )
        )
        wanted |= {CERT, KEY}
        if tls.ca_pem is not None:
            # Not a secret: what the verification (and host-local clients) check the front against.
            project.write(
                f"{DIRECTORY}/{CA}", tls.ca_pem.decode(), "644", label=f"Write {DIRECTORY}/{CA} (the CA that issued it)"
            )
            wanted.add(CA)
    for name in sorted({CADDYFILE, CERT, KEY, CA} - wanted):
        files.file(name=f"No {DIRECTORY}/{name} (tls is {settings.tls})", path=f"{directory}/{name}", present=False)
    caddyfile_valid(
        name=f"Caddyfile accepted by {settings.tls_image}",
        image=settings.tls_image,
        mounts={directory: MOUNT},
        caddyfile=f"{MOUNT}/{CADDYFILE}",
        changed=written + list(changes.images or []),
    )
    compose.service_up(
        name="TLS front (Caddy) up",
        project=settings.compose_project,
        install_dir=settings.install_dir,
        service=SERVICE,
        depends_on=changes.project,
        recreate_on=written,
        timeout=settings.start_timeout,
    )


# --- verification from the host ------------------------------------------------------------------


def https_checks(settings: Settings) -> list[dict]:
    """The front checked as a client sees it, from the gateway host: HTTPS under its first name with
    the certificate checked against the CA that issued it, and plain HTTP redirected there."""
    name = settings.tls_names[0]
    url = f"https://{url_host(name)}{port_suffix(settings.tls_port, 443)}"
    cafile = f"{MOUNT}/{CA}" if (settings.tls == "self-signed" or settings.tls_ca_file) else ""
    trusted = (
        "the deployment CA"
        if settings.tls == "self-signed"
        else ("tls_ca_file" if settings.tls_ca_file else "the system's trusted CAs")
    )
    # From the host to itself: a DNS name is connected to on 127.0.0.1 (it may resolve elsewhere, or
    # nowhere, from the host), an address as it is.
    connect_to = name if certificates.is_ip(name) else "127.0.0.1"
    return [
        {
            "name": f"HTTPS front, certificate checked against {trusted}",
            "kind": "https",
            "url": f"{url}/health/liveliness",
            "cafile": cafile,
            "connect_to": connect_to,
            "fix": f"see `docker compose --project-directory {settings.install_dir} logs {SERVICE}`; the certificate "
            f"must be valid for {name} and issued by {trusted}",
        },
        {
            "name": "plain HTTP redirects to HTTPS",
            "kind": "redirect",
            "url": f"http://{url_host(name)}{port_suffix(settings.http_port, 80)}/health/liveliness",
            "connect_to": connect_to,
            "expect": f"{url}/health/liveliness",
            "fix": f"see {settings.install_dir}/{DIRECTORY}/{CADDYFILE}",
        },
    ]


def _host_probe_failure(install_dir: str) -> str:
    failed = json.dumps(
        [
            {
                "name": "HTTPS front",
                "url": "",
                "ok": False,
                "status": 0,
                "problem": "cannot run the HTTPS checks on the host (docker run of the proxy's image)",
                "fix": f"docker compose ps in {install_dir}",
            }
        ]
    )
    return f"2>/dev/null || echo {shlex.quote(failed)}"


class HostChecks(FactBase):
    """probe.py's results from the gateway host's own network: run by the proxy's image (which has
    python3, where the host may not) with the host's network, the front's directory read-only."""

    def command(self, install_dir: str, image: str, spec: str) -> str:
        directory = f"{install_dir}/{DIRECTORY}"
        return (
            f"docker run --rm --network host -v {shlex.quote(directory)}:{MOUNT}:ro --entrypoint python3 "
            f"{shlex.quote(image)} -c {shlex.quote(probe_source())} {shlex.quote(spec)} "
            f"{_host_probe_failure(install_dir)}"
        )

    def process(self, output: list[str]) -> list[dict]:
        return json.loads(output[-1])


def probe_source() -> str:
    return program("probe")


def host_results(settings: Settings) -> list[dict]:
    """The front's checks, run on the host (empty with tls off)."""
    return [result for fact, arguments in host_checks_read(settings) for result in host.get_fact(fact, **arguments)]


def host_checks_read(settings: Settings) -> list[tuple[type[FactBase], dict]]:
    """The front's checks from the host as [(fact, arguments)], none with tls off (tasks/lib/fact_cache.py checks)."""
    if settings.tls == "off":
        return []
    spec = json.dumps({"checks": https_checks(settings), "seconds": settings.verify_timeout})
    return [(HostChecks, {"install_dir": settings.install_dir, "image": settings.litellm_image, "spec": spec})]
