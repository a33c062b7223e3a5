"""fsutil: private directories and files, atomic durable replacement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pinvite import fsutil
from p2pinvite.errors import StorageError


def test_ensure_private_dir_creates_0700(tmp_path: Path) -> None:
    d = fsutil.ensure_private_dir(tmp_path / "a" / "home")
    assert d.stat().st_mode & 0o777 == 0o700


def test_ensure_private_dir_refuses_group_readable(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    with pytest.raises(StorageError, match="0700"):
        fsutil.ensure_private_dir(d)


def test_atomic_write_replaces_content_with_0600(tmp_path: Path) -> None:
    p = tmp_path / "f"
    fsutil.atomic_write(p, b"one")
    fsutil.atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    assert p.stat().st_mode & 0o777 == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["f"]  # no temp file left behind


def test_read_private_checks_mode_and_size(tmp_path: Path) -> None:
    p = tmp_path / "k"
    fsutil.atomic_write(p, b"x" * 10)
    assert fsutil.read_private(p) == b"x" * 10
    with pytest.raises(StorageError, match="larger"):
        fsutil.read_private(p, max_size=5)
    os.chmod(p, 0o644)
    with pytest.raises(StorageError, match="0600"):
        fsutil.read_private(p)
    with pytest.raises(StorageError, match="does not exist"):
        fsutil.read_private(tmp_path / "missing")
