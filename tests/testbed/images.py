"""Images of the test bed: built here from Debian packages and PyPI, cached, rebuilt when a recipe changes.

Every image carries the label ``litellm-deploy.testbed=1`` and ``litellm-deploy.testbed.recipe=<hash>``,
the hash of its recipe files (and of the image it is built from). An image whose label matches is
reused; otherwise it is built again. Recipes live in ``tests/testbed/images/<name>/``.

    base      debootstrap --variant=minbase trixie, imported with `docker import`
    host      base + systemd (PID 1) + sshd + python3 + sudo        (test bed hosts)
    ollama    host + the Ollama API stand-in as ollama.service      (test bed Ollama nodes)
    postgres  PostgreSQL 17 from trixie, official image's contract  (for the deploy)
    caddy     Caddy, the release tls_image pins, official contract  (TLS fronts and load balancers)
    valkey    Valkey from trixie, official image's contract         (redis_hosts)
    litellm   litellm[proxy]==1.108.7 from PyPI, official contract, DB-backed through the
              query-engine stand-in (images/litellm/query-engine)  (for the deploy and upstreams)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors

from tests.testbed import caddy_release

LABEL = "litellm-deploy.testbed"
RECIPE_LABEL = "litellm-deploy.testbed.recipe"
REPO = "litellm-deploy-testbed"

HERE = Path(__file__).resolve().parent
RECIPES = HERE / "images"
CONTROLLER_CA = Path("/etc/ssl/certs/ca-certificates.crt")

LITELLM_VERSION = "1.108.7"
PROXY_EXTRAS_VERSION = "0.4.110"
# Prisma Client Python: litellm[proxy] does not install it; 0.15.0 expects the engine commit the
# query-engine stand-in runs (images/litellm/query-engine).
PRISMA_CLIENT_VERSION = "0.15.0"
POSTGRES_MAJOR = "17"

# What the deploy should use (the settings litellm_image / postgres_image).
LOCAL_LITELLM_IMAGE = f"{REPO}/litellm:{LITELLM_VERSION}"
LOCAL_POSTGRES_IMAGE = f"{REPO}/postgres:{POSTGRES_MAJOR}"
LOCAL_CADDY_IMAGE = f"{REPO}/caddy:{caddy_release.version()}"
LOCAL_VALKEY_IMAGE = f"{REPO}/valkey:trixie"
# The official images, when a registry is reachable (`--images official`).
OFFICIAL_LITELLM_IMAGE = f"ghcr.io/berriai/litellm-database:main-v{LITELLM_VERSION}"
OFFICIAL_POSTGRES_IMAGE = "postgres:16"
OFFICIAL_CADDY_IMAGE = f"caddy:{caddy_release.version()}"
OFFICIAL_VALKEY_IMAGE = "valkey/valkey:8.1"


# Every local image, and the deploy's images among them (the ones a host gets as an archive).
LOCAL_NAMES = ("host", "ollama", "postgres", "caddy", "valkey", "litellm")
DEPLOYED = ("litellm", "postgres", "caddy", "valkey")


class ImageError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[testbed] {msg}", file=sys.stderr, flush=True)


class Timer:
    """`with Timer("what"):` prints how long a stage took (to stderr)."""

    def __init__(self, what: str):
        self.what = what
        self.seconds = 0.0

    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.start
        log(f"{self.what}: {self.seconds:.1f}s{' (failed)' if exc[0] else ''}")
        return False


def _files_of(name: str) -> dict[str, bytes]:
    """The recipe directory's files, as build-context entries."""
    d = RECIPES / name
    out = {}
    for p in sorted(d.rglob("*")):
        # node_modules: a stand-in installed in place by hand is not part of its recipe.
        if p.is_file() and "__pycache__" not in p.parts and "node_modules" not in p.parts:
            out[str(p.relative_to(d))] = p.read_bytes()
    return out


