"""Host data + secrets file -> one validated, typed Settings per host.

Every host of the inventory is checked before the first operation is added, and every problem is
reported at once, each naming the host, the field and the fix. So bad input stops the run before
any host is touched.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Final, Literal, Mapping, Sequence

from pyinfra.api.exceptions import PyinfraError

from tasks.config import calendar, key_guard, pgservice, reserved, tls_config, topology, virtual_keys
from tasks.config import fields as declared
from tasks.config import secrets as S
from tasks.config.key_guard import Completion, HostEnvs
from tasks.config.models import OLLAMA_PORT, Model, is_http_url, parse_models, parse_ollama_nodes
from tasks.config.secrets import Secrets
from tasks.config.virtual_keys import Team, VirtualKey, default_key_env, key_value_problems, parse_keys, parse_teams

GATEWAYS = "litellm_hosts"
OLLAMA_NODES = "ollama_nodes"  # the old inventory group of nodes, refused (refuse_node_group)
AUTO_WORKERS: Final = "auto"  # proxy_workers sized to the host (tasks/config/sizing.py)
DATABASE_MODES = ("bundled", "external", "none", "db_host")  # db_host: tasks/config/topology.py
DOCKER_INSTALLS = ("distro", "docker-repo", "skip")
IMAGE_SOURCES = ("pull", "archives")
TLS_SOURCES = ("off", "self-signed", "files", "acme")
FLOATING_TAGS = {"latest", "main-latest", "main-stable", "stable", "nightly", "main"}
# Characters a directory may hold: it is written into shell scripts and unit files unquoted-safe.
PATH_CHARACTERS = r"[A-Za-z0-9_./-]+"
# json-file log rotation size: a number and k, m or g (a subset of what Docker accepts).
LOG_SIZE = r"[1-9][0-9]*[kmg]"
MIN_KEY_LENGTH = 32
MIN_PASSWORD_LENGTH = 12
KEY_CACHE_TTL_MAX = 60  # LiteLLM's default user_api_key_cache_ttl (proxy_server.py UserAPIKeyCacheTTLEnum)


class ConfigError(PyinfraError):
    """Raised before any operation exists; its message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{len(problems)} problem(s) in the inventory, group data or secrets file; "
            f"nothing was changed on any host:\n{listing}"
        )


@dataclass(frozen=True)
class Settings:
    host_name: str
    litellm_image: str
    postgres_image: str
    install_dir: str
    compose_project: str
    proxy_port: int
    proxy_bind: str
    proxy_base_url: str
    database_mode: str
    postgres_user: str
    postgres_db: str
    postgres_publish_port: int
    docker_install: str
    image_source: str
    image_archives: tuple[str, ...]
    ui_username: str
    admin_user_id: str
    admin_email: str
    store_model_in_db: bool
    verify_timeout: int
    start_timeout: int
    models: tuple[Model, ...]
    ollama_nodes: Mapping[str, str]
    secrets: Secrets
    backup_dir: str
    backup_keep: int
    backup_local_dir: str
    backup_enabled: bool
    backup_schedule: str
    log_max_size: str
    log_max_file: int
    tls: str
    tls_cert_file: str
    tls_key_file: str
    acme_email: str
    tls_names: tuple[str, ...]
    tls_port: int
    http_port: int
    tls_image: str
    redis_image: str
    roll_width: int
    proxy_workers: int | Literal["auto"]  # "auto": tasks/config/sizing.py
    key_cache_ttl: float  # seconds a worker serves a key from memory: the revocation delay (docs/secrets-and-keys.md)
    # TLS front (tasks/gateway/tls.py): the CA that issued tls_cert_file, when it is not a public one.
    tls_ca_file: str
    teams: tuple[Team, ...]
    virtual_keys: tuple[VirtualKey, ...]
    # Set by tasks.balancer when the inventory has lb_hosts: the proxy is then published on the address
    # the load balancers reach (proxy_bind) and on localhost, and changes roll (tasks/gateway/roll.py).
    behind_load_balancer: bool
    # ...and the load balancers' addresses: the only sources the proxy's published port lets in
    # (tasks/lib/firewall.py), besides localhost.
    load_balancer_sources: tuple[str, ...]
    # Shared state in its own engines (tasks/config/topology.py), derived from the inventory: the db host this
    # gateway's DATABASE_URL points at ("" = none), and the Redis its proxy shares limits through.
    db_host: str
    redis_address: str  # the redis host's private address ("" = none)
    redis_url: bool  # an external Redis: REDIS_URL in the secrets file

    @property
    def has_redis(self) -> bool:
        return bool(self.redis_address) or self.redis_url

    @property
    def has_database(self) -> bool:
        return self.database_mode != "none"

    @property
    def provider_key_names(self) -> tuple[str, ...]:
        return tuple(sorted({m.api_key_env for m in self.models if m.api_key_env}))

    @property
    def proxy_publish_address(self) -> str:
        """Where the proxy's port is published: proxy_bind, but loopback only behind the TLS front
        (tasks/config/tls_config.py refuses any other address with tls on)."""
        if self.tls != "off" and self.proxy_bind in ("0.0.0.0", "::"):
            return "127.0.0.1"
        return self.proxy_bind

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


