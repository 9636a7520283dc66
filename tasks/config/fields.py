"""Every setting a user gives in group data or host data, declared once: its type as the user writes
it, its default, and what it does. The package's defaults live here and nowhere else: `group_data/`
holds the user's choices only, so a new version of the package never conflicts with a user's edits.
tasks/config/settings.py takes its defaults from here and checks the values; docs/configuration.md is
generated from here (`python -m tasks.config.reference`; tests/unit/test_configuration_reference.py
fails when it is stale)."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config.secrets import DEFAULT_SECRETS_NAME, SECRETS_ENV_VAR

REQUIRED = object()  # no default: a gateway without it is refused, naming it


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # as the user writes it in Python group data
    default: object
    doc: str
    section: str


def _section(title: str, *fields: tuple[str, str, object, str]) -> tuple[Field, ...]:
    return tuple(Field(name, kind, default, doc, title) for name, kind, default, doc in fields)


FIELDS: tuple[Field, ...] = (
    *_section(
        "Models and Ollama nodes",
        (
            "models",
            "list of dict",
            REQUIRED,
            "The models a gateway routes, one dict each: name (what clients ask for), model (LiteLLM's "
            '"<provider>/<model>"), api_key_env (the secrets-file entry holding its key, never the key), api_base, '
            'ollama_node (a node of ollama_nodes, or "local" for Ollama on the gateway host), smoke_test (one chat '
            "during verify; on by default for Ollama and upstreams). See group_data/litellm_hosts.py for an example.",
        ),
        (
            "ollama_nodes",
            "dict",
            {},
            'Ollama servers the models name as ollama_node: {name: {"address": host or IP, "port": N}} or '
            '{name: {"url": "http://host:port"}}. Data, not hosts: never logged into, only checked by verify from '
            "inside the proxy container.",
        ),
    ),
    *_section(
        "Images",
        (
            "litellm_image",
            "str",
            "ghcr.io/berriai/litellm-database:main-v1.108.7",
            "Official LiteLLM image with Prisma engines baked in, pinned (never `latest` / `main-latest`).",
        ),
        (
            "postgres_image",
            "str",
            "postgres:16",
            'PostgreSQL image: the bundled database (data in a named volume), and psql/pg_dump for "external". Pinned '
            'to a version tag ("16" or "16.4"); tags without a version ("latest", "alpine") are refused.',
        ),
        (
            "tls_image",
            "str",
            "caddy:2.11.7",
            "The TLS front's and load balancers' image (Caddy), pinned. 2.11.2 or later: earlier releases answer 502 to "
            "a POST retried after a dial error (caddyserver/caddy#7546), so a load balancer could not route a request "
            "around a gateway that just died.",
        ),
        ("redis_image", "str", "valkey/valkey:8.1", "Valkey (Redis-compatible) image of a redis_hosts host, pinned."),
        (
            "image_source",
            "str",
            "pull",
            '"pull" the pinned images, or "archives": upload the files in image_archives and `docker load` them '
            "(air-gapped hosts).",
        ),
        (
            "image_archives",
            "list of str",
            [],
            "Controller paths of `docker save` archives (.tar or .tar.gz) holding the images the host runs.",
        ),
        (
            "docker_install",
            "str",
            "distro",
            'How Docker Engine + Compose v2 are installed: "distro" (Debian 13 / Ubuntu 24.04 packages), '
            '"docker-repo" (Docker\'s apt repository) or "skip" (already installed by other means).',
        ),
    ),
    *_section(
        "The proxy",
        (
            "install_dir",
            "str",
            "/opt/litellm",
            "Where the compose project (docker-compose.yml, litellm-config.yaml, .env) lives on the host.",
        ),
        (
            "compose_project",
            "str",
            "litellm",
            "Docker Compose project name (container and volume names start with it).",
        ),
        ("proxy_port", "int", 4000, "Port the proxy is published on."),
        (
            "proxy_bind",
            "str",
            "0.0.0.0",
            'Host address the proxy is published on ("0.0.0.0" = every interface, "127.0.0.1" = behind a local '
            "reverse proxy).",
        ),
        (
            "proxy_base_url",
            "str",
            "",
            "Public URL of the gateway, used for UI login redirects (PROXY_BASE_URL); empty = not set.",
        ),
        (
            "proxy_workers",
            '"auto" or int',
            "auto",
            'Worker processes of the proxy: "auto" = one per CPU of the host, fewer when memory is short (about 1 GB '
            "each), at most 8 (tasks/config/sizing.py; one worker keeps one CPU busy), or a number.",
        ),
        (
            "store_model_in_db",
            "bool",
            False,
            "Let admins add models through the UI/API and keep them in the database (needs a database mode).",
        ),
        (
            "ui_username",
            "str",
            "admin",
            "Admin UI login name; its password is UI_PASSWORD in the secrets file (generated when missing).",
        ),
        ("admin_user_id", "str", "admin", "The admin user the bootstrap creates and links the master key to."),
        ("admin_email", "str", "", "That admin user's e-mail (optional)."),
        (
            "log_max_size",
            "str",
            "10m",
            "Container logs (json-file) are rotated at this size (a number then k, m or g).",
        ),
        ("log_max_file", "int", 3, "How many rotated log files are kept per container."),
        ("start_timeout", "int", 180, "Seconds a started container (Postgres, the proxy) may take to report healthy."),
        ("verify_timeout", "int", 180, "Seconds each health check may take before the host is reported failed."),
    ),
    *_section(
        "Database",
        (
            "database_mode",
            "str",
            "bundled",
            '"bundled" (Postgres in the compose project), "external" (DATABASE_URL in the secrets file) or '
            '"none" (stateless). Gateways of an inventory with db_hosts use the db host (docs/topologies.md).',
        ),
        ("postgres_user", "str", "litellm", "Database role created in the bundled Postgres."),
        ("postgres_db", "str", "litellm", "Database created in the bundled Postgres."),
        (
            "postgres_publish_port",
            "int",
            0,
            "Publish the bundled Postgres on 127.0.0.1:<port> for local tools; 0 = not published at all.",
        ),
    ),
    *_section(
        "Backups",
        (
            "backup_enabled",
            "bool",
            True,
            "Install a systemd timer that takes a backup on the host by itself (bundled database only).",
        ),
        (
            "backup_schedule",
            "str",
            "daily",
            'When the timer runs: a systemd OnCalendar expression ("daily", "hourly", "Mon..Fri 02:30", '
            '"*-*-* 03:15:00 UTC"), checked with systemd\'s grammar before anything changes (tasks/config/calendar.py).',
        ),
        (
            "backup_dir",
            "str",
            "/opt/litellm/backups",
            "Where backups are kept on a gateway host (bundled database; directory 0700, files 0600).",
        ),
        (
            "backup_keep",
            "int",
            7,
            "How many backups to keep, on the host and on the controller (older ones are deleted).",
        ),
        (
            "backup_local_dir",
            "str",
            "backups",
            "Controller directory for copies of backups (`<dir>/<host>/<UTC timestamp>.dump`); relative = from where "
            "pyinfra runs.",
        ),
    ),
    *_section(
        "TLS front",
        (
            "tls",
            "str",
            "off",
            'TLS in front of the proxy (a Caddy service in the compose project): "off" (the proxy itself on '
            'proxy_bind:proxy_port, plain HTTP), "self-signed" (a certificate from the deployment\'s own CA, made once '
            'on the controller beside the secrets file), "files" (tls_cert_file + tls_key_file from the controller) '
            'or "acme" (Caddy obtains one; the host must be reachable from the ACME server under tls_names).',
        ),
        (
            "tls_names",
            "list of str",
            [],
            "Names and addresses the certificate is for; [] = the host's inventory name and address.",
        ),
        ("tls_port", "int", 443, "HTTPS port of the TLS front."),
        ("http_port", "int", 80, "Plain HTTP port of the TLS front; it only redirects to tls_port."),
        ("tls_cert_file", "str", "", 'For tls = "files": controller path of the certificate (PEM, full chain).'),
        ("tls_key_file", "str", "", 'For tls = "files": controller path of the certificate\'s private key.'),
        (
            "tls_ca_file",
            "str",
            "",
            'For tls = "files": the CA certificate (PEM) that issued tls_cert_file, when clients do not already '
            'trust it (a company CA); the verification checks the front against it. "" = the system\'s trusted CAs.',
        ),
        ("acme_email", "str", "", 'Contact e-mail given to the ACME server, for tls = "acme".'),
    ),
    *_section(
        "Keys and teams",
        (
            "teams",
            "list of dict",
            [],
            "Teams, matched by alias (needs a database; converged through the proxy's API after verification, and "
            'alone with `pyinfra inventory keys.py`). Fields: alias, models ("all" or a list of model names), '
            'max_budget (USD), budget_duration ("30d"), tpm_limit, rpm_limit, members (user ids), metadata, blocked, '
            'state ("present"/"absent"). Entries not declared are left alone; state "absent" deletes one.',
        ),
        (
            "virtual_keys",
            "list of dict",
            [],
            'Virtual keys, matched by alias. Fields: alias, models ("all": every model, or its team\'s), team, '
            'max_budget, budget_duration, tpm_limit, rpm_limit, metadata, duration ("90d" from creation) or expires '
            '("2027-06-30", UTC), blocked, state, key_env. A key\'s value is never written here: it is the '
            "secrets-file entry key_env (default VIRTUAL_KEY_<ALIAS>), generated on the first run, or set by you "
            "beforehand to import an existing key.",
        ),
        (
            "key_cache_ttl",
            "float",
            0.5,
            "Seconds each proxy worker keeps a virtual key (and its team, user and end-user objects) in memory after "
            "reading it from the database (0-60; LiteLLM's own default is 60). A deleted, blocked, expired or "
            "re-budgeted key is refused on every worker of every gateway within this much plus one database read; a "
            "longer time saves database reads (docs/secrets-and-keys.md: the figures).",
        ),
    ),
    *_section(
        "Load balancers and shared state",
        (
            "roll_width",
            "int",
            1,
            "Behind load balancers (lb_hosts): how many gateways may be recreated at once while a change rolls.",
        ),
        (
            "private_address",
            "str",
            "",
            'Of an lb, db or redis host: the address the other hosts reach it at ("" = its ssh_hostname, else its '
            "inventory name). The gateways' firewall lets load balancers in by this address.",
        ),
    ),
    *_section(
        "The controller",
        (
            "secrets_file",
            "str",
            DEFAULT_SECRETS_NAME,
            f"The secrets file (a dotenv file, 0600) on the controller; ${SECRETS_ENV_VAR} overrides it. Relative = "
            "from where pyinfra runs.",
        ),
    ),
)

BY_NAME = {f.name: f for f in FIELDS}
DEFAULTS = {f.name: f.default for f in FIELDS}
