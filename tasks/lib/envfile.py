"""The project's .env on a host, read as hashes of its lines: what rotation and the database-password
step compare with the values they would write, without the values ever leaving the host."""

from __future__ import annotations

import hashlib
import re
import shlex

from pyinfra.api import FactBase

from tasks.config.filters import dotenv_quote
from tasks.lib.render import ENV_FILE

VARIABLE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def line_hash(name: str, value: str) -> str:
    """sha256 of the line tasks.lib.render writes into .env for name=value (what EnvLineHashes reports)."""
    return hashlib.sha256(f"{name}={dotenv_quote(value)}".encode()).hexdigest()


class EnvLineHashes(FactBase):
    """{NAME: sha256 of its line} for the asked names the host's .env has; None without a .env.
    Hashes only: the lines themselves are secrets."""

    def command(self, install_dir: str, names: tuple[str, ...]) -> str:
        if not names or not all(VARIABLE.match(name) for name in names):
            raise ValueError(f"not .env variable names: {names!r}")
        env = shlex.quote(f"{install_dir.rstrip('/')}/{ENV_FILE}")
        pattern = f"^({'|'.join(names)})="
        return (
            f"if [ -f {env} ]; then echo present; grep -E '{pattern}' {env} | while IFS= read -r line; do "
            "printf '%s %s\\n' \"${line%%=*}\" \"$(printf '%s' \"$line\" | sha256sum | cut -d' ' -f1)\"; "
            "done; else echo missing; fi"
        )

    def process(self, output: list[str]) -> dict[str, str] | None:
        if not output or output[0].strip() != "present":
            return None
        found = {}
        for line in output[1:]:
            name, _, digest = line.strip().partition(" ")
            if name and digest:
                found[name] = digest
        return found
