"""State in its own engines: the inventory's db host (PostgreSQL) and redis host (Valkey), checked
and turned into what each host needs, before any host is touched.

    db_hosts     one host; PostgreSQL in its own compose project (`<compose_project>-db`), published
                 on the host's private address only, scram-sha-256, reachable from the gateways only.
                 Gateways in database_mode "bundled" (the default) or "db_host" use it: their
                 DATABASE_URL points at it (mode "db_host", chosen automatically when the inventory has
                 a db host; internally the gateway then runs the "external" path, with a URL the deploy
                 makes instead of one from the secrets file).
    redis_hosts  one host; Valkey in its own compose project (`<compose_project>-redis`), requirepass
                 REDIS_PASSWORD (generated into the secrets file), reachable from the gateways only.
                 Or an external Redis: REDIS_URL in the secrets file. Either way every gateway's proxy
                 shares rate limits and usage counters through it (tasks/lib/render.py, coordination_redis).

A host's private address (host data `private_address`; default its `ssh_hostname`) is where the
others reach it: the db/redis host publishes its port there, and the gateways' addresses are the only
sources its firewall and pg_hba let in. Addresses must be IPv4 addresses: they go into iptables (IPv4)
rules and pg_hba.conf.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from tasks.config import secrets as S
from tasks.config.fields import DEFAULTS
from tasks.config.filters import url_component, url_host

DB_HOSTS = "db_hosts"
REDIS_HOSTS = "redis_hosts"
DB_PORT = 5432
REDIS_PORT = 6379
# database_mode values that mean "the deploy's own PostgreSQL": on the gateway, or on the db host.
DB_HOST_MODE = "db_host"
PROVISIONED_MODES = ("bundled", DB_HOST_MODE)
# A Valkey password travels in a config line on valkey-server's stdin: no quotes, spaces or escapes.
REDIS_PASSWORD_CHARACTERS = r"[A-Za-z0-9_.~+/=-]{16,512}"


@dataclass
class StateInput:
    """One inventory host as topology needs it (independent of pyinfra, so tests need no hosts)."""

    name: str
    data: Callable[[str, object], object]


class HostData(Protocol):
    """What topology reads of an inventory host: a StateInput, or tasks.config.settings.HostInput."""

    @property
    def name(self) -> str: ...

    @property
    def data(self) -> Callable[[str, object], object]: ...


@dataclass(frozen=True)
class Topology:
    """Where the shared state lives, as every host of the run sees it."""

    db_host: str = ""  # name of the db host ("" = none)
    db_address: str = ""
    redis_host: str = ""  # name of the redis host ("" = none)
    redis_address: str = ""
    redis_url: bool = False  # an external Redis: REDIS_URL in the secrets file
    gateway_addresses: tuple[str, ...] = ()  # the sources allowed to reach the db and redis hosts
    state_hosts: tuple[str, ...] = field(default=())  # names of the db and redis hosts

    @property
    def has_redis(self) -> bool:
        return bool(self.redis_host) or self.redis_url


def private_address(host: HostData) -> object:
    return host.data("private_address", DEFAULTS["private_address"]) or host.data("ssh_hostname", None) or host.name


def _address_problems(host: HostData, group: str) -> list[str]:
    value = private_address(host)
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        version = ipaddress.ip_address(value).version
    except ValueError:
        return [
            f"host {host.name} ({group}): private_address {value!r} is not an IP address (it goes into firewall "
            'rules and pg_hba.conf) — fix: set "private_address": "10.0.0.5" (the address the other hosts '
            "reach it at) in its host data"
        ]
    if version == 6:
        return [
            f"host {host.name} ({group}): private_address {value!r} is an IPv6 address; the firewall letting only "
            'the gateways reach the db and redis hosts is IPv4 only (iptables) — fix: set "private_address": '
            '"10.0.0.5" (its IPv4 address, the one the other hosts reach it at) in its host data'
        ]
    return []


def problems(
    gateways: Sequence[HostData],
    db_hosts: Sequence[HostData],
    redis_hosts: Sequence[HostData],
    modes: Mapping[str, object],
    values: Mapping[str, str],
) -> list[str]:
    """Every topology problem at once. `modes`: each gateway's database_mode as written;
    `values`: the secrets file."""
    found: list[str] = []
    gateway_names = {g.name for g in gateways}
    for group, hosts, what, drop in (
        (DB_HOSTS, db_hosts, "PostgreSQL", "the bundled database on each gateway"),
        (REDIS_HOSTS, redis_hosts, "Valkey", "no shared Redis"),
    ):
        if len(hosts) > 1:
            found.append(
                f"inventory: {group} lists {', '.join(h.name for h in hosts)}; one {group[:-1].replace('_', ' ')} "
                f"is supported — fix: keep one host in {group}"
            )
        for h in hosts:
            if h.name in gateway_names:
                found.append(
                    f"inventory: host {h.name} is in both litellm_hosts and {group}; a {group[:-1].replace('_', ' ')} "
                    f"runs only {what}, never a gateway — fix: use another host in {group}, or remove the "
                    f"{group} group for {drop}"
                )
            found += _address_problems(h, group)
    if db_hosts or redis_hosts:
        for g in gateways:
            found += _address_problems(g, "litellm_hosts")
    if db_hosts:
        if values.get(S.DATABASE_URL):
            found.append(
                f"{S.DATABASE_URL}: set in the secrets file while the inventory has {DB_HOSTS}; the gateways use "
                f"the db host's database — fix: remove {S.DATABASE_URL} from the secrets file, or the {DB_HOSTS} group"
            )
        for g in gateways:
            if modes.get(g.name) == "external":
                found.append(
                    f"host {g.name}: database_mode 'external' while the inventory has {DB_HOSTS} — fix: "
                    f"database_mode '{DB_HOST_MODE}' (or the default) to use the db host, or remove {DB_HOSTS}"
                )
    else:
        for g in gateways:
            if modes.get(g.name) == DB_HOST_MODE:
                found.append(
                    f"host {g.name}: database_mode '{DB_HOST_MODE}' but the inventory has no {DB_HOSTS} group — "
                    f"fix: add db_hosts = [(\"db1\", {{...}})] to the inventory, or database_mode 'bundled'"
                )
    url = values.get(S.REDIS_URL)
    if redis_hosts and url:
        found.append(
            f"{S.REDIS_URL}: set in the secrets file while the inventory has {REDIS_HOSTS} — fix: remove "
            f"{S.REDIS_URL} to use the redis host, or remove the {REDIS_HOSTS} group to use that Redis"
        )
    if url and not re.match(r"rediss?://[^\s]+$", url):
        found.append(f"{S.REDIS_URL}: not a Redis URL — fix: redis://:PASSWORD@HOST:6379/0 (rediss:// for TLS)")
    password = values.get(S.REDIS_PASSWORD)
    if redis_hosts and password is not None and not re.fullmatch(REDIS_PASSWORD_CHARACTERS, password):
        found.append(
            f"{S.REDIS_PASSWORD}: 16-512 characters of letters, digits and _ . ~ + / = - only (it is a Valkey "
            "config value) — fix: delete it from the secrets file to have one generated"
        )
    if redis_hosts and password is not None and S.is_published(password):
        found.append(f"{S.REDIS_PASSWORD}: a published value — fix: delete it to have one generated")
    return found


def wanted_secrets(db_hosts: Sequence[object], redis_hosts: Sequence[object]) -> list[str]:
    """Generated secrets the state hosts need (never a default); only whether there are any matters."""
    wanted = []
    if db_hosts:
        wanted.append(S.POSTGRES_PASSWORD)
    if redis_hosts:
        wanted.append(S.REDIS_PASSWORD)
    return wanted


def resolve(
    gateways: Sequence[HostData],
    db_hosts: Sequence[HostData],
    redis_hosts: Sequence[HostData],
    values: Mapping[str, str],
) -> Topology:
    """The topology of a valid inventory (problems() found nothing)."""
    return Topology(
        db_host=db_hosts[0].name if db_hosts else "",
        db_address=str(private_address(db_hosts[0])) if db_hosts else "",
        redis_host=redis_hosts[0].name if redis_hosts else "",
        redis_address=str(private_address(redis_hosts[0])) if redis_hosts else "",
        redis_url=bool(values.get(S.REDIS_URL)),
        gateway_addresses=tuple(sorted({str(private_address(g)) for g in gateways}))
        if (db_hosts or redis_hosts)
        else (),
        state_hosts=tuple(dict.fromkeys(h.name for h in (*db_hosts, *redis_hosts))),
    )


def uses_db_host(topology: Topology, mode: object) -> bool:
    return bool(topology.db_host) and mode in PROVISIONED_MODES


def db_host_url(topology: Topology, user: str, password: str, db: str) -> str:
    """The gateways' DATABASE_URL for the db host's database (never written to the secrets file)."""
    return (
        f"postgresql://{url_component(user)}:{url_component(password)}@{url_host(topology.db_address)}:{DB_PORT}"
        f"/{url_component(db)}"
    )


@dataclass(frozen=True)
class StateHost:
    """What a db or redis host runs (it may be both: one compose project per service)."""

    host_name: str
    services: tuple[str, ...]  # "db" and/or "redis"
    address: str  # its private address: where its ports are published
    allowed: tuple[str, ...]  # the gateways' addresses: the only sources let in
    install_dir: str  # of the gateway layout; each service gets `<install_dir>-<service>`
    compose_project: str  # likewise `<compose_project>-<service>`
    postgres_image: str
    postgres_user: str
    postgres_db: str
    redis_image: str
    docker_install: str
    image_source: str
    image_archives: tuple[str, ...]
    start_timeout: int
    log_max_size: str
    log_max_file: int
    secrets: S.Secrets = field(repr=False)
    # The db host's database as backup.py and the backup timer see a bundled one (tasks/gateway/backup.py):
    # a tasks.config.settings.Settings whose compose project is the db host's. None on a redis-only host.
    backup: object = field(default=None, repr=False)

    def service_dir(self, service: str) -> str:
        return f"{self.install_dir.rstrip('/')}-{service}"

    def service_project(self, service: str) -> str:
        return f"{self.compose_project}-{service}"


def state_hosts(
    shape: Topology, raw: Mapping[str, Mapping[str, Any]], secrets: S.Secrets, backup_view=None
) -> dict[str, StateHost]:
    """{name: StateHost} of the run's db and redis hosts (raw: each one's host data, validated).
    backup_view(name, data, directory, project): the db host's database as a bundled one, for backups."""
    found = {}
    for name in shape.state_hosts:
        data = raw[name]
        services = tuple(s for s, host in (("db", shape.db_host), ("redis", shape.redis_host)) if host == name)
        found[name] = StateHost(
            host_name=name,
            services=services,
            address=shape.db_address if "db" in services else shape.redis_address,
            allowed=shape.gateway_addresses,
            install_dir=str(data["install_dir"]),
            compose_project=str(data["compose_project"]),
            postgres_image=str(data["postgres_image"]),
            postgres_user=str(data["postgres_user"]),
            postgres_db=str(data["postgres_db"]),
            redis_image=str(data["redis_image"]),
            docker_install=str(data["docker_install"]),
            image_source=str(data["image_source"]),
            image_archives=tuple(data["image_archives"]),
            start_timeout=int(data["start_timeout"]),
            log_max_size=str(data["log_max_size"]),
            log_max_file=int(data["log_max_file"]),
            secrets=secrets,
            backup=backup_view(
                name, data, f"{str(data['install_dir']).rstrip('/')}-db", f"{data['compose_project']}-db"
            )
            if "db" in services and backup_view
            else None,
        )
    return found