def _digest(parts: dict[str, bytes], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for k in sorted(parts):
        h.update(k.encode() + b"\0" + hashlib.sha256(parts[k]).digest())
    return h.hexdigest()[:12]


def _context_tar(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            executable = name.endswith(".sh") or data[:4] == b"\x7fELF"  # scripts and release binaries
            info.mode = 0o755 if executable else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


class Images:
    """Builds (or reuses) the test bed's images on the local engine."""

    def __init__(self, client: docker.DockerClient | None = None, verbose: bool = False):
        self.client = client or docker.from_env(timeout=600)
        self.verbose = verbose
        self._refs: dict[str, str] = {}

    # -- helpers -------------------------------------------------------------------------------
    def _get(self, ref: str):
        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None

    def _current(self, ref: str, recipe: str) -> bool:
        img = self._get(ref)
        return img is not None and (img.labels or {}).get(RECIPE_LABEL) == recipe

    def prune(self) -> list[str]:
        """Remove the test bed's superseded images: untagged ones, and older tags of an image this
        object resolved (e.g. host:trixie-<old hash>). Images still used by a container stay (best effort)."""
        current = set(self._refs.values())
        repos = {ref.rsplit(":", 1)[0] for ref in current}
        removed = []
        for img in self.client.images.list(filters={"label": f"{LABEL}=1"}):
            if not img.tags:
                targets = [img.id]
            else:
                targets = [t for t in img.tags if t.rsplit(":", 1)[0] in repos and t not in current]
                if len(targets) != len(img.tags):
                    continue  # still tagged with something current, or not one of ours to judge
            for t in targets:
                try:
                    self.client.images.remove(t, noprune=False)
                    removed.append(t)
                except docker.errors.APIError:
                    pass  # in use by a container, or a parent of another image
        for r in removed:
            log(f"removed superseded image {r}")
        return removed

    def _build(self, ref: str, files: dict[str, bytes], recipe: str, buildargs: dict[str, str]) -> str:
        ctx = _context_tar(files)
        lines: list[str] = []
        image_id = None
        stream = self.client.api.build(
            fileobj=ctx,
            custom_context=True,
            tag=ref,
            buildargs=buildargs,
            labels={LABEL: "1", RECIPE_LABEL: recipe},
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                text = chunk["stream"]
                lines.append(text)
                if self.verbose:
                    sys.stderr.write(text)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "error" in chunk:
                tail = "".join(lines[-40:])
                raise ImageError(f"building {ref} failed: {chunk['error'].strip()}\n--- last output ---\n{tail}")
        if image_id is None and self._get(ref) is None:
            raise ImageError(f"building {ref} produced no image\n{''.join(lines[-40:])}")
        return ref

    # -- images --------------------------------------------------------------------------------
    def base(self) -> str:
        if "base" in self._refs:
            return self._refs["base"]
        files = _files_of("base")
        cfg = {}
        for line in files["recipe.env"].decode().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                cfg[k.strip()] = v.strip()
        recipe = _digest(files)
        ref = f"{REPO}/base:{cfg['SUITE']}-{recipe}"
        if not self._current(ref, recipe):
            if not shutil.which("debootstrap"):
                raise ImageError("debootstrap is not installed (apt-get install -y debootstrap)")
            with Timer(f"image {ref}: debootstrap + import"):
                tmp = Path(tempfile.mkdtemp(prefix="testbed-rootfs-", dir="/var/tmp"))
                try:
                    cmd = ["debootstrap", f"--variant={cfg.get('VARIANT', 'minbase')}"]
                    if cfg.get("INCLUDE"):
                        cmd.append(f"--include={cfg['INCLUDE']}")
                    cmd += [cfg["SUITE"], str(tmp / "root"), cfg["MIRROR"]]
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    if r.returncode != 0:
                        raise ImageError(f"debootstrap failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
                    root = tmp / "root"
                    # Image hygiene: no downloaded .debs, no apt lists, no host resolv.conf.
                    for p in (root / "var/cache/apt/archives").glob("*.deb"):
                        p.unlink()
                    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
                    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
                    tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
                    imp = subprocess.run(
                        [
                            "docker", "import",
                            "--change", f"LABEL {LABEL}=1",
                            "--change", f"LABEL {RECIPE_LABEL}={recipe}",
                            "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "--change", 'CMD ["/bin/bash"]',
                            "-", ref,
                        ],
                        stdin=tar.stdout, capture_output=True, text=True,
                    )
                    tar.stdout.close()
                    if tar.wait() != 0 or imp.returncode != 0:
                        raise ImageError(f"docker import failed: {imp.stderr}")
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        self._refs["base"] = ref
        return ref

    def _derived(self, name: str, parent: str, ref_for, extra_files: dict[str, bytes] | None = None,
                 buildargs: dict[str, str] | None = None, fetched=None) -> str:
        """`fetched()` gives context files that a build argument already names (a release binary):
        out of the recipe's hash, and fetched only when the image is built."""
        if name in self._refs:
            return self._refs[name]
        files = _files_of(name)
        files.update(extra_files or {})
        args = {"BASE": parent, **(buildargs or {})}
        # The controller's CA bundle is a machine detail, not part of the recipe.
        recipe = _digest({k: v for k, v in files.items() if k != "controller-ca.crt"}, json.dumps(args, sort_keys=True))
        ref = ref_for(recipe)
        if not self._current(ref, recipe):
            with Timer(f"image {ref}: build"):
                self._build(ref, {**files, **(fetched() if fetched else {})}, recipe, args)
        self._refs[name] = ref
        return ref

    def host(self) -> str:
        return self._derived("host", self.base(), lambda h: f"{REPO}/host:trixie-{h}")

    def ollama(self) -> str:
        standin = (HERE / "ollama_standin.py").read_bytes()
        return self._derived("ollama", self.host(), lambda h: f"{REPO}/ollama:trixie-{h}",
                             extra_files={"ollama_standin.py": standin})

    def postgres(self) -> str:
        return self._derived("postgres", self.base(), lambda h: LOCAL_POSTGRES_IMAGE)

    def caddy(self) -> str:
        return self._derived("caddy", self.base(), lambda h: LOCAL_CADDY_IMAGE,
                             buildargs={"CADDY_VERSION": caddy_release.version()},
                             fetched=lambda: {"caddy": caddy_release.binary().read_bytes()})

    def valkey(self) -> str:
        return self._derived("valkey", self.base(), lambda h: LOCAL_VALKEY_IMAGE)

    def litellm(self) -> str:
        script = RECIPES / "litellm" / "psql_migrate.py"
        if not script.is_file():
            raise ImageError(
                f"{script} is missing: the LiteLLM image copies it to /app/litellm/proxy/prisma_migration.py "
                "(the psql-based migration job). Add it, then build again."
            )
        if not CONTROLLER_CA.is_file():
            raise ImageError(f"{CONTROLLER_CA} is missing (pip inside the image needs the controller's CA bundle)")
        return self._derived(
            "litellm", self.base(), lambda h: LOCAL_LITELLM_IMAGE,
            extra_files={"controller-ca.crt": CONTROLLER_CA.read_bytes()},
            buildargs={"LITELLM_VERSION": LITELLM_VERSION, "PROXY_EXTRAS_VERSION": PROXY_EXTRAS_VERSION,
                       "PRISMA_CLIENT_VERSION": PRISMA_CLIENT_VERSION},
        )

    def all(self) -> dict[str, str]:
        return self.build(list(LOCAL_NAMES))

    def build(self, names: list[str]) -> dict[str, str]:
        """The named local images, each built where needed; once base exists, the independent ones at
        the same time: each build waits mostly on apt and pip downloads, and LiteLLM's alone takes minutes."""
        unknown = set(names) - set(LOCAL_NAMES)
        if unknown:
            raise ImageError(f"no local image named {', '.join(sorted(unknown))}")
        self.base()
        lines = []  # ollama is built from host, so the two are one line of work; the others need only base
        if "host" in names or "ollama" in names:
            lines.append(["host", "ollama"] if "ollama" in names else ["host"])
        lines += [[name] for name in ("postgres", "caddy", "valkey", "litellm") if name in names]

        def build_line(line: list[str]) -> dict[str, str]:
            # One client per thread: docker-py does not promise that a client may be shared.
            builder = Images(docker.from_env(timeout=600), verbose=self.verbose)
            builder._refs.update(self._refs)
            for name in line:
                getattr(builder, name)()
            return builder._refs

        with ThreadPoolExecutor(max_workers=max(1, len(lines))) as pool:
            for refs in pool.map(build_line, lines):
                self._refs.update(refs)
        return {name: self._refs[name] for name in names}

    # -- official images -----------------------------------------------------------------------
    def official(self) -> dict[str, str]:
        """The official images ($TESTBED_OFFICIAL_<NAME>_IMAGE overrides a reference, e.g.
        TESTBED_OFFICIAL_LITELLM_IMAGE), pulled; one that cannot be pulled but is already present (e.g.
        `docker load`ed) is used as it is. Raises ImageError when neither (as on a machine without a registry)."""
        defaults = {"litellm": OFFICIAL_LITELLM_IMAGE, "postgres": OFFICIAL_POSTGRES_IMAGE,
                    "caddy": OFFICIAL_CADDY_IMAGE, "valkey": OFFICIAL_VALKEY_IMAGE}
        refs = {key: os.environ.get(f"TESTBED_OFFICIAL_{key.upper()}_IMAGE") or ref for key, ref in defaults.items()}
        for key, ref in refs.items():
            if f"official-{key}" in self._refs:
                continue
            try:
                with Timer(f"pull {ref}"):
                    self.client.images.pull(ref)
            except docker.errors.APIError as e:
                if self._get(ref) is None:
                    raise ImageError(f"cannot pull the official image {ref}: {e.explanation or e}") from e
                log(f"warning: cannot pull {ref}; using the copy already present")
            self._refs[f"official-{key}"] = ref
        return dict(refs)

    # -- archives for the air-gapped path ------------------------------------------------------
    def archive(self, ref: str, out_dir: Path) -> Path:
        """`docker save REF | gzip -1` into out_dir, cached by image id. Returns the archive path."""
        img = self._get(ref)
        if img is None:
            raise ImageError(f"no image {ref}")
        short = img.id.split(":", 1)[-1][:12]
        safe = ref.replace("/", "_").replace(":", "_")
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{safe}-{short}.tar.gz"
        if path.is_file():
            return path
        for stale in out_dir.glob(f"{safe}-*.tar.gz"):
            stale.unlink()
        with Timer(f"archive {ref} -> {path.name}"):
            tmp = path.with_suffix(".part")
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                # The low-level API keeps the tag in the archive (docker load then restores REF).
                resp = self.client.api.get_image(ref)
                for chunk in resp:
                    gz.write(chunk)
            os.replace(tmp, path)
        return path
