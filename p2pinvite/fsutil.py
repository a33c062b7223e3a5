"""Durable, private file operations shared by every layer that stores state.

All state lives under the daemon home: directories 0700, files 0600. A file
is replaced atomically (write a temporary file in the same directory, fsync
it, rename over the target, fsync the directory) so a crash leaves either the
old or the new content, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from .errors import StorageError

__all__ = [
    "atomic_write",
    "check_private_file",
    "ensure_private_dir",
    "fsync_dir",
    "pwrite_all",
    "read_private",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """Create *path* (and parents) as 0700 if missing; refuse one others can read or write."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError(f"{path} is not a directory")
    if st.st_mode & 0o077:
        raise StorageError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            "expected 0700"
        )
    return path


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or a new file inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of *data* at *offset* of *fd* (``pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def atomic_write(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace *path* with *data* atomically and durably (temp + fsync + rename + dir fsync)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        pwrite_all(fd, data, 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def check_private_file(path: Path) -> None:
    """Raise StorageError unless *path* is a regular file readable by its owner only."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StorageError(f"{path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise StorageError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            "expected 0600"
        )


def read_private(path: Path, *, max_size: int = 1 << 20) -> bytes:
    """Read a 0600 file of at most *max_size* bytes, checking its permissions first."""
    check_private_file(path)
    with path.open("rb") as f:
        data = f.read(max_size + 1)
    if len(data) > max_size:
        raise StorageError(f"{path} is larger than {max_size} bytes")
    return data