# Settings read from host data (the rest are derived), each with its default as declared in
# tasks/config/fields.py, the one source; `models` has none on purpose: a gateway that routes nothing is
# an error, not a default.
_DERIVED: tuple[str, ...] = ("host_name", "ollama_nodes", "secrets", "db_host", "redis_address", "redis_url")
_DERIVED += (
    "behind_load_balancer",
    "load_balancer_sources",
)  # from the inventory's lb_hosts (tasks.balancer.placed_behind)
DEFAULTS = {
    f.name: None if declared.DEFAULTS[f.name] is declared.REQUIRED else declared.DEFAULTS[f.name]
    for f in fields(Settings)
    if f.name not in _DERIVED
}


def needed_secrets(mode: str) -> list[str]:
    wanted = [S.MASTER_KEY, S.SALT_KEY, S.UI_PASSWORD]
    if mode in ("bundled", "db_host"):
        wanted.append(S.POSTGRES_PASSWORD)
    return wanted


# --- host data --------------------------------------------------------------------------------


def read_host_data(data: Callable[[str, object], object]) -> dict[str, Any]:
    """Every setting's host data as written (any value: data_problems and its kin check them)."""
    return {name: data(name, default) for name, default in DEFAULTS.items()}


def refuse_node_group(nodes: list[HostInput]) -> None:
    """Ollama nodes listed as inventory hosts (the format before nodes were data): refused with the
    data to paste instead. pyinfra would log into each over SSH, though nothing is ever done on a
    node, and an appliance nobody can log into would fail the run."""
    if not nodes:
        return
    declared = {node.name: _node_declaration(node) for node in nodes}
    raise ConfigError(
        [
            f"inventory: the {OLLAMA_NODES} group lists {', '.join(declared)} as hosts, so pyinfra would log into them "
            f"over SSH; Ollama nodes are data now and need no SSH — fix: delete the {OLLAMA_NODES} group from the "
            f"inventory and declare the nodes in the gateways' data (group_data/litellm_hosts.py): "
            f"ollama_nodes = {declared!r}"
        ]
    )


def _node_declaration(node: HostInput) -> dict[str, object]:
    """An old-format node's host data (ollama_url, or ssh_hostname and ollama_port) as a declaration."""
    if node.data("ollama_url", None):
        return {"url": node.data("ollama_url", None)}
    declared: dict[str, object] = {"address": node.data("ssh_hostname", None) or node.name}
    if node.data("ollama_port", OLLAMA_PORT) != OLLAMA_PORT:
        declared["port"] = node.data("ollama_port", OLLAMA_PORT)
    return declared


