"""An external database's DATABASE_URL, parsed once on the controller into libpq's own files.

psql and pg_dump take a URL only as an argument, which `ps` on the host would show. So the controller
turns the URL into a connection service file (host, port, database, user, the libpq parameters worth
keeping) and a password file, both uploaded 0600 beside the project's .env; the one-shot Postgres
container mounts them read-only and names them with PGSERVICEFILE / PGPASSFILE. No shell on the host
ever parses a URL or a dotenv line.

libpq's formats bound what can be said: a service-file value ends at the line's end and loses
trailing blanks, and a password-file line cannot hold a line break. Values that cannot be written
exactly are problems reported with the settings, before any host is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

SERVICE = "litellm"
# The two files, beside the project's .env on the host (both 0600: libpq ignores a password file
# others can read).
SERVICE_FILE = "pg_service.conf"
PASSWORD_FILE = "pgpass"
SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = "5432"
# URL query parameters that mean the same to libpq inside the container; Prisma's own ones
# (connection_limit, pool_timeout, ...) are for the proxy and are left out.
LIBPQ_PARAMETERS = {
    "sslmode": "sslmode",
    "connect_timeout": "connect_timeout",
    "application_name": "application_name",
    "target_session_attrs": "target_session_attrs",
}


@dataclass(frozen=True)
class Connection:
    """What libpq needs, decoded: hosts and ports as lists (a URL may name several)."""

    hosts: tuple[str, ...]
    ports: tuple[str, ...]
    dbname: str
    user: str
    password: str | None
    parameters: tuple[tuple[str, str], ...]


class UrlError(ValueError):
    pass


def parse(url: str) -> Connection:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise UrlError("must start with postgresql://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        userinfo, hostlist = "", netloc
    user, colon, password = userinfo.partition(":")
    hosts, ports = [], []
    for entry in hostlist.split(",") if hostlist else []:
        if entry.startswith("["):
            host, _, port = entry[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = entry.partition(":")
        if not host:
            raise UrlError("names an empty host")
        if port and not port.isdigit():
            # Not quoted: an unencoded '/', '?' or '@' in the password ends the host part early, and
            # what follows the ':' is then the rest of the password.
            raise UrlError(
                "has a port that is not a number (a '/', '?' or '@' in the user or password "
                "must be written percent-encoded: %2F, %3F, %40)"
            )
        hosts.append(unquote(host))
        ports.append(port or DEFAULT_PORT)
    if not hosts:
        raise UrlError("names no host")
    parameters = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in LIBPQ_PARAMETERS:
            parameters.append((LIBPQ_PARAMETERS[name], value))
        elif name == "schema":  # Prisma's schema: psql must see the same tables
            parameters.append(("options", "-c search_path=" + value.replace("\\", "\\\\").replace(" ", "\\ ")))
    return Connection(
        hosts=tuple(hosts),
        ports=tuple(ports),
        dbname=unquote(path),
        user=unquote(user),
        password=unquote(password) if colon else None,
        parameters=tuple(parameters),
    )


def problems(url: str) -> list[str]:
    """Why this URL cannot be handed to libpq exactly (empty when it can). No text quotes any part of
    the URL: a password written without percent-encoding can be misread as any other part."""
    try:
        connection = parse(url)
    except UrlError as error:
        return [f"{error} — fix: postgresql://user:password@host:5432/dbname"]
    found = []
    if not connection.dbname:
        found.append("names no database — fix: postgresql://user:password@host:5432/dbname")
    if not connection.user:
        found.append("names no user — fix: postgresql://user:password@host:5432/dbname")
    for name, value in _service_values(connection):
        if "\n" in value or "\r" in value or value != value.rstrip() or "\x00" in value:
            found.append(
                f"the {name} holds a line break or ends in a blank, which libpq's service file "
                "cannot hold — fix: rename it"
            )
    if connection.password is not None and any(c in connection.password for c in "\n\r\x00"):
        found.append(
            "the password holds a line break, which libpq's password file cannot hold — fix: "
            "give the database role a password without one"
        )
    return found


def _service_values(connection: Connection) -> list[tuple[str, str]]:
    return [
        ("host", ",".join(connection.hosts)),
        ("port", ",".join(connection.ports)),
        ("dbname", connection.dbname),
        ("user", connection.user),
        *connection.parameters,
    ]


def service_file(url: str) -> str:
    """pg_service.conf text with one service, SERVICE."""
    lines = [f"[{SERVICE}]"] + [f"{name}={value}" for name, value in _service_values(parse(url))]
    return "\n".join(lines) + "\n"


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def password_file(url: str) -> str:
    """.pgpass text: the URL's password for any host, port and database, for its user only.
    Empty when the URL has no password (libpq then tries without one, as it would with the URL)."""
    connection = parse(url)
    if connection.password is None:
        return ""
    return f"*:*:*:{_pgpass_field(connection.user)}:{_pgpass_field(connection.password)}\n"
