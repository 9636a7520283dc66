"""The controller's secrets file: read, checked, completed once, never rotated by accident.

A dotenv file (python-dotenv syntax) beside the inventory, or at $LITELLM_DEPLOY_SECRETS. Values
this package can make are taken from the gateways' `.env` or, on a new deployment only, generated
(tasks/config/key_guard.py decides which, and refuses when a gateway that may hold the live value could
not be read); they are written back when the run's operations start (never under --dry), so every
later run sees the same ones. Provider keys are only ever read.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets as random
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from tasks.config.private_files import write_private

SECRETS_ENV_VAR = "LITELLM_DEPLOY_SECRETS"
DEFAULT_SECRETS_NAME = "secrets.env"

MASTER_KEY = "LITELLM_MASTER_KEY"
SALT_KEY = "LITELLM_SALT_KEY"
POSTGRES_PASSWORD = "POSTGRES_PASSWORD"
UI_PASSWORD = "UI_PASSWORD"
DATABASE_URL = "DATABASE_URL"
# State hosts (tasks/config/topology.py): the redis host's password (generated), or an external Redis.
REDIS_PASSWORD = "REDIS_PASSWORD"
REDIS_URL = "REDIS_URL"


def _new_key() -> str:
    return "sk-" + random.token_urlsafe(32)


def _new_password() -> str:
    return random.token_urlsafe(24)


# What the deploy may create on its own, and how.
GENERATED: dict[str, Callable[[], str]] = {
    MASTER_KEY: _new_key,
    SALT_KEY: _new_key,
    POSTGRES_PASSWORD: _new_password,
    UI_PASSWORD: _new_password,
    REDIS_PASSWORD: _new_password,
}

# The setup guide this package replaces printed these credentials; anyone may know them. Only
# their sha256 digests are kept (with their length), so the values themselves appear nowhere here.
_PUBLISHED = {
    (23, "1555fed228e4a31c4d4a51235a8e6cb29155e77f600a3b64043b0f4430b7c222"),
    (13, "b4c2b4e666426ded9869f17aade9e5c0466d66b7f22f11ebd5ffacfb482f61db"),
    (14, "9470eacb0519bd3fe6b0f6bf08320c0d088c33ae956199c4c2b14eccea3952c4"),
    (7, "627ce2d2655882237b03dfaedc85429957b0d5699be952ddbf9101b32c50ba07"),
    (16, "3fe0c5fb26aaa9723564324f6f6e18430d6a737aa3751cec92f4dee1b3369eb8"),
}
# LiteLLM's documented example key, refused by the proxy itself at boot.
_WELL_KNOWN = {"sk-1234"}


def is_published(value: str) -> bool:
    """True when `value` is, or contains, a credential printed in the old setup guide."""
    if value in _WELL_KNOWN:
        return True
    for length, digest in _PUBLISHED:
        for start in range(0, len(value) - length + 1):
            if hashlib.sha256(value[start : start + length].encode()).hexdigest() == digest:
                return True
    return False


def secrets_path(configured: str | None = None) -> Path:
    """$LITELLM_DEPLOY_SECRETS, else the inventory's `secrets_file` data, else ./secrets.env."""
    chosen = os.environ.get(SECRETS_ENV_VAR) or configured or DEFAULT_SECRETS_NAME
    return Path(chosen).expanduser().absolute()


