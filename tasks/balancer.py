"""Load balancers (`lb_hosts`): Caddy in a compose project of its own on each, terminating TLS and
spreading requests over every gateway, with active health checks on /health/readiness.

Pure parts (settings, rendering) are tested without hosts; the operations are at the end.

Timings (seconds, in the rendered Caddyfile; chosen for a gateway that dies without a word):
  health_interval 2, health_timeout 5   a gateway whose readiness fails (or takes over 5 s: a busy
                                        DB-backed proxy took over 2 s on the bed) leaves the rotation
                                        after one failed check, and comes back on the next pass
  fail_duration 10, max_fails 1         a request that could not be proxied to a gateway (refused,
                                        unreachable) takes it out for 10 s even between active checks
  lb_try_duration 15, dial_timeout 2    such a request, or one that finds no gateway in the rotation,
                                        is tried again (every method: lb_retry_match), so the seconds
                                        before the active check notices a dead gateway cost no failed
                                        request
  grace_period 60                       a reload (drain, re-admit) lets requests in flight finish
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra import host, logger, state
from pyinfra.api import Host, State, deploy, operation
from pyinfra.facts.files import File
from pyinfra.operations import files

from tasks.config import certificates, tls_config
from tasks.config import secrets as S
from tasks.config.filters import url_host
from tasks.config.settings import (
    DOCKER_INSTALLS,
    GATEWAYS,
    IMAGE_SOURCES,
    ConfigError,
    HostInput,
    Settings,
    _choice,
    _directory_problems,
    _image_problems,
    _port_problems,
    log_problems,
    read_host_data,
)
from tasks.config.tls_config import acme_problems
from tasks.gateway import roll, tls
from tasks.lib import compose, docker, firewall
from tasks.lib.component import ComposeComponent
from tasks.lib.render import environment
from tasks.lib.uploads import connector_arguments

LB_HOSTS = "lb_hosts"
SERVICE = "caddy"
COMPOSE_FILE = "docker-compose.yml"
CADDYFILE = "caddy/Caddyfile"
# What the load balancer runs while a change rolls: the Caddyfile without the drained gateways.
ROLL_CADDYFILE = "caddy/Caddyfile.roll"
CERT_FILE = "certs/cert.pem"
KEY_FILE = "certs/key.pem"
IN_CONTAINER = {"caddy": "/etc/caddy", "certs": "/certs"}  # templates/balancer/docker-compose.yml.j2's mounts

HEALTH_INTERVAL = 2
HEALTH_TIMEOUT = 5
FAIL_SECONDS = 10
TRY_SECONDS = 15
DIAL_TIMEOUT = 2
GRACE_SECONDS = 60
# Certificate sources of a load balancer, as on a gateway's TLS front ("off" is not one: it always
# terminates TLS). certificate_material() is the one place they are turned into files.
LB_TLS_SOURCES = ("self-signed", "files", "acme")


@dataclass(frozen=True)
class Upstream:
    """A gateway as a load balancer dials it."""

    host_name: str
    address: str  # an IP address the gateway's proxy is published on
    port: int

    @property
    def dial(self) -> str:
        return f"{url_host(self.address)}:{self.port}"


@dataclass(frozen=True)
class LoadBalancer:
    host_name: str
    address: str
    install_dir: str
    compose_project: str
    tls_image: str
    tls: str
    tls_cert_file: str
    tls_key_file: str
    tls_names: tuple[str, ...]
    tls_port: int
    http_port: int
    docker_install: str
    image_source: str
    image_archives: tuple[str, ...]
    log_max_size: str
    log_max_file: int
    start_timeout: int
    upstreams: tuple[Upstream, ...]
    roll_width: int

    health_interval: int = HEALTH_INTERVAL
    health_timeout: int = HEALTH_TIMEOUT
    fail_seconds: int = FAIL_SECONDS
    try_seconds: int = TRY_SECONDS
    dial_timeout: int = DIAL_TIMEOUT
    grace_seconds: int = GRACE_SECONDS
    acme_email: str = ""  # tls = "acme": the contact the ACME server gets

    @property
    def default_sni(self) -> str:
        return self.tls_names[0] if self.tls_names else self.address

    @property
    def has_certificate_files(self) -> bool:
        """False with acme: Caddy obtains and keeps the certificate itself (in its data volume)."""
        return self.tls != "acme"

    @property
    def redirect_target(self) -> str:
        port = "" if self.tls_port == 443 else f":{self.tls_port}"
        return f"https://{{host}}{port}{{uri}}"

    @property
    def cert_path(self) -> str:
        return f"{IN_CONTAINER['certs']}/{Path(CERT_FILE).name}"

    @property
    def key_path(self) -> str:
        return f"{IN_CONTAINER['certs']}/{Path(KEY_FILE).name}"

    def path(self, name: str) -> str:
        return f"{self.install_dir}/{name}"

    def container_path(self, name: str) -> str:
        directory, _, file = name.partition("/")
        return f"{IN_CONTAINER[directory]}/{file}"


# --- settings -----------------------------------------------------------------------------------


def lb_install_dir(install_dir: str) -> str:
    """A project of its own beside a gateway's (/opt/litellm -> /opt/litellm-lb)."""
    return install_dir.rstrip("/") + "-lb"


