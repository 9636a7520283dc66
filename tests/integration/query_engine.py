"""The test bed's query-engine stand-in, set up on the controller so its own tier can drive it.

The same files the LiteLLM test image installs (tests/testbed/images/litellm/query-engine: the Node
program and its lockfile) are installed into the virtualenv, and Prisma Client Python is generated
for LiteLLM's real schema.prisma against them, as the image's build does. The tier then talks to a
real PostgreSQL through Prisma Client Python -> stand-in -> Prisma's wasm query engine -> pg.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STANDIN_SOURCE = REPO / "tests" / "testbed" / "images" / "litellm" / "query-engine"
VENV = Path(sys.prefix)
NPM_TIMEOUT = 300  # seconds for `npm ci` (a few seconds with npm's cache, a minute without)


class StandinUnavailable(RuntimeError):
    pass


def _source_files() -> list[Path]:
    return sorted(p for p in STANDIN_SOURCE.iterdir() if p.is_file())


def install_standin() -> Path:
    """The stand-in with its pinned npm dependencies, in the virtualenv; reinstalled when its files change."""
    if not shutil.which("node") or not shutil.which("npm"):
        raise StandinUnavailable("node and npm are needed for the query-engine stand-in (Debian: nodejs npm)")
    digest = hashlib.sha256()
    for p in _source_files():
        digest.update(p.name.encode() + b"\0" + p.read_bytes())
    target = VENV / f"query-engine-standin-{digest.hexdigest()[:12]}"
    if (target / "node_modules" / ".package-lock.json").is_file():
        return target
    for stale in VENV.glob("query-engine-standin-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = target.with_name(target.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for p in _source_files():
        shutil.copy2(p, partial / p.name)
    r = subprocess.run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"], cwd=partial,
                       capture_output=True, text=True, timeout=NPM_TIMEOUT)
    if r.returncode != 0:
        raise StandinUnavailable(f"npm ci for the query-engine stand-in failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    partial.rename(target)
    return target


def engine_environment(standin: Path) -> dict[str, str]:
    """What the LiteLLM test image sets for Prisma (its Dockerfile), for this machine."""
    return {
        "PRISMA_QUERY_ENGINE_BINARY": str(standin / "query-engine"),
        "PRISMA_SCHEMA_ENGINE_BINARY": str(standin / "schema-engine"),
        "PRISMA_HOME_DIR": str(VENV / "prisma-home"),
        "PRISMA_HIDE_UPDATE_MESSAGE": "1",
        "CHECKPOINT_DISABLE": "1",
    }


def litellm_schema() -> Path:
    import litellm.proxy

    return Path(litellm.proxy.__file__).parent / "schema.prisma"


def generate_client(standin: Path) -> None:
    """`prisma generate` for LiteLLM's schema.prisma (into the virtualenv's `prisma` package)."""
    env = {**os.environ, **engine_environment(standin), "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([str(VENV / "bin" / "prisma"), "generate", "--schema", str(litellm_schema())],
                       env=env, capture_output=True, text=True, timeout=NPM_TIMEOUT)
    if r.returncode != 0:
        raise StandinUnavailable(f"prisma generate failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    # An earlier test in this process may have imported the package before it was generated (LiteLLM's
    # proxy modules import it): drop that copy, so the next import reads the generated client.
    for name in [n for n in sys.modules if n == "prisma" or n.startswith("prisma.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
