"""Names and places the package owns, refused as user entries by class while settings are built.

A user entry that takes one of these does harm without failing: a virtual key's `key_env` naming the
master key hands that secret out as a virtual key; a provider key named like a variable of LiteLLM,
Postgres or the container's process replaces the package's value in `.env`; a `backup_dir` of /tmp
becomes root-only at the first backup. So the classes are refused, not a list of the cases seen:

- secrets-file entries: every name the package writes or reads itself (tasks/config/secrets.py) and every
  name in the environment namespace of an engine it runs or a process the containers need;
- aliases: what the bootstrap (tasks/gateway/database.py) and LiteLLM itself keep in the key and team tables;
- directories: the system's own (the FHS top levels and their standard children).
"""

from __future__ import annotations

from tasks.config import secrets as S

# LiteLLM, Postgres and libpq, Redis, Prisma, the package's own settings (UI_, PROXY_), the engines
# that run the stack, the Python and Node processes in the containers, and TLS/proxy variables that
# every HTTP client in them honours.
ENTRY_PREFIXES = (
    "LITELLM_",
    "POSTGRES_",
    "PG",
    "REDIS_",
    "DATABASE_",
    "PRISMA_",
    "UI_",
    "PROXY_",
    "DOCKER_",
    "COMPOSE_",
    "PYTHON",
    "LD_",
    "NODE_",
    "NPM_",
    "SSL_",
    "REQUESTS_",
    "CURL_",
    "HTTP_",
    "HTTPS_",
    "NO_PROXY",
    "ALL_PROXY",
    "GUNICORN_",
    "UVICORN_",
    "PROMETHEUS_",
)
# Names the package writes into .env or reads from the secrets file outside those prefixes, and the
# process environment every container relies on.
ENTRY_NAMES = frozenset(
    {
        *S.GENERATED,
        S.DATABASE_URL,
        S.REDIS_URL,
        S.MASTER_KEY_NEXT,
        S.SECRETS_ENV_VAR,
        "STORE_MODEL_IN_DB",
        "DISABLE_SCHEMA_UPDATE",
        "CONFIG_FILE_PATH",
        "DEBUG",
        "DETAILED_DEBUG",
        "PATH",
        "HOME",
        "HOSTNAME",
        "USER",
        "SHELL",
        "TERM",
        "LANG",
        "TZ",
        "PWD",
        "TMPDIR",
    }
)

# The bootstrap's master-key link and LiteLLM's own rows (its UI's team, its global admin).
ALIASES = frozenset({"master-key", "litellm-dashboard", "default_user_id"})

# Top-level directories of the system, and the standard ones below them: an install or backup
# directory there would be made root-only, filled or pruned by the package.
SYSTEM_DIRECTORIES = frozenset(
    {
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/usr/bin",
        "/usr/include",
        "/usr/lib",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/local",
        "/usr/sbin",
        "/usr/share",
        "/usr/src",
        "/usr/local/bin",
        "/usr/local/lib",
        "/usr/local/sbin",
        "/usr/local/share",
        "/var/backups",
        "/var/cache",
        "/var/lib",
        "/var/local",
        "/var/lock",
        "/var/log",
        "/var/mail",
        "/var/opt",
        "/var/run",
        "/var/spool",
        "/var/tmp",
        "/var/lib/docker",
        "/var/lib/postgresql",
        "/etc/systemd",
    }
)


def entry_owner(name: str) -> str | None:
    """Why the secrets-file entry `name` belongs to the package (None when a user entry may take it)."""
    if name in ENTRY_NAMES:
        return "the package's own entry"
    prefix = next((p for p in ENTRY_PREFIXES if name.startswith(p)), None)
    if prefix is not None:
        return f"the {prefix}* names belong to the engines and processes the package runs"
    return None


def entry_problem(field: str, name: object, example: str) -> str | None:
    """A problem line when a user entry (key_env, api_key_env) takes a name the package owns."""
    if not isinstance(name, str):
        return None
    why = entry_owner(name)
    if why is None:
        return None
    return (
        f"{field}: {name} is reserved ({why}): a value under it would be the package's, not yours — "
        f"fix: name the entry for what it holds, e.g. {example}"
    )


def alias_problem(field: str, alias: object) -> str | None:
    if alias in ALIASES:
        return (
            f"{field}: {alias!r} is reserved (LiteLLM or the bootstrap keep a row under it: "
            f"{', '.join(sorted(ALIASES))}) — fix: choose another alias"
        )
    return None


def directory_owner(path: str) -> str | None:
    """Why `path` (absolute) cannot be the package's own directory (None when it can)."""
    if (path.rstrip("/") or "/") in SYSTEM_DIRECTORIES:
        return "a directory of the system itself"
    return None