def _image_problems(field_name: str, image: object, example: str = "main-v1.108.7") -> list[str]:
    if not isinstance(image, str) or not image:
        return [f"{field_name}: must be an image reference like 'registry/name:tag'"]
    if "@sha256:" in image:
        return []
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return [f"{field_name}: {image!r} has no tag — fix: pin a version tag such as {example} (never latest)"]
    if last.split(":", 1)[1] in FLOATING_TAGS:
        return [f"{field_name}: {image!r} uses a floating tag — fix: pin a version tag such as {example}"]
    return []


def _postgres_image_problems(image: object) -> list[str]:
    """Postgres tags start with the major version ("16", "16.4", "16.4-bookworm"): a major tag only
    moves within that major, whose data directory format is fixed, so it is an acceptable pin. A tag
    without a version ("latest", "alpine", "bookworm") moves to the next major one day, and a
    Postgres of a new major cannot start on the old data directory."""
    example = "postgres:16.4 (or postgres:16)"
    problems = _image_problems("postgres_image", image, example)
    if problems or "@sha256:" in str(image):
        return problems
    tag = str(image).rsplit("/", 1)[-1].split(":", 1)[1]
    if not tag[:1].isdigit():
        return [
            f"postgres_image: {image!r} uses a floating tag (no version number) — "
            f"fix: pin a version tag such as {example}"
        ]
    return []


def _number_problems(field_name: str, value: object, low: int, high: int | None, meaning: str) -> list[str]:
    """One policy for every whole-number setting: a number, never text. "4000" (quoted) is refused
    with the exact fix rather than converted, so the group data reads the way it is used."""
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        return [f"{field_name}: {value!r} is text — fix: write {value.strip()} without quotes"]
    bounds = f"{low} or more" if high is None else f"{low}-{high}"
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        return [f"{field_name}: {value!r} is not {meaning} ({bounds})"]
    return []


def _key_cache_problems(value: object) -> list[str]:
    """Seconds, a fraction allowed (LiteLLM reads user_api_key_cache_ttl with float()). Above LiteLLM's own
    default of 60 a revoked key would work longer than with no setting at all."""
    fix = "fix: a number of seconds without quotes, e.g. 0.5"
    if isinstance(value, str):
        return [f"key_cache_ttl: {value!r} is text — {fix}"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= KEY_CACHE_TTL_MAX:
        return [f"key_cache_ttl: {value!r} is not a number of seconds (0-{KEY_CACHE_TTL_MAX}) — {fix}"]
    return []


def _port_problems(field_name: str, value: object, allow_zero: bool = False) -> list[str]:
    return _number_problems(field_name, value, 0 if allow_zero else 1, 65535, "a port")


def _flag_problems(field_name: str, value: object) -> list[str]:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return [f"{field_name}: {value!r} is text — fix: write {value.strip().capitalize()} without quotes"]
    if not isinstance(value, bool):
        return [f"{field_name}: must be True or False"]
    return []


def _directory_problems(field_name: str, value: object) -> list[str]:
    """An absolute directory other than /, shell-safe: it goes into scripts and unit files."""
    parts = value.strip("/").split("/") if isinstance(value, str) else []
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.rstrip("/") in ("", "/")
        or not re.fullmatch(PATH_CHARACTERS, value)
        or "." in parts
        or ".." in parts
    ):
        return [
            f"{field_name}: {value!r} must be an absolute directory other than /, of letters, digits and "
            "_ . - / only, without . or .. parts — fix: e.g. /opt/litellm"
        ]
    if why := reserved.directory_owner(value):
        return [
            f"{field_name}: {value!r} is {why}; the package makes its directory root-only and fills it "
            "— fix: a directory of its own, e.g. /opt/litellm or /var/backups/litellm"
        ]
    return []


def _bind_problems(value: object) -> list[str]:
    try:
        if not isinstance(value, str):  # ip_address() would take the number 4000 as 0.0.15.160
            raise ValueError(value)
        ipaddress.ip_address(value)
    except ValueError:
        return [
            f"proxy_bind: {value!r} is not an IP address — fix: 0.0.0.0 (every interface), 127.0.0.1 "
            "(behind a local reverse proxy) or one of the host's addresses"
        ]
    return []


