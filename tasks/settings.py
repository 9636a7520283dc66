"""Host data + secrets file -> one validated, typed Settings per host.

Every host of the inventory is checked before the first operation is added, and every problem is
reported at once, each naming the host, the field and the fix. So bad input stops the run before
any host is touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

from pyinfra.api.exceptions import PyinfraError

from tasks import key_guard
from tasks import secrets as S
from tasks.key_guard import Completion, HostEnvs
from tasks.models import Model, is_http_url, parse_models

GATEWAYS = "litellm_hosts"
OLLAMA_NODES = "ollama_nodes"
DATABASE_MODES = ("bundled", "external", "none")
DOCKER_INSTALLS = ("distro", "docker-repo", "skip")
IMAGE_SOURCES = ("pull", "archives")
FLOATING_TAGS = {"latest", "main-latest", "main-stable", "stable", "nightly", "main"}
MIN_KEY_LENGTH = 32
MIN_PASSWORD_LENGTH = 12
DEFAULT_OLLAMA_PORT = 11434

# Defaults live in group_data/all.py for users to read; these only catch a missing group_data dir.
DEFAULTS = {
    "litellm_image": None,
    "postgres_image": "postgres:16",
    "install_dir": "/opt/litellm",
    "compose_project": "litellm",
    "proxy_port": 4000,
    "proxy_bind": "0.0.0.0",
    "proxy_base_url": "",
    "database_mode": "bundled",
    "postgres_user": "litellm",
    "postgres_db": "litellm",
    "postgres_publish_port": 0,
    "docker_install": "distro",
    "image_source": "pull",
    "image_archives": [],
    "ui_username": "admin",
    "admin_user_id": "admin",
    "admin_email": "",
    "store_model_in_db": False,
    "verify_timeout": 180,
    "start_timeout": 180,
    "models": None,
    "backup_dir": "/opt/litellm/backups",
    "backup_keep": 7,
    "backup_local_dir": "backups",
    "backup_enabled": True,
    "backup_schedule": "daily",
}


class ConfigError(PyinfraError):
    """Raised before any operation exists; its message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the inventory, group data or secrets file; "
                         f"nothing was changed on any host:\n{listing}")


@dataclass(frozen=True)
class Secrets:
    """Values that only ever travel into the host's .env. repr() never shows them."""

    values: Mapping[str, str] = field(repr=False)

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    @property
    def master_key(self) -> str:
        return self.values[S.MASTER_KEY]


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
    backup_dir: str = "/opt/litellm/backups"
    backup_keep: int = 7
    backup_local_dir: str = "backups"
    backup_enabled: bool = True
    backup_schedule: str = "daily"

    @property
    def has_database(self) -> bool:
        return self.database_mode != "none"

    @property
    def provider_key_names(self) -> tuple[str, ...]:
        return tuple(sorted({m.api_key_env for m in self.models if m.api_key_env}))

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


def needed_secrets(mode: str) -> list[str]:
    wanted = [S.MASTER_KEY, S.SALT_KEY, S.UI_PASSWORD]
    if mode == "bundled":
        wanted.append(S.POSTGRES_PASSWORD)
    return wanted


# --- host data --------------------------------------------------------------------------------


def read_host_data(data: Callable[[str, object], object]) -> dict[str, object]:
    return {name: data(name, default) for name, default in DEFAULTS.items()}


def ollama_node_urls(nodes: Mapping[str, Callable[[str, object], object]]) -> dict[str, str]:
    """name -> base URL of every host in the ollama_nodes group."""
    urls = {}
    for name, data in nodes.items():
        url = data("ollama_url", None)
        if not url:
            address = data("ssh_hostname", None) or name
            url = f"http://{address}:{data('ollama_port', DEFAULT_OLLAMA_PORT)}"
        urls[name] = str(url).rstrip("/")
    return urls


def _image_problems(field_name: str, image: object) -> list[str]:
    if not isinstance(image, str) or not image:
        return [f"{field_name}: must be an image reference like 'registry/name:tag'"]
    if "@sha256:" in image:
        return []
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return [f"{field_name}: {image!r} has no tag — fix: pin a version tag (never latest)"]
    if last.split(":", 1)[1] in FLOATING_TAGS:
        return [f"{field_name}: {image!r} uses a floating tag — fix: pin a version tag such as main-v1.108.7"]
    return []


