"""Container images on a host, the image stage of every compose project (gateway, load balancer, db
and redis hosts): pulled when missing, or their archives uploaded and loaded (air-gapped hosts), and
checked, so nothing later meets a missing image halfway. Each returns the operations a service's start
depends on."""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timezone
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.operations import files

from tasks.lib import compose


# Said by every image failure: it happens before anything of a running gateway is touched.
UNTOUCHED = "the running gateway was not touched"


def image_check(image: str, field: str, problem: str, fix: str) -> str:
    """The command that fails the host, naming the image, its setting and the fix, unless the image is
    on the host now (after a pull or a load): nothing later may meet a missing image halfway."""
    message = f"{problem} {image} ({field}): {fix}; {UNTOUCHED}"
    return (
        f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)} >/dev/null 2>&1 || "
        f"{{ echo {shlex.quote(message)} >&2; exit 1; }}"
    )


PULL_FIX = "check the tag, and that this host reaches the registry (its error is above)"
ARCHIVE_FIX = "check the tag, or add the archive holding it to image_archives"


@operation()
def image_present(image: str, field: str):
    """Pull a pinned image only when it is not on the host yet; a failed pull fails the host naming it."""
    if host.get_fact(compose.ImageId, image=image):
        host.noop(f"{image} is present")
        return
    # One command: a failed pull's own error and the check's message that names the setting fail it together.
    yield f"docker pull --quiet {shlex.quote(image)}; {image_check(image, field, 'could not pull', PULL_FIX)}"


@operation()
def archives_loaded(uploads: dict[str, OperationMeta], images: dict[str, str]):
    """`docker load` the uploaded archives that are new, or all of them when an image is missing;
    then insist every image the project needs is there."""
    missing = {field: image for field, image in images.items() if not host.get_fact(compose.ImageId, image=image)}
    to_load = list(uploads) if missing else [path for path, meta in uploads.items() if compose.changed([meta])]
    if not to_load:
        host.noop(f"{len(images)} image(s) loaded from {len(uploads)} archive(s)")
        return
    yield archives_load_command(to_load)
    for field, image in missing.items():
        # Fail here, naming the image, rather than later with a confusing compose error.
        yield image_check(image, field, "none of the image archives contains", ARCHIVE_FIX)


@operation()
def archive_uploaded(src: str, dest: str, images: tuple[str, ...]):
    """files.put of an image archive (0600), which hashes it on both ends, over a second each for a LiteLLM
    archive and the largest part of a no-op run; skipped when nothing can have changed: every image the
    project needs is loaded, and the host's copy has the local file's size and mode and is newer than it
    (a rebuilt archive is newer; a skewed clock only costs the hashing)."""
    remote = host.get_fact(File, path=dest)
    local = os.stat(src)
    local_mtime = datetime.fromtimestamp(int(local.st_mtime), timezone.utc).replace(tzinfo=None)
    if (
        remote
        and remote["size"] == local.st_size
        and remote["mode"] == 600
        and remote["mtime"] is not None
        and remote["mtime"] >= local_mtime
        and all(host.get_fact(compose.ImageId, image=image) for image in images)
    ):
        host.noop(f"{dest}: uploaded after the archive last changed, and its images are loaded")
        return
    yield from files.put._inner(src=src, dest=dest, mode="600")  # noqa: SLF001 (an operation's body, inside ours)


def archives_load_command(archives: list[str]) -> str:
    """One `docker load` per archive, all at once, failing if any fails. A load is one process bound by
    decompression and layer extraction: the usual two archives (LiteLLM, Postgres) load side by side in
    the time of the larger (31 s instead of 43 s, measured on a test bed host)."""
    loads = " ".join(f'docker load --input {shlex.quote(a)} & pids="$pids $!";' for a in archives)
    return f'pids=""; {loads} status=0; for pid in $pids; do wait "$pid" || status=1; done; exit $status'


def remote_archive(archive_dir: str, archive: str) -> str:
    """Where an image archive of the controller is uploaded on the host."""
    return f"{archive_dir}/{Path(archive).name}"


def images_on_host(image_source: str, image_archives, archive_dir: str, images: dict[str, str]) -> list:
    """The image stage of every compose project (gateway, load balancer, db and redis host): `images`
    ({setting: image}) on the host and checked, pulled when missing or loaded from the uploaded
    archives. Returns the operations a service's start depends on."""
    if image_source == "pull":
        return [image_present(name=f"Image {image}", image=image, field=field) for field, image in images.items()]
    files.directory(name=f"Image archive directory {archive_dir}", path=archive_dir, mode="700")
    uploads = {}
    for archive in image_archives:
        remote = remote_archive(archive_dir, archive)
        uploads[remote] = archive_uploaded(
            name=f"Upload image archive {Path(archive).name}", src=archive, dest=remote, images=tuple(images.values())
        )
    return [archives_loaded(name="Load images from the archives", uploads=uploads, images=images)]
