"""tasks/config/private_files.py: the one way the controller writes a file that holds a secret."""

from __future__ import annotations

import os
import stat

import pytest

from tasks.config import private_files
from tasks.config.private_files import write_private


def test_written_whole_with_its_mode_whatever_the_umask(tmp_path):
    path = tmp_path / "deeper" / "secrets.env"
    old = os.umask(0)
    try:
        write_private(path, "A=1\n")
        write_private(path, b"B=2\n", mode=0o640)
    finally:
        os.umask(old)
    assert path.read_text() == "B=2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(path.parent) == ["secrets.env"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "secrets.env"
    write_private(path, "OLD=1\n")

    def broken(fd, data):
        raise OSError("disk full")

    monkeypatch.setattr(private_files, "_write_all", broken)
    with pytest.raises(OSError, match="disk full"):
        write_private(path, "NEW=1\n")
    assert path.read_text() == "OLD=1\n"
    assert os.listdir(tmp_path) == ["secrets.env"]


def test_the_temporary_is_never_readable_by_others(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def watching(source, target):
        seen.append(stat.S_IMODE(os.stat(source).st_mode))
        real_replace(source, target)

    monkeypatch.setattr(private_files.os, "replace", watching)
    old = os.umask(0)
    try:
        write_private(tmp_path / "ca.key", b"k" * 3_000_000)
    finally:
        os.umask(old)
    assert seen == [0o600]
    assert (tmp_path / "ca.key").stat().st_size == 3_000_000