def _choice(field_name: str, value: object, allowed: tuple[str, ...]) -> list[str]:
    if value not in allowed:
        return [f"{field_name}: {value!r} — fix: use one of {', '.join(allowed)}"]
    return []


def data_problems(raw: dict[str, object]) -> list[str]:
    problems = []
    problems += _image_problems("litellm_image", raw["litellm_image"])
    mode = raw["database_mode"]
    problems += _choice("database_mode", mode, DATABASE_MODES)
    if mode in ("bundled", "external", "db_host"):  # external runs psql and pg_dump from this image
        problems += _postgres_image_problems(raw["postgres_image"])
    problems += _choice("docker_install", raw["docker_install"], DOCKER_INSTALLS)
    problems += _choice("image_source", raw["image_source"], IMAGE_SOURCES)
    problems += _port_problems("proxy_port", raw["proxy_port"])
    problems += _port_problems("postgres_publish_port", raw["postgres_publish_port"], allow_zero=True)
    if raw["postgres_publish_port"] and raw["postgres_publish_port"] == raw["proxy_port"]:
        problems.append(
            f"postgres_publish_port: {raw['postgres_publish_port']} collides with proxy_port — fix: pick another port"
        )
    problems += _directory_problems("install_dir", raw["install_dir"])
    if not isinstance(raw["compose_project"], str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", raw["compose_project"]):
        problems.append("compose_project: use lowercase letters, digits, '-' and '_' (Compose's rule)")
    for name in ("postgres_user", "postgres_db"):
        value = raw[name]
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
            problems.append(f"{name}: {raw[name]!r} must be a plain SQL identifier (letters, digits, _)")
    problems += _bind_problems(raw["proxy_bind"])
    if raw["proxy_base_url"] and not is_http_url(raw["proxy_base_url"]):
        problems.append(f"proxy_base_url: {raw['proxy_base_url']!r} is not a URL — fix: https://gateway.example.com")
    archives = raw["image_archives"]
    if not isinstance(archives, (list, tuple)) or not all(isinstance(a, str) for a in archives):
        problems.append("image_archives: must be a list of file paths")
    elif raw["image_source"] == "archives":
        if not archives:
            problems.append("image_archives: image_source is 'archives' but no archive is listed")
        for archive in archives:
            if not Path(archive).is_file():
                problems.append(f"image_archives: {archive} does not exist on the controller")
    for name in ("ui_username", "admin_user_id"):
        value = raw[name]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name}: must be a non-empty string")
    if not isinstance(raw["admin_email"], str):
        problems.append("admin_email: must be a string (may be empty)")
    if flag := _flag_problems("store_model_in_db", raw["store_model_in_db"]):
        problems += flag
    elif raw["store_model_in_db"] and mode == "none":
        problems.append("store_model_in_db: needs a database — fix: database_mode 'bundled' or 'external'")
    for name in ("verify_timeout", "start_timeout"):
        problems += _number_problems(name, raw[name], 1, None, "a whole number of seconds")
    problems += _key_cache_problems(raw["key_cache_ttl"])
    problems += log_problems(raw)
    problems += backup_problems(raw)
    problems += topology_problems(raw)
    return problems