def gateway_address(gateway: Settings, address: str) -> tuple[str | None, str | None]:
    """(the address a gateway's proxy is published on behind load balancers, or a problem).

    Only for the load balancers (and localhost, published besides): proxy_bind when it names one
    address, else the address the inventory reaches the gateway at, which must then be an IP.
    """
    bind = gateway.proxy_bind
    if bind in ("127.0.0.1", "::1"):
        return None, (
            f"proxy_bind: {bind} behind load balancers ({LB_HOSTS}) — they could not reach the "
            "proxy — fix: set proxy_bind to this gateway's private IP address"
        )
    if bind not in ("0.0.0.0", "::"):
        return bind, None
    if certificates.is_ip(address):
        return address, None
    return None, (
        f"proxy_bind: {bind} behind load balancers ({LB_HOSTS}) would publish the proxy to every "
        f"network, and the inventory address {address!r} is a name, not an IP to bind to — fix: set "
        "proxy_bind to this gateway's private IP address (the one the load balancers reach)"
    )


def placed_behind(
    gateways: dict[str, Settings], addresses: dict[str, str], lb_sources: dict[str, object] | None = None
) -> dict[str, Settings]:
    """The gateways' Settings with their proxy published only for the load balancers (and localhost):
    on one address, and behind a firewall letting in the load balancers' addresses (`lb_sources`:
    each lb host's private_address, else its ssh_hostname) only."""
    problems, placed = [], {}
    sources = []
    for name, value in (lb_sources or {}).items():
        if not isinstance(value, str) or not certificates.is_ip(value):
            problems.append(
                f"host {name} ({LB_HOSTS}): private_address {value!r} is not an IP address (the gateways' "
                'firewall lets in the load balancers by address) — fix: set "private_address": '
                '"10.0.0.2" (the address it reaches the gateways from) in its host data'
            )
        elif firewall.is_ipv6(value):
            problems.append(
                f"host {name} ({LB_HOSTS}): private_address {value!r} is an IPv6 address; the gateways' "
                "firewall lets the load balancers in by IPv4 address only (iptables) — fix: set "
                '"private_address": "10.0.0.2" (its IPv4 address the gateways see) in its host data'
            )
        else:
            sources.append(value)
    for name, gateway in gateways.items():
        address, problem = gateway_address(gateway, addresses[name])
        if not problem and firewall.is_ipv6(address):
            problem = (
                f"proxy_bind: the proxy would be published on {address!r} behind load balancers ({LB_HOSTS}); "
                f"{address!r} is an IPv6 address and the firewall letting in only the load balancers is IPv4 "
                "only (iptables) — fix: set proxy_bind to this gateway's private IPv4 address"
            )
        if problem:
            problems.append(f"host {name}: {problem}")
            continue
        # gateway_address gives an address or a problem.
        assert address is not None
        placed[name] = dataclasses.replace(
            gateway, proxy_bind=address, behind_load_balancer=True, load_balancer_sources=tuple(sorted(set(sources)))
        )
    if problems:
        raise ConfigError(problems)
    return placed


