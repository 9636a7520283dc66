"""An image archive is hashed and uploaded again unless nothing can have changed (tasks.lib.images.archive_uploaded):
a no-op run then skips hashing it on both ends, the largest part of its time."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from tasks.lib import images
from tasks.lib.compose import ImageId

IMAGES = ("litellm:pinned", "postgres:17")


class FakeHost:
    def __init__(self, remote: dict | None, loaded: set[str]):
        self.remote, self.loaded, self.noops = remote, loaded, []

    def get_fact(self, fact, **kwargs):
        if fact is ImageId:
            return "sha256:abc" if kwargs["image"] in self.loaded else None
        return self.remote

    def noop(self, message: str) -> None:
        self.noops.append(message)


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "litellm.tar.gz"
    path.write_bytes(b"x" * 1000)
    stamp = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()
    os.utime(path, (stamp, stamp))
    return path


def uploaded_at(when: datetime, size: int = 1000, mode: int = 600) -> dict:
    return {"size": size, "mode": mode, "mtime": when.replace(tzinfo=None)}


LATER = datetime(2026, 12, 2, tzinfo=timezone.utc)


def planned(monkeypatch, archive, remote, loaded=set(IMAGES)) -> tuple[FakeHost, bool]:
    """(the host, whether the body went on to files.put)."""
    fake = FakeHost(remote, loaded)
    monkeypatch.setattr(images, "host", fake)
    called = []
    monkeypatch.setattr(images.files.put, "_inner", lambda **kwargs: iter(called.append(kwargs) or ()))
    list(images.archive_uploaded._inner(src=str(archive), dest="/opt/litellm/images/a.tar.gz", images=IMAGES))  # noqa: SLF001
    return fake, bool(called)


def test_nothing_changed_skips_the_hashing(monkeypatch, archive):
    fake, put = planned(monkeypatch, archive, uploaded_at(LATER))
    assert not put and fake.noops


@pytest.mark.parametrize("remote, loaded, why", [
    (None, set(IMAGES), "not on the host"),
    (uploaded_at(LATER, size=999), set(IMAGES), "cut short"),
    (uploaded_at(LATER, mode=644), set(IMAGES), "readable by others"),
    (uploaded_at(datetime(2026, 11, 30, tzinfo=timezone.utc)), set(IMAGES), "the archive was rebuilt since"),
    (uploaded_at(LATER), {"postgres:17"}, "an image is not loaded (a new tag)"),
])
def test_anything_that_may_differ_goes_to_files_put(monkeypatch, archive, remote, loaded, why):
    fake, put = planned(monkeypatch, archive, remote, loaded)
    assert put and not fake.noops, why


def test_an_upload_in_the_archives_last_second_counts_as_after_it(monkeypatch, archive):
    same_second = datetime.fromtimestamp(int(archive.stat().st_mtime), timezone.utc)
    assert not planned(monkeypatch, archive, uploaded_at(same_second))[1]
    assert planned(monkeypatch, archive, uploaded_at(same_second - timedelta(seconds=1)))[1]