def topology_problems(raw: dict[str, object]) -> list[str]:
    """The TLS front, load balancers and shared state: the shapes of their settings."""
    problems = _choice("tls", raw["tls"], TLS_SOURCES)
    for name in ("tls_cert_file", "tls_key_file", "acme_email"):
        if not isinstance(raw[name], str):
            problems.append(f"{name}: must be a string (may be empty)")
    names = raw["tls_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        problems.append("tls_names: must be a list of DNS names or IP addresses, e.g. ['gateway.example.com']")
    problems += _port_problems("tls_port", raw["tls_port"])
    problems += _port_problems("http_port", raw["http_port"])
    if raw["tls"] != "off" and len({raw["tls_port"], raw["http_port"], raw["proxy_port"]}) < 3:
        problems.append(
            f"tls_port/http_port: {raw['tls_port']}, {raw['http_port']} and proxy_port {raw['proxy_port']} "
            "must all differ — fix: e.g. tls_port 443, http_port 80, proxy_port 4000"
        )
    problems += _image_problems("tls_image", raw["tls_image"], "2.11.7")
    problems += _image_problems("redis_image", raw["redis_image"], "8.1")
    problems += _number_problems("roll_width", raw["roll_width"], 1, None, "a whole number of gateways")
    if raw["proxy_workers"] != AUTO_WORKERS:
        problems += [
            p if "fix:" in p else p + " — fix: 'auto' (one per CPU of the host) or a number"
            for p in _number_problems("proxy_workers", raw["proxy_workers"], 1, 64, "a number of workers")
        ]
    return problems


def log_problems(raw: dict[str, object]) -> list[str]:
    """Container log rotation (Docker's json-file driver: max-size, max-file)."""
    problems = []
    size = raw["log_max_size"]
    if not isinstance(size, str) or not re.fullmatch(LOG_SIZE, size):
        problems.append(f"log_max_size: {size!r} must be a size such as '10m' (a number, then k, m or g)")
    problems += _number_problems("log_max_file", raw["log_max_file"], 1, None, "a whole number of log files")
    return problems


def backup_problems(raw: dict[str, object]) -> list[str]:
    problems = []
    problems += _directory_problems("backup_dir", raw["backup_dir"])
    if str(raw["backup_dir"]).rstrip("/") == str(raw["install_dir"]).rstrip("/"):
        problems.append(
            f"backup_dir: {raw['backup_dir']!r} is also install_dir, whose files the backups' pruning "
            "would meet — fix: a directory of its own, e.g. /var/backups/litellm"
        )
    problems += _number_problems("backup_keep", raw["backup_keep"], 1, None, "a whole number of backups")
    if not isinstance(raw["backup_local_dir"], str) or not raw["backup_local_dir"].strip():
        problems.append("backup_local_dir: must be a directory on the controller, such as 'backups'")
    problems += _flag_problems("backup_enabled", raw["backup_enabled"])
    schedule = raw["backup_schedule"]
    if reason := calendar.problem(schedule):
        problems.append(
            f"backup_schedule: {schedule!r} is not a systemd OnCalendar expression ({reason}) — "
            f"fix: e.g. {calendar.EXAMPLES}"
        )
    return problems


# --- secrets ----------------------------------------------------------------------------------


def secret_problems(values: Mapping[str, str], mode: str, provider_keys: set[str]) -> list[str]:
    problems = []
    master = values.get(S.MASTER_KEY)
    if master is not None:
        if not master.startswith("sk-"):
            problems.append(f"{S.MASTER_KEY}: must start with 'sk-' — fix: delete it to have one generated")
        if len(master) < MIN_KEY_LENGTH:
            problems.append(
                f"{S.MASTER_KEY}: shorter than {MIN_KEY_LENGTH} characters — fix: delete it to have one generated"
            )
    salt = values.get(S.SALT_KEY)
    if salt is not None and salt in (master, values.get(S.MASTER_KEY_NEXT)):
        problems.append(
            f"{S.SALT_KEY}: equals a master key ({S.MASTER_KEY} or {S.MASTER_KEY_NEXT}) — whoever holds the "
            "master key could decrypt the stored credentials — fix: on a new deployment delete it to have one "
            f"generated; on an existing one give {S.MASTER_KEY} a new value with rotate.py (never change the salt key)"
        )
    if salt is not None and len(salt) < MIN_KEY_LENGTH:
        problems.append(
            f"{S.SALT_KEY}: shorter than {MIN_KEY_LENGTH} characters — fix: on a new deployment delete it to have one "
            "generated (an existing deployment's salt key must never change: it encrypts stored credentials)"
        )
    for name in (S.POSTGRES_PASSWORD, S.UI_PASSWORD):
        value = values.get(name)
        if value is not None and len(value) < MIN_PASSWORD_LENGTH:
            problems.append(
                f"{name}: shorter than {MIN_PASSWORD_LENGTH} characters — fix: delete it to have one generated"
            )
    for name, value in values.items():
        if S.is_published(value):
            problems.append(
                f"{name}: this value was published (LiteLLM's example key or the old setup guide) — "
                "fix: delete it from the secrets file to have a new one generated"
            )
        if "\r" in value or "\x00" in value:
            problems.append(f"{name}: contains a carriage return or NUL byte, which a .env cannot hold")
    if mode == "external":
        url = values.get(S.DATABASE_URL)
        if not url:
            problems.append(
                f"{S.DATABASE_URL}: database_mode is 'external' — fix: add DATABASE_URL=postgresql://... to the secrets file"
            )
        else:
            problems += [f"{S.DATABASE_URL}: {problem}" for problem in pgservice.problems(url)]
    for name in sorted(provider_keys):
        if not values.get(name):
            problems.append(
                f"{name}: a model uses api_key_env {name!r} but the secrets file has no such entry — "
                f"fix: add {name}=... to the secrets file"
            )
    return problems


# --- everything, for every host ----------------------------------------------------------------


@dataclass
class HostInput:
    """What settings need to know of one host, independent of pyinfra (so tests need no hosts)."""

    name: str
    data: Callable[[str, object], object]


def build_all(
    gateways: list[HostInput],
    secrets_file: Path,
    host_envs: HostEnvs,
    complete: bool = True,
    record: Callable[[Path, Completion], None] | None = None,
    host_key_values: KeyValues | None = None,
) -> dict[str, Settings]:
    """build_everything's gateways, for an inventory without state hosts."""
    return build_everything(gateways, secrets_file, host_envs, complete, record, host_key_values=host_key_values)[0]


def build_everything(
    gateways: list[HostInput],
    secrets_file: Path,
    host_envs: HostEnvs,
    complete: bool = True,
    record: Callable[[Path, Completion], None] | None = None,
    db_hosts: Sequence[HostInput] = (),
    redis_hosts: Sequence[HostInput] = (),
    host_key_values: KeyValues | None = None,
) -> tuple[dict[str, Settings], dict[str, topology.StateHost]]:
    """Validate every gateway and the secrets file against what the gateways hold, then build Settings.

    host_envs: the generated secrets each gateway's .env holds (tasks/config/key_guard.py: None = not read).
    host_key_values: the declared keys' values each gateway holds ({alias: value}; None = not read;
    default: as host_envs was read, none held).
    A missing generated secret is taken from the gateways, or generated on a new deployment, and
    handed to `record` (default: appended to the secrets file now; tasks.context defers it to the
    start of the run's operations, so --dry writes nothing). Nothing is recorded unless every host
    and every key is valid. complete=False (checks that only read): values are taken from the
    gateways for this run only, nothing is generated or recorded.
    """
    problems: list[str] = []
    if not gateways:
        problems.append(f"inventory: no host in the {GATEWAYS} group — fix: add your gateways to {GATEWAYS}")
    if problem := S.loose_mode_problem(secrets_file):
        problems.append(problem)
    problems += S.duplicate_problems(secrets_file)
    present = S.read_secrets(secrets_file)

    parsed: dict[str, tuple[dict, dict[str, str], tuple[Model, ...], Access]] = {}
    modes: set[str] = set()
    provider_keys: set[str] = set()
    db_hosts, redis_hosts = list(db_hosts), list(redis_hosts)
    written_modes = {g.name: g.data("database_mode", DEFAULTS["database_mode"]) for g in gateways}
    problems += topology.problems(gateways, db_hosts, redis_hosts, written_modes, present)
    state_raw = {}
    for state_host in {h.name: h for h in (*db_hosts, *redis_hosts)}.values():
        state_raw[state_host.name] = read_host_data(state_host.data)
        problems += [f"host {state_host.name}: {p}" for p in data_problems(state_raw[state_host.name])]
    shape = topology.resolve(gateways, db_hosts, redis_hosts, present) if not problems else topology.Topology()
    for gateway in gateways:
        raw = read_host_data(gateway.data)
        host_problems = data_problems(raw)
        # The TLS front: its fields, and the names its certificate is for ([] = by source, tasks/config/tls_config.py).
        address = tls_config.host_address(gateway.name, gateway.data)
        host_problems += tls_config.problems(gateway.name, address, raw)
        if raw["tls"] != "off" and not host_problems:
            raw["tls_names"] = list(tls_config.effective_names(gateway.name, address, raw))
        nodes = parse_ollama_nodes(gateway.data("ollama_nodes", {}), host_problems)
        models = parse_models(raw["models"], nodes, host_problems)
        access = access_declared(raw, models, host_problems)
        problems += [f"host {gateway.name}: {p}" for p in host_problems]
        if topology.uses_db_host(shape, raw["database_mode"]):
            # The db host's database, reached like an external one, with a URL the deploy makes.
            raw["database_mode"] = "external"
        parsed[gateway.name] = (raw, nodes, models, access)
        modes.add(raw["database_mode"])
        provider_keys |= {m.api_key_env for m in models if m.api_key_env}

    # Missing generated secrets: from the gateways, or new on a new deployment (never a live key).
    wanted = sorted(
        {name for mode in modes & set(DATABASE_MODES) for name in needed_secrets(mode)}
        | set(topology.wanted_secrets(db_hosts, redis_hosts))
    )
    install_dirs = {name: str(raw["install_dir"]) for name, (raw, _, _, _) in parsed.items()}
    completion = key_guard.complete(present, wanted, host_envs, install_dirs, generate=complete)
    declared_keys = tuple(key for *_, (_, keys) in parsed.values() for key in keys)
    if host_key_values is None:
        host_key_values = {name: None if env is None else {} for name, env in host_envs.items()}
    _complete_key_values(present, declared_keys, completion, host_key_values, install_dirs, generate=complete)
    problems += completion.problems
    values = {**present, **completion.additions}
    if shape.db_host and values.get(S.POSTGRES_PASSWORD):
        db_raw = state_raw[shape.db_host]
        values[S.DATABASE_URL] = topology.db_host_url(
            shape, str(db_raw["postgres_user"]), values[S.POSTGRES_PASSWORD], str(db_raw["postgres_db"])
        )
    for mode in modes & set(DATABASE_MODES):
        problems += secret_problems(values, mode, provider_keys)
    problems += key_value_problems(declared_keys, values)
    problems += key_guard.mismatch_problems(values, host_envs, install_dirs)
    problems = list(dict.fromkeys(problems))  # one secrets problem per run, not one per mode
    if problems:
        raise ConfigError(problems)

    if complete and completion.additions:
        (record or _record_now)(secrets_file, completion)
    secrets = Secrets(values=values)
    gateway_settings = {
        name: Settings(
            host_name=name,
            **{
                k: v
                for k, v in raw.items()
                if k not in ("models", "image_archives", "tls_names", "teams", "virtual_keys")
            },
            image_archives=tuple(raw["image_archives"]),
            tls_names=tuple(raw["tls_names"]),
            models=models,
            ollama_nodes=nodes,
            secrets=secrets,
            teams=teams,
            virtual_keys=keys,
            db_host=shape.db_host if topology.uses_db_host(shape, written_modes[name]) else "",
            redis_address=shape.redis_address,
            redis_url=shape.redis_url,
            behind_load_balancer=False,  # tasks.balancer.placed_behind, when the inventory has lb_hosts
            load_balancer_sources=(),
        )
        for name, (raw, nodes, models, (teams, keys)) in parsed.items()
    }

    def backup_view(name: str, data: dict, directory: str, project: str) -> Settings:
        """The db host's database seen as a bundled one (tasks/gateway/backup.py: pg_dump through `compose exec`
        in its project, backup_dir/backup_keep/backup_schedule of its own host data)."""
        some_gateway = next(iter(gateway_settings.values()))
        return replace(
            some_gateway,
            host_name=name,
            database_mode="bundled",
            install_dir=directory,
            compose_project=project,
            db_host="",
            redis_address="",
            redis_url=False,
            **{
                k: data[k]
                for k in (
                    "postgres_user",
                    "postgres_db",
                    "postgres_image",
                    "backup_dir",
                    "backup_keep",
                    "backup_local_dir",
                    "backup_enabled",
                    "backup_schedule",
                )
            },
        )

    return gateway_settings, topology.state_hosts(shape, state_raw, secrets, backup_view if gateway_settings else None)


Access = tuple[tuple[Team, ...], tuple[VirtualKey, ...]]


def access_declared(raw: dict[str, object], models: tuple[Model, ...], problems: list[str]) -> Access:
    """The gateway's teams and virtual keys. Keys live in the database: a stateless gateway has none.
    With store_model_in_db, models added later through the UI count too, so any model name goes."""
    routed = None if raw["store_model_in_db"] is True else {m.name for m in models}
    teams = parse_teams(raw["teams"], routed, problems)
    keys = parse_keys(raw["virtual_keys"], teams, routed, problems)
    provider_entries = {m.api_key_env: m.name for m in models if m.api_key_env}
    for key in keys:
        if key.key_env in provider_entries:
            problems.append(
                f"virtual_keys[{key.alias!r}].key_env: {key.key_env} is also the api_key_env of model "
                f"{provider_entries[key.key_env]!r}: the provider's key would be handed out as a virtual key "
                f"— fix: give the key an entry of its own, e.g. {default_key_env(key.alias)!r}"
            )
    if (teams or keys) and raw["database_mode"] == "none":
        problems.append(
            "virtual_keys/teams: declared on a gateway without a database (database_mode 'none'), "
            "where LiteLLM keeps no keys — fix: database_mode 'bundled' or 'external', or remove them"
        )
    return teams, keys


# Gateway name -> the declared keys' values it holds ({alias: value}), or None when not read.
KeyValues = Mapping[str, "Mapping[str, str] | None"]


def _complete_key_values(
    present: Mapping[str, str],
    keys: tuple[VirtualKey, ...],
    completion: Completion,
    host_values: KeyValues,
    install_dirs: Mapping[str, str],
    generate: bool,
) -> None:
    """A value for each present key the secrets file has none for: the one the gateways hold (a new
    controller, a lost file), else, only when every gateway was read and none holds one, a new one.
    Never a replacement: a key already in the database under its alias with another value is refused
    by the converge."""
    unread = sorted(name for name in install_dirs if host_values.get(name) is None)
    for key in keys:
        if key.state != "present" or present.get(key.key_env) or key.key_env in completion.additions:
            continue
        held = {
            name: values[key.alias]
            for name, values in sorted(host_values.items())
            if values and isinstance(values.get(key.alias), str) and values[key.alias]
        }
        where = {name: virtual_keys.values_file(install_dirs.get(name, "?")) for name in (*held, *unread)}
        if len(set(held.values())) > 1:
            listing = ", ".join(
                f"{name}:{where[name]} ({key_guard.fingerprint(value)})" for name, value in held.items()
            )
            completion.problems.append(
                f"{key.key_env}: the value of virtual key {key.alias!r} is missing from the secrets file and the gateways "
                f"disagree: {listing} — fix: copy the value the key should keep into the secrets file ({key.key_env}=...)"
            )
        elif held:
            name, value = next(iter(held.items()))
            completion.additions[key.key_env] = value
            completion.origin[key.key_env] = f"virtual key {key.alias!r}, taken from {name}:{where[name]}"
        elif unread:
            completion.problems.append(
                f"{key.key_env}: the value of virtual key {key.alias!r} is missing from the secrets file, and "
                f"{', '.join(unread)} could not be read in this run, so may hold it — fix: make "
                f"{', '.join(unread)} reachable and run again, or copy the key's value from "
                f"{' or '.join(f'{n}:{where[n]}' for n in unread)} into the secrets file as {key.key_env}=..."
            )
        elif generate:
            completion.additions[key.key_env] = S.new_virtual_key()
            completion.origin[key.key_env] = f"generated by litellm-deploy for virtual key {key.alias!r}"


def _record_now(secrets_file: Path, completion: Completion) -> None:
    S.append_secrets(secrets_file, completion.additions, completion.origin)