def lb_problems(raw: dict[str, object]) -> list[str]:
    problems = []
    problems += _choice("docker_install", raw["docker_install"], DOCKER_INSTALLS)
    problems += _image_problems("tls_image", raw["tls_image"], "2.11.7")
    problems += _port_problems("tls_port", raw["tls_port"])
    problems += _port_problems("http_port", raw["http_port"])
    if raw["tls_port"] == raw["http_port"]:
        problems.append(f"tls_port/http_port: both {raw['tls_port']} — fix: e.g. tls_port 443, http_port 80")
    problems += _directory_problems("install_dir", raw["install_dir"])
    problems += log_problems(raw)
    if raw["tls"] not in LB_TLS_SOURCES:
        problems.append(
            f"tls: {raw['tls']!r} on a load balancer, which always terminates TLS — fix: tls = "
            "'self-signed' (a certificate from the deployment CA), 'files' (tls_cert_file "
            "and tls_key_file) or 'acme' (acme_email, public DNS names in tls_names)"
        )
    elif raw["tls"] == "files":
        # As a gateway's front (tasks/config/tls_config.py): readable PEM, the key the certificate's, in date,
        # valid for the tls_names given; a load balancer is the only entry point.
        given = raw["tls_names"] if isinstance(raw["tls_names"], (list, tuple)) else ()
        problems += certificates.files_problems(
            raw["tls_cert_file"], raw["tls_key_file"], [n for n in given if isinstance(n, str) and n.strip()]
        )
    elif raw["tls"] == "acme":
        problems += _acme_problems(raw)
    names = raw["tls_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        problems.append("tls_names: must be a list of DNS names or IP addresses, e.g. ['llm.example.com']")
    problems += _choice("image_source", raw["image_source"], IMAGE_SOURCES)
    archives = raw["image_archives"]
    if raw["image_source"] == "archives" and (
        not isinstance(archives, (list, tuple))
        or not archives
        or not all(isinstance(a, str) and Path(a).is_file() for a in archives)
    ):
        problems.append(
            "image_archives: image_source is 'archives' — fix: list existing archives, one holding tls_image"
        )
    return problems


def _acme_problems(raw: dict[str, object]) -> list[str]:
    """tls = "acme" on a load balancer: its tls_names are the certificate's (no default name)."""
    names = [n for n in raw["tls_names"] if isinstance(n, str)] if isinstance(raw["tls_names"], (list, tuple)) else []
    none = (
        []
        if names
        else [
            "tls_names: none with tls = 'acme' — fix: the public DNS names clients use, e.g. "
            "['llm.example.com'] (ACME issues for names that resolve to this load balancer)"
        ]
    )
    return none + acme_problems(names, raw)


def certificate_names(lb_name: str, address: str, raw: dict[str, Any]) -> tuple[str, ...]:
    """The names a load balancer's certificate is for: tls_names, else (self-signed) its inventory
    name and address; the first is the one clients connecting by address are served (default_sni).
    With "files" the given tls_names only (the certificate's own names are the user's business).
    raw: its host data, in which lb_problems found nothing."""
    given = tuple(raw["tls_names"])
    if given or raw["tls"] != "self-signed":
        return certificates.unique_names(given) if given else ()
    return certificates.unique_names((lb_name, address))


def build_load_balancers(
    lbs: list[HostInput], gateways: dict[str, Settings], addresses: dict[str, str]
) -> dict[str, LoadBalancer]:
    """Every load balancer validated (all problems at once, before any host is touched), each with
    every gateway as an upstream, in inventory order."""
    problems: list[str] = []
    both = sorted({lb.name for lb in lbs} & set(gateways))
    if both:
        problems.append(
            f"inventory: {', '.join(both)} in both {GATEWAYS} and {LB_HOSTS} — fix: a host is a "
            "gateway or a load balancer, not both"
        )
    upstreams = tuple(Upstream(name, g.proxy_bind, g.proxy_port) for name, g in gateways.items())
    widths = [g.roll_width for g in gateways.values()]
    built = {}
    for lb in lbs:
        raw = read_host_data(lb.data)
        host_problems = lb_problems(raw)
        problems += [f"load balancer {lb.name}: {p}" for p in host_problems]
        if host_problems:
            continue
        address = tls_config.host_address(lb.name, lb.data)
        built[lb.name] = LoadBalancer(
            host_name=lb.name,
            address=address,
            install_dir=lb_install_dir(str(raw["install_dir"])),
            compose_project=f"{raw['compose_project']}-lb",
            tls_image=raw["tls_image"],
            tls=raw["tls"],
            tls_cert_file=raw["tls_cert_file"],
            tls_key_file=raw["tls_key_file"],
            tls_names=certificate_names(lb.name, address, raw),
            tls_port=raw["tls_port"],
            acme_email=str(raw["acme_email"] or ""),
            http_port=raw["http_port"],
            docker_install=raw["docker_install"],
            image_source=raw["image_source"],
            image_archives=tuple(raw["image_archives"]),
            log_max_size=raw["log_max_size"],
            log_max_file=raw["log_max_file"],
            start_timeout=raw["start_timeout"],
            upstreams=upstreams,
            roll_width=min(widths) if widths else 1,
        )
    if problems:
        raise ConfigError(problems)
    return built


# --- rendering ----------------------------------------------------------------------------------


def render_caddyfile(lb: LoadBalancer, drained: frozenset[str] | set[str] = frozenset()) -> str:
    """The Caddyfile with every gateway but the `drained` ones in the rotation."""
    upstreams = [u.dial for u in lb.upstreams if u.host_name not in drained]
    return (
        environment().get_template("balancer/Caddyfile.j2").render(lb=lb, upstreams=upstreams, drained=sorted(drained))
    )


def render_compose(lb: LoadBalancer) -> str:
    return environment().get_template("balancer/docker-compose.yml.j2").render(lb=lb)


def certificate_material(lb: LoadBalancer, store=None) -> tuple[str, str] | None:
    """(certificate chain PEM, private key PEM): the ONE place a load balancer's certificate comes
    from. "self-signed": a leaf of the deployment CA (the gateways' fronts use the same CA, so clients
    trust one ca.crt), from `store` (default: the run's, tasks/tls.store_for, which writes new files
    only when operations start: --dry writes nothing); "files": the controller's files; "acme": None,
    Caddy obtains it."""
    if lb.tls == "files":
        return Path(lb.tls_cert_file).read_text(), Path(lb.tls_key_file).read_text()
    if lb.tls == "self-signed":
        if store is None:
            store = tls.store_for(S.secrets_path(host.data.get("secrets_file")))
        material = store.leaf(lb.host_name, lb.tls_names)
        return material.cert_pem.decode(), material.key_pem.decode()
    return None


# --- operations ---------------------------------------------------------------------------------


def reload_command(lb: LoadBalancer, caddyfile: str) -> str:
    """A graceful reload through Caddy's admin API (caddy reload checks the file first and keeps the
    running configuration when it is refused); nothing to do when the container is not running."""
    base = compose.compose_cmd(lb.compose_project, lb.install_dir)
    return (
        f'if [ -n "$({base} ps --status running --quiet {SERVICE} 2>/dev/null)" ]; then '
        f"{base} exec -T {SERVICE} caddy reload --config {lb.container_path(caddyfile)} --adapter caddyfile; "
        "else echo 'load balancer not running: nothing to reload'; fi"
    )


def component(lb: LoadBalancer) -> ComposeComponent:
    """The load balancer's compose project, in the lifecycle every component shares (tasks/lib/component.py)."""
    return ComposeComponent(lb.install_dir, lb.compose_project, lb.start_timeout)


# --- the load balancers' side of a roll (tasks/gateway/roll.py) -------------------------------------------


def roll_width(lbs: list[LoadBalancer]) -> int:
    """How many gateways a roll recreates at once: the smallest roll_width of the load balancers'."""
    return min([lb.roll_width for lb in lbs] or [1])


def apply_to_load_balancers(st: State, lb_hosts: list[tuple[Host, LoadBalancer]], out: frozenset[str]) -> None:
    """Every load balancer reloaded with `out` left out of its rotation (the full Caddyfile when
    nothing is out). A load balancer not connected in this run is skipped with a warning: its
    health checks still route around a gateway being recreated."""
    for lb_host, lb in lb_hosts:
        if not lb_host.connected:
            logger.warning(
                f"{lb_host.print_prefix}load balancer not connected: it relies on its health checks "
                "while gateways are recreated"
            )
            continue
        roll_file = shlex.quote(lb.path(ROLL_CADDYFILE))
        if out:
            content = render_caddyfile(lb, out)
            command = (
                f"umask 022 && printf %s {shlex.quote(content)} > {roll_file}.new && mv -f {roll_file}.new "
                f"{roll_file} && {reload_command(lb, ROLL_CADDYFILE)}"
            )
        else:
            command = f"{reload_command(lb, CADDYFILE)} && rm -f {roll_file}"
        # A load balancer not deployed yet (the first deploy: its stage runs after the gateways') has
        # nothing to drain.
        command = f"if [ -e {shlex.quote(lb.path(CADDYFILE))} ]; then {command}; fi"
        ok, output = lb_host.run_shell_command(
            command, print_output=False, print_input=False, **connector_arguments(st, lb_host)
        )
        if not ok:
            raise roll.RollError(f"{lb_host.name}: " + " / ".join(output.stderr_lines[-3:]))
        lb_host.log(f"rotation: {', '.join(sorted(out)) + ' out' if out else 'every gateway in'}", logger.info)


@operation()
def balancer_configured(lb: LoadBalancer, caddyfile):
    """After the gateways: the load balancer runs its full Caddyfile, reloaded when it changed or a
    roll left the rotation short; gateways that failed their roll in this run stay out of it."""
    held = roll.held_out(state)
    leftover = bool(host.get_fact(File, path=lb.path(ROLL_CADDYFILE)))
    if held:
        host.log(
            f"keeps {', '.join(sorted(held))} out of the rotation: failed mid-roll (the next deploy rolls it again)",
            logger.warning,
        )
        content = render_caddyfile(lb, held)
        yield (
            f"printf %s {shlex.quote(content)} > {shlex.quote(lb.path(ROLL_CADDYFILE))} && "
            f"{reload_command(lb, ROLL_CADDYFILE)}"
        )
        return
    if not leftover and not compose.changed([caddyfile]):
        host.noop("the Caddyfile is running, every gateway in the rotation")
        return
    yield reload_command(lb, CADDYFILE)
    yield f"rm -f {shlex.quote(lb.path(ROLL_CADDYFILE))}"


@deploy("Load balancer")
def deploy_load_balancer(lb: LoadBalancer) -> None:
    docker.install_docker(settings=lb)
    project = component(lb)
    project.directory()
    images = project.images(lb.image_source, lb.image_archives, {"tls_image": lb.tls_image})
    for directory in ("caddy", "certs"):
        files.directory(
            name=f"Directory {lb.path(directory)}", path=lb.path(directory), user="root", group="root", mode="700"
        )
    compose_file = project.write(COMPOSE_FILE, render_compose(lb), "644")
    caddyfile = project.write(CADDYFILE, render_caddyfile(lb), "644", label="Write the Caddyfile")
    material = certificate_material(lb)
    if material is not None:
        cert, key = material
        certificates = [
            project.write(CERT_FILE, cert, "644", label="Write the TLS certificate"),
            project.write(KEY_FILE, key, "600", label="Write the TLS private key (mode 0600)"),
        ]
    else:
        # acme: Caddy keeps what it obtains in its data volume; files of an earlier source go.
        certificates = [
            files.file(name=f"No {name} (tls is acme)", path=lb.path(name), present=False)
            for name in (CERT_FILE, KEY_FILE)
        ]
    # Checked by the pinned Caddy before the only entry point is (re)created or reloaded with them.
    tls.caddyfile_valid(
        name=f"Caddyfile accepted by {lb.tls_image}",
        image=lb.tls_image,
        mounts={lb.path(directory): target for directory, target in IN_CONTAINER.items()},
        caddyfile=lb.container_path(CADDYFILE),
        front="the load balancer",
        changed=[compose_file, caddyfile, *certificates, *images],
    )
    # A new certificate recreates the container (Caddy may keep a loaded certificate across reloads);
    # a new Caddyfile is only reloaded, gracefully (balancer_configured).
    project.up(SERVICE, name="Load balancer (Caddy) up", depends_on=[compose_file, *images], recreate_on=certificates)
    balancer_configured(name="Load balancer runs the Caddyfile (every gateway admitted)", lb=lb, caddyfile=caddyfile)
