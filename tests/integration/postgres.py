"""A throwaway PostgreSQL server from the Debian packages, and a small psql-based client.

The server lives in its own temporary directory on its own free port on 127.0.0.1, with a
random superuser password that clients find through a pgpass file (PGPASSFILE), never argv.
As root (CI, these machines) initdb and postgres run as the `postgres` system user, since
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

START_DEADLINE = 60.0  # seconds for the server to accept connections


class PostgresUnavailable(RuntimeError):
    """The machine has no PostgreSQL server binaries or psql: the tier is skipped, not failed."""


def find_bindir() -> Path:
    if not shutil.which("psql"):
        raise PostgresUnavailable("psql is not installed (Debian: postgresql-client)")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.path.join(os.environ["PG_BINDIR"], "initdb"))
    if not candidates or not os.access(candidates[-1], os.X_OK):
        raise PostgresUnavailable("no PostgreSQL server binaries (Debian: postgresql) and PG_BINDIR is not set")
    return Path(candidates[-1]).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(argv: list[str]) -> tuple[list[str], str | None]:
    """argv that runs as the `postgres` user when we are root; the owner for the files."""
    if os.geteuid() != 0:
        return argv, None
    try:
        pwd.getpwnam("postgres")
    except KeyError as error:
        raise PostgresUnavailable("running as root and there is no `postgres` user to run the server") from error
    return ["runuser", "-u", "postgres", "--", *argv], "postgres"


@dataclass
class Server:
    bindir: Path
    root: Path
    port: int
    superuser: str
    password: str
    pgpass: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str) -> str:
        """A DATABASE_URL as LiteLLM gets it: password inside, percent-encoded."""
        user, password, name = (quote(part, safe="") for part in (self.superuser, self.password, dbname))
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{name}"

    def client_env(self) -> dict[str, str]:
        """What a client process needs besides host/port/user/db: the password file."""
        return {"PGPASSFILE": str(self.pgpass), "PGCONNECT_TIMEOUT": "5"}

    def db(self, dbname: str) -> Db:
        return Db(self, dbname)

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        command, _ = _as_server_user(argv)
        return subprocess.run(command, capture_output=True, text=True, **kwargs)

    def stop(self) -> None:
        self.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> Server:
    bindir = find_bindir()
    root = Path(tempfile.mkdtemp(prefix="litellm-deploy-pg-"))
    _, owner = _as_server_user([])
    password = secrets.token_urlsafe(24)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if owner:
        shutil.chown(root, owner, owner)
        shutil.chown(pwfile, owner, owner)
    server = Server(bindir, root, 0, "postgres", password, root / "client.pgpass")
    try:
        init = server.run([
            str(bindir / "initdb"), "-D", str(server.data), "-U", server.superuser, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--no-locale", "--no-sync",
        ])
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr}")
        pwfile.unlink()
        _start(server)
        # The client side (this process, root or not) reads the password from a 0600 pgpass file.
        server.pgpass.write_text(f"127.0.0.1:{server.port}:*:{server.superuser}:{password}\n")
        server.pgpass.chmod(0o600)
        _wait_until_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _start(server: Server) -> None:
    """pg_ctl start on a free port; another process may grab the port in between, so retry."""
    last = ""
    for _ in range(3):
        server.port = free_port()
        options = (
            f"-p {server.port} -c listen_addresses=127.0.0.1 -k {server.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = server.run([
            str(server.bindir / "pg_ctl"), "-D", str(server.data), "-o", options,
            "-l", str(server.root / "server.log"), "-w", "-t", str(int(START_DEADLINE)), "start",
        ])
        if started.returncode == 0:
            return
        last = started.stderr + _read(server.root / "server.log")
    raise RuntimeError(f"PostgreSQL did not start: {last}")


def _wait_until_ready(server: Server) -> None:
    """Poll until a real client connection over TCP succeeds, or fail at the deadline."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        probe = server.db("postgres").psql("SELECT 1", check=False)
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            log = _read(server.root / "server.log")
            raise RuntimeError(f"PostgreSQL not accepting connections: {probe.stderr}{log}")
        time.sleep(0.1)  # poll interval of a condition wait, bounded by the deadline above


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass
class Db:
    """One database of the server, driven through psql (the same client the deploy uses)."""

    server: Server
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(self.server.client_env())
        return env

    def argv(self, *extra: str) -> list[str]:
        return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.server.port),
                "-U", self.server.superuser, "-d", self.name, *extra]

    def psql(self, script: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a psql script on stdin; `-A -t` output, one line per row."""
        result = subprocess.run(self.argv("-A", "-t"), input=script, capture_output=True, text=True, env=self.env())
        if check and result.returncode != 0:
            raise AssertionError(f"psql failed ({result.returncode}): {result.stderr}")
        return result

    def json(self, script: str):
        """The single JSON value the script's last query prints."""
        lines = [line for line in self.psql(script).stdout.splitlines() if line.strip()]
        return json.loads(lines[-1])