def _port_problems(field_name: str, value: object, allow_zero: bool = False) -> list[str]:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        return [f"{field_name}: {value!r} is not a port ({low}-65535)"]
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
    if mode == "bundled":
        problems += _image_problems("postgres_image", raw["postgres_image"])
    problems += _choice("docker_install", raw["docker_install"], DOCKER_INSTALLS)
    problems += _choice("image_source", raw["image_source"], IMAGE_SOURCES)
    problems += _port_problems("proxy_port", raw["proxy_port"])
    problems += _port_problems("postgres_publish_port", raw["postgres_publish_port"], allow_zero=True)
    if raw["postgres_publish_port"] and raw["postgres_publish_port"] == raw["proxy_port"]:
        problems.append(
            f"postgres_publish_port: {raw['postgres_publish_port']} collides with proxy_port — fix: pick another port"
        )
    install_dir = raw["install_dir"]
    if not isinstance(install_dir, str) or not install_dir.startswith("/") or install_dir.rstrip("/") in ("", "/"):
        problems.append(f"install_dir: {install_dir!r} must be an absolute directory other than /")
    if not isinstance(raw["compose_project"], str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", raw["compose_project"]):
        problems.append("compose_project: use lowercase letters, digits, '-' and '_' (Compose's rule)")
    for name in ("postgres_user", "postgres_db"):
        if not isinstance(raw[name], str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", raw[name]):
            problems.append(f"{name}: {raw[name]!r} must be a plain SQL identifier (letters, digits, _)")
    if not isinstance(raw["proxy_bind"], str) or not re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", raw["proxy_bind"]):
        problems.append(f"proxy_bind: {raw['proxy_bind']!r} must be an IP address such as 0.0.0.0 or 127.0.0.1")
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
        if not isinstance(raw[name], str) or not raw[name].strip():
            problems.append(f"{name}: must be a non-empty string")
    if not isinstance(raw["admin_email"], str):
        problems.append("admin_email: must be a string (may be empty)")
    if not isinstance(raw["store_model_in_db"], bool):
        problems.append("store_model_in_db: must be True or False")
    elif raw["store_model_in_db"] and mode == "none":
        problems.append("store_model_in_db: needs a database — fix: database_mode 'bundled' or 'external'")
    for name in ("verify_timeout", "start_timeout"):
        timeout = raw[name]
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
            problems.append(f"{name}: must be a whole number of seconds >= 1")
    problems += backup_problems(raw)
    return problems


def backup_problems(raw: dict[str, object]) -> list[str]:
    problems = []
    backup_dir = raw["backup_dir"]
    if not isinstance(backup_dir, str) or not backup_dir.startswith("/") or backup_dir.rstrip("/") in ("", "/") \
            or not re.fullmatch(r"[A-Za-z0-9_./-]+", backup_dir):
        problems.append(f"backup_dir: {backup_dir!r} must be an absolute directory other than / (letters, digits, _ . - /)")
    keep = raw["backup_keep"]
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        problems.append("backup_keep: must be a whole number of backups >= 1")
    if not isinstance(raw["backup_local_dir"], str) or not raw["backup_local_dir"].strip():
        problems.append("backup_local_dir: must be a directory on the controller, such as 'backups'")
    if not isinstance(raw["backup_enabled"], bool):
        problems.append("backup_enabled: must be True or False")
    schedule = raw["backup_schedule"]
    if not isinstance(schedule, str) or not re.fullmatch(r"[A-Za-z0-9 *:,./~-]+", schedule):
        problems.append(f"backup_schedule: {schedule!r} must be a systemd OnCalendar expression such as 'daily'")
    return problems


# --- secrets ----------------------------------------------------------------------------------


def secret_problems(values: Mapping[str, str], mode: str, provider_keys: set[str]) -> list[str]:
    problems = []
    master = values.get(S.MASTER_KEY)
    if master is not None:
        if not master.startswith("sk-"):
            problems.append(f"{S.MASTER_KEY}: must start with 'sk-' — fix: delete it to have one generated")
        if len(master) < MIN_KEY_LENGTH:
            problems.append(f"{S.MASTER_KEY}: shorter than {MIN_KEY_LENGTH} characters — fix: delete it to have one generated")
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
            problems.append(f"{name}: shorter than {MIN_PASSWORD_LENGTH} characters — fix: delete it to have one generated")
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
            problems.append(f"{S.DATABASE_URL}: database_mode is 'external' — fix: add DATABASE_URL=postgresql://... to the secrets file")
        elif urlsplit(url).scheme not in ("postgresql", "postgres") or not urlsplit(url).hostname:
            problems.append(f"{S.DATABASE_URL}: must be postgresql://user:password@host:5432/dbname")
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
    ollama_nodes: list[HostInput],
    secrets_file: Path,
    host_envs: HostEnvs,
    complete: bool = True,
    record: Callable[[Path, Completion], None] | None = None,
) -> dict[str, Settings]:
    """Validate every gateway and the secrets file against what the gateways hold, then build Settings.

    host_envs: the generated secrets each gateway's .env holds (tasks/key_guard.py: None = not read).
    A missing generated secret is taken from the gateways, or generated on a new deployment, and
    handed to `record` (default: appended to the secrets file now; tasks.context defers it to the
    start of the run's operations, so --dry writes nothing). Nothing is recorded unless every host
    and every key is valid. complete=False (checks that only read): values are taken from the
    gateways for this run only, nothing is generated or recorded.
    """
    problems: list[str] = []
    node_urls = ollama_node_urls({n.name: n.data for n in ollama_nodes})
    for name, url in node_urls.items():
        if not is_http_url(url):
            problems.append(f"host {name}: ollama_url: {url!r} is not a URL — fix: http://host:11434")
    if not gateways:
        problems.append(f"inventory: no host in the {GATEWAYS} group — fix: add your gateways to {GATEWAYS}")
    if problem := S.loose_mode_problem(secrets_file):
        problems.append(problem)
    present = S.read_secrets(secrets_file)

    parsed: dict[str, tuple[dict, tuple[Model, ...]]] = {}
    modes: set[str] = set()
    provider_keys: set[str] = set()
    for gateway in gateways:
        raw = read_host_data(gateway.data)
        host_problems = data_problems(raw)
        models = parse_models(raw["models"], node_urls, host_problems)
        problems += [f"host {gateway.name}: {p}" for p in host_problems]
        parsed[gateway.name] = (raw, models)
        modes.add(raw["database_mode"])
        provider_keys |= {m.api_key_env for m in models if m.api_key_env}

    # Missing generated secrets: from the gateways, or new on a new deployment (never a live key).
    wanted = sorted({name for mode in modes & set(DATABASE_MODES) for name in needed_secrets(mode)})
    install_dirs = {name: str(raw["install_dir"]) for name, (raw, _) in parsed.items()}
    completion = key_guard.complete(present, wanted, host_envs, install_dirs, generate=complete)
    problems += completion.problems
    values = {**present, **completion.additions}
    for mode in modes & set(DATABASE_MODES):
        problems += secret_problems(values, mode, provider_keys)
    problems += key_guard.mismatch_problems(values, host_envs, install_dirs)
    problems = list(dict.fromkeys(problems))  # one secrets problem per run, not one per mode
    if problems:
        raise ConfigError(problems)

    if complete and completion.additions:
        (record or _record_now)(secrets_file, completion)
    secrets = Secrets(values=values)
    return {
        name: Settings(
            host_name=name,
            **{k: v for k, v in raw.items() if k not in ("models", "image_archives")},
            image_archives=tuple(raw["image_archives"]),
            models=models,
            ollama_nodes=node_urls,
            secrets=secrets,
        )
        for name, (raw, models) in parsed.items()
    }


def _record_now(secrets_file: Path, completion: Completion) -> None:
    S.append_secrets(secrets_file, completion.additions, completion.origin)