def read_secrets(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    # interpolate=False: a password containing ${...} must survive as written.
    values = dotenv_values(path, interpolate=False)
    return {name: value for name, value in values.items() if value}


def duplicate_problems(path: Path) -> list[str]:
    """An entry written twice: python-dotenv would silently take the last one, which may not be the
    value the deployment runs with. Names only, with the line numbers of each."""

    if not path.exists():
        return []
    lines: dict[str, list[int]] = {}
    line = 1
    for binding in parse_stream(io.StringIO(path.read_text())):
        text = binding.original.string
        if binding.key is not None and not binding.error:
            lead = len(text) - len(text.lstrip("\n"))  # blank lines the parser hands to the entry
            lines.setdefault(binding.key, []).append(line + lead)
        line += text.count("\n")
    return [
        f"secrets file {path}: {name} is written {len(at)} times (lines {', '.join(map(str, at))}) — fix: keep "
        "the one the deployment uses and delete the others"
        for name, at in lines.items()
        if len(at) > 1
    ]


def loose_mode_problem(path: Path) -> str | None:
    if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        return f"secrets file {path}: readable by other users — fix: chmod 600 {path}"
    return None


def dotenv_line(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"\n'


def append_secrets(path: Path, additions: Mapping[str, str], origin: Mapping[str, str]) -> None:
    """Append new entries, keeping every existing line (and its comments) as the user wrote it."""
    if not additions:
        return
    existing = path.read_text() if path.exists() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    lines = [f"# {name}: {origin[name]}\n{dotenv_line(name, value)}" for name, value in additions.items()]
    write_private(path, existing + "".join(lines))


# --- master-key rotation: the pending key, and rewriting entries in place -------------------------

# The next master key while a rotation is in progress (or chosen in advance by the user). It becomes
# LITELLM_MASTER_KEY only once every gateway has it: see tasks/rotation/.
MASTER_KEY_NEXT = "LITELLM_MASTER_KEY_NEXT"


def new_master_key() -> str:
    """A fresh master key, made the same way as the first one (sk- + 32 random bytes)."""
    return _new_key()


def new_virtual_key() -> str:
    """A virtual key's value, made like a master key: LiteLLM takes it as given on /key/generate."""
    return _new_key()


def _split_lead(text: str) -> tuple[str, str]:
    """python-dotenv hands blank lines before an entry to that entry; keep them where they are."""
    body = text.lstrip("\n")
    return text[: len(text) - len(body)], body


def rewrite_secrets(path: Path, changes: Mapping[str, str | None], comments: Mapping[str, str] | None = None) -> None:
    """Set (a value) or remove (None) entries of the secrets file in place, in one atomic step.

    Every other line stays exactly as written (comments, order, the user's own quoting). A changed
    entry keeps its position; its comment line `# NAME: ...` right above it (the kind this package
    writes) is replaced by `comments[NAME]` when given, and removed with the entry. A new entry is
    appended. The new text is parsed back before it replaces the file, and the file is replaced with
    rename(2) from a 0600 file in the same directory, so a crash leaves the old file or the new one,
    never half of either, and the secrets are never on disk with looser permissions.
    """

    comments = dict(comments or {})
    text = path.read_text() if path.exists() else ""
    bindings = list(parse_stream(io.StringIO(text)))
    if "".join(b.original.string for b in bindings) != text:  # pragma: no cover - parser contract
        raise RuntimeError(f"{path}: cannot rewrite this file safely (the dotenv parser lost some text)")
    pieces = [b.original.string for b in bindings]
    done: set[str] = set()
    for index, binding in enumerate(bindings):
        name = binding.key
        if name is None or name not in changes:
            continue
        lead, _ = _split_lead(pieces[index])
        previous = index - 1
        ours = (
            previous >= 0
            and bindings[previous].key is None
            and not bindings[previous].error
            and _split_lead(pieces[previous])[1].startswith(f"# {name}:")
        )
        value = changes[name]
        if value is None or name in done:
            pieces[index] = lead
            if ours:
                pieces[previous] = _split_lead(pieces[previous])[0]
            continue
        if ours and name in comments:
            pieces[previous] = _split_lead(pieces[previous])[0] + f"# {name}: {comments[name]}\n"
        elif name in comments:
            lead += f"# {name}: {comments[name]}\n"
        pieces[index] = lead + dotenv_line(name, value)
        done.add(name)
    new_text = "".join(pieces)
    additions = [(name, value) for name, value in changes.items() if value is not None and name not in done]
    if additions and new_text and not new_text.endswith("\n"):
        new_text += "\n"
    for name, value in additions:
        if name in comments:
            new_text += f"# {name}: {comments[name]}\n"
        new_text += dotenv_line(name, value)

    # Parse what is about to be written: every change landed, nothing else moved.
    before = dotenv_values(stream=io.StringIO(text), interpolate=False)
    after = dotenv_values(stream=io.StringIO(new_text), interpolate=False)
    expected = {name: value for name, value in before.items() if name not in changes}
    expected.update({name: value for name, value in changes.items() if value is not None})
    if after != expected:  # pragma: no cover - a bug here must never reach the file
        raise RuntimeError(f"{path}: refusing to write a secrets file that would not read back as intended")

    write_private(path, new_text)


@dataclass(frozen=True)
class Secrets:
    """Values that only ever travel into the host's .env (virtual keys: into its virtual-keys.json).
    repr() never shows them."""

    values: Mapping[str, str] = field(repr=False)

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    @property
    def master_key(self) -> str:
        return self.values[MASTER_KEY]
