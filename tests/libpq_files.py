"""libpq's service and password files for a DATABASE_URL, written the way a gateway host has them.

Tests of every tier reach an external database the way the deploy does: through the files
tasks/config/pgservice.py renders (0600), never a password in an argument or an environment variable.
"""

from __future__ import annotations

from pathlib import Path

from tasks.config import pgservice


def write_libpq_files(directory: Path, url: str) -> dict[str, str]:
    """Both files in `directory` (0600); returns the environment a local libpq client needs to use them."""
    paths = {}
    for name, text in ((pgservice.SERVICE_FILE, pgservice.service_file(url)),
                       (pgservice.PASSWORD_FILE, pgservice.password_file(url))):
        paths[name] = directory / name
        paths[name].write_text(text)
        paths[name].chmod(0o600)
    return {"PGSERVICEFILE": str(paths[pgservice.SERVICE_FILE]), "PGPASSFILE": str(paths[pgservice.PASSWORD_FILE]),
            "PGSERVICE": pgservice.SERVICE}
