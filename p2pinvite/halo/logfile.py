"""The bytes of a log file and of its checkpoint (docs/PROTOCOL.md Part 9).

Pure format and file primitives, no state: the 16-byte header, record
framing (``length | body CRC | header CRC`` + ``id || credential``), scanning a
file image with torn-tail classification, the checkpoint file, and the few
system calls the log makes (lock, atomic creation, write + fdatasync). The
log itself (halo/log.py) decides what to write and when.

Torn or corrupt
    Scanning checks each record's header CRC, length and body CRC. The first
    record that fails at offset X is a *torn tail* -- what a crash mid-write
    leaves, removed on open -- only if nothing after it is a valid record and
    fewer than one commit's bytes follow (:data:`MAX_COMMIT_BYTES`); anything
    else is :class:`~p2pinvite.errors.LogCorrupted`. A header whose CRC holds
    but whose length is out of range is corrupt: a crash does not write one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack

from .. import fsutil, wire
from ..errors import (
    DecodeError,
    LocalProtocolError,
    LogCorrupted,
    P2PInviteError,
    StorageError,
)
from .credentials import MAX_CREDENTIAL_SIZE, decode_credential
from .dag import Dag
from .resolve import MAX_ENTRIES

__all__ = [
    "CHECKPOINT_MAGIC",
    "CHECKPOINT_SUFFIX",
    "DEFAULT_CHECKPOINT_EVERY",
    "FORMAT_VERSION",
    "HEADER_LEN",
    "ID_SIZE",
    "LOG_MAGIC",
    "MAX_BODY",
    "MAX_CHECKPOINT",
    "MAX_COMMIT_BYTES",
    "MAX_CREDENTIAL",
    "MIN_BODY",
    "READ_CHUNK",
    "REC",
    "REC_LEN",
    "Checkpoint",
    "LogLocked",
    "checkpoint_path",
    "commit",
    "file_header",
    "frame_record",
    "load_checkpoint",
    "locate_mismatch",
    "lock",
    "offsets_bytes",
    "offsets_from",
    "open_fd",
    "pread_exact",
    "publish_new",
    "remove_checkpoint",
    "remove_stale_temps",
    "scan_records",
    "sync",
    "valid_record_at",
]

_log = logging.getLogger(__name__)

#: First 8 bytes of every log file.
LOG_MAGIC: Final = b"\x89p2plog\n"
#: Version of the file format described in docs/PROTOCOL.md Part 9.
FORMAT_VERSION: Final = 2
#: First 8 bytes of every checkpoint file.
CHECKPOINT_MAGIC: Final = b"\x89p2pckp\n"
#: The checkpoint of ``x.log`` is ``x.log.checkpoint``.
CHECKPOINT_SUFFIX: Final = ".checkpoint"
#: Entries between automatic checkpoints (at least; see ``_checkpoint_gap``).
DEFAULT_CHECKPOINT_EVERY: Final = 1024
#: Size of an entry id (BLAKE2b-256 of the credential with its chain emptied).
ID_SIZE: Final = 32
#: Largest credential in a record.
MAX_CREDENTIAL: Final = MAX_CREDENTIAL_SIZE
#: Largest record body: the id and the credential.
MAX_BODY: Final = ID_SIZE + MAX_CREDENTIAL
#: Upper bound on the bytes one commit (one pwrite, one fdatasync) writes. A
#: torn tail is never longer than one commit, so damage spanning more than
#: this (plus one record) is corruption. ``SpaceLog`` never queues a larger group.
MAX_COMMIT_BYTES: Final = 4 << 20
#: Largest checkpoint file.
MAX_CHECKPOINT: Final = 1 << 31

_FILE_HEADER: Final = struct.Struct(">8sHHI")  # magic, version, flags, crc32(first 12 bytes)
REC: Final = struct.Struct(">III")  # body length, crc32(body), crc32(first 8 bytes)
_REC8: Final = struct.Struct(">II")
_CKPT_HEADER: Final = struct.Struct(">8sHHII")  # magic, version, flags, payload len, crc32
HEADER_LEN: Final = _FILE_HEADER.size
REC_LEN: Final = REC.size
MIN_BODY: Final = ID_SIZE + 1
_TORN_LIMIT: Final = MAX_COMMIT_BYTES + REC_LEN + MAX_BODY
READ_CHUNK: Final = 8 << 20


def file_header() -> bytes:
    """The 16-byte header of a version-2 log file."""
    head = LOG_MAGIC + FORMAT_VERSION.to_bytes(2, "big") + b"\x00\x00"
    return head + zlib.crc32(head).to_bytes(4, "big")


def frame_record(body: bytes) -> bytes:
    """A record as stored: ``length | crc32(body) | crc32(those 8 bytes)`` + body."""
    if not MIN_BODY <= len(body) <= MAX_BODY:
        raise LocalProtocolError("record body size out of range")
    head = _REC8.pack(len(body), zlib.crc32(body))
    return head + zlib.crc32(head).to_bytes(4, "big") + body


class LogLocked(StorageError):
    """Another process (or another SpaceLog in this one) has the log open."""



# ---------------------------------------------------------------------------
# Scanning a file image (pure)


def valid_record_at(data: bytes | memoryview, p: int) -> bool:
    n = len(data)
    if n - p < REC_LEN:
        return False
    length, bcrc, hcrc = REC.unpack_from(data, p)
    if zlib.crc32(data[p : p + 8]) != hcrc or not MIN_BODY <= length <= MAX_BODY:
        return False
    end = p + REC_LEN + length
    return end <= n and zlib.crc32(data[p + REC_LEN : end]) == int(bcrc)


def _damage(data: bytes, base: int, bad: int, resume: int, what: str) -> None:
    """Decide whether damage at *bad* is a torn tail; raise LogCorrupted if it is not.

    A crash can only tear the last commit, so the damage is a torn tail only if
    nothing after it is a valid record and it is no longer than one commit.
    *data* is the file image from offset *base*.
    """
    if len(data) - bad > _TORN_LIMIT:
        raise LogCorrupted(f"{what}, and too much data follows to be a torn tail",
                           offset=base + bad)
    for p in range(resume, len(data) - REC_LEN + 1):
        if valid_record_at(data, p):
            raise LogCorrupted(f"{what}, followed by a valid record at offset {base + p}",
                               offset=base + bad)


def scan_records(data: bytes, base: int) -> tuple[list[tuple[int, bytes]], int]:
    """The framed records of *data* (the file from offset *base*) and where they end.

    Returns ``[(file offset, body)]`` and the end offset of the last valid
    record; bytes after it are a torn tail. Raises LogCorrupted for damage
    that is not a torn tail (see :func:`_damage`) and for a header whose
    CRC holds but whose length is out of range.
    """
    out: list[tuple[int, bytes]] = []
    n, off = len(data), 0
    crc32, unpack_from = zlib.crc32, REC.unpack_from
    while off < n:
        if n - off < REC_LEN:
            break
        length, bcrc, hcrc = unpack_from(data, off)
        if crc32(data[off : off + 8]) != hcrc:
            _damage(data, base, off, off + 1, "record header checksum mismatch")
            break
        if not MIN_BODY <= length <= MAX_BODY:
            raise LogCorrupted(f"record length {length} out of range", offset=base + off)
        end = off + REC_LEN + length
        if end > n:
            break  # a valid header whose body was never fully written
        body = data[off + REC_LEN : end]
        if crc32(body) != bcrc:
            _damage(data, base, off, end, "record body checksum mismatch")
            break
        out.append((base + off, body))
        off = end
    return out, base + off


# ---------------------------------------------------------------------------
# Checkpoint file


@dataclass(frozen=True, slots=True)
class Checkpoint:
    count: int  # entries covered: positions 0 .. count-1
    offset: int  # file offset just after the last covered record
    digest: bytes  # BLAKE2b-256 of the file bytes [0, offset)
    offsets: bytes = field(repr=False)  # u64 LE per covered record
    resolver: dict[str, Any] = field(repr=False)  # Resolver.snapshot_fields()

    def encode(self) -> bytes:
        payload = wire.pack({
            "count": self.count, "offset": self.offset, "digest": self.digest,
            "offsets": self.offsets, "resolver": self.resolver,
        })
        head = _CKPT_HEADER.pack(CHECKPOINT_MAGIC, FORMAT_VERSION, 0, len(payload),
                                 zlib.crc32(payload))
        return head + payload

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        if len(data) < _CKPT_HEADER.size:
            raise DecodeError("checkpoint shorter than its header")
        magic, version, flags, size, crc = _CKPT_HEADER.unpack_from(data)
        if magic != CHECKPOINT_MAGIC or version != FORMAT_VERSION or flags != 0:
            raise DecodeError("not a version-2 checkpoint")
        payload = data[_CKPT_HEADER.size :]
        if len(payload) != size or zlib.crc32(payload) != crc:
            raise DecodeError("checkpoint checksum mismatch")
        # One call, no intermediate buffer: the columns are megabytes.
        try:
            m = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True,
                                ext_hook=_refuse_ext, max_str_len=MAX_CHECKPOINT,
                                max_bin_len=MAX_CHECKPOINT, max_array_len=1 << 24,
                                max_map_len=64, max_ext_len=0)
        except Exception as exc:
            raise DecodeError(f"checkpoint payload: {type(exc).__name__}") from None
        m = wire.expect_map(m)
        if set(m) != {"count", "offset", "digest", "offsets", "resolver"}:
            raise DecodeError("checkpoint fields")
        resolver = m["resolver"]
        if not isinstance(resolver, dict):
            raise DecodeError("checkpoint resolver")
        count = wire.expect_int(m, "count", lo=1, hi=MAX_ENTRIES)
        return cls(
            count=count,
            offset=wire.expect_int(m, "offset", lo=HEADER_LEN + REC_LEN + MIN_BODY),
            digest=wire.expect_bytes(m, "digest", size=32),
            offsets=wire.expect_bytes(m, "offsets", size=8 * count),
            resolver=resolver,
        )


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKPOINT_SUFFIX)


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint of *path*, or None if missing or damaged (damage is logged).

    It is written atomically, so damage means a disk fault: the log itself is
    still authoritative and opening falls back to verifying it. Wrong
    permissions are not damage: they raise StorageError.
    """
    cp = checkpoint_path(path)
    if not cp.exists():
        return None
    fsutil.check_private_file(cp)
    with cp.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_CHECKPOINT + _CKPT_HEADER.size:
            _log.warning("ignoring oversized checkpoint %s", cp)
            return None
        data = f.read(size)  # sized: no buffer of the largest size up front
    try:
        return Checkpoint.decode(data)
    except DecodeError as exc:
        _log.warning("ignoring damaged checkpoint %s: %s", cp, exc)
        return None


def offsets_from(data: bytes) -> array[int]:
    a = array("Q")
    a.frombytes(data)
    if _BIG_ENDIAN:  # pragma: no cover
        a.byteswap()
    return a


def offsets_bytes(a: array[int], count: int) -> bytes:
    part = a[:count]
    if _BIG_ENDIAN:  # pragma: no cover
        part.byteswap()
    return part.tobytes()


_BIG_ENDIAN: Final = array("I", [1]).tobytes()[0] == 0


def remove_stale_temps(path: Path) -> None:
    """Remove temporary files a crash left behind (the caller holds the log's lock)."""
    for pattern in (f".{path.name}{CHECKPOINT_SUFFIX}.*.tmp", f".{path.name}.*.new.tmp"):
        for tmp in path.parent.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def remove_checkpoint(path: Path) -> None:
    """Remove a checkpoint left by an earlier log at *path* before a new log appears."""
    cp = checkpoint_path(path)
    if cp.exists():
        cp.unlink()
        fsutil.fsync_dir(path.parent)


# ---------------------------------------------------------------------------
# File primitives (module level so tests can inject failures)


def sync(fd: int) -> None:
    os.fdatasync(fd)


def lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LogLocked(f"{path} is open elsewhere") from None
        raise StorageError(f"cannot lock {path}: {exc.strerror}") from None


def publish_new(path: Path, data: bytes) -> None:
    """Create *path* with *data*, atomically and without replacing an existing file.

    Written to a temporary file and fsynced, then hard-linked into place (link,
    unlike rename, fails if the target exists), then the directory is fsynced:
    a crash leaves either no log or the whole file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, fsutil.FILE_MODE)
    try:
        try:
            fsutil.pwrite_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsutil.fsync_dir(path.parent)


def open_fd(path: Path) -> int:
    fsutil.check_private_file(path)
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise StorageError(f"cannot open {path}: {exc.strerror}") from None


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = os.pread(fd, min(size - got, 1 << 30), offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def commit(fd: int, data: bytes, offset: int, path: Path, ckpt: Checkpoint | None) -> bool:
    """Worker-thread half of a commit: write and sync the batch, then maybe checkpoint.

    Raises (poisoning the log) if the batch cannot be made durable; a failed
    checkpoint is only logged, as the previous one stays valid.
    """
    fsutil.pwrite_all(fd, data, offset)
    sync(fd)
    if ckpt is None:
        return False
    try:
        fsutil.atomic_write(checkpoint_path(path), ckpt.encode())
    except OSError as exc:
        _log.warning("%s: could not write checkpoint: %s", path, exc)
        return False
    return True



def locate_mismatch(fd: int, ckpt: Checkpoint) -> None:
    """The file does not hold the prefix the checkpoint vouches for: raise LogCorrupted
    at the first record that differs from what the checkpoint recorded (slow path)."""
    data = pread_exact(fd, ckpt.offset, 0)  # shorter if the file was truncated
    first = HEADER_LEN
    if data[:HEADER_LEN] != file_header():
        raise LogCorrupted("the file header changed", offset=0)
    try:
        ids = Dag.restore(ckpt.resolver["dag"]).ids
    except (P2PInviteError, KeyError, TypeError):
        ids = []
    offsets = offsets_from(ckpt.offsets)
    off, i = HEADER_LEN, 0
    while off < ckpt.offset:
        if i >= len(offsets) or offsets[i] != off or not valid_record_at(data, off):
            raise LogCorrupted("a record the checkpoint vouches for is damaged", offset=off)
        length = REC.unpack_from(data, off)[0]
        body = data[off + REC_LEN : off + REC_LEN + length]
        try:
            same = decode_credential(body[ID_SIZE:]).id == body[:ID_SIZE]
        except DecodeError:
            same = False
        if not same or (i < len(ids) and ids[i] != body[:ID_SIZE]):
            raise LogCorrupted("a record the checkpoint vouches for was changed", offset=off)
        off += REC_LEN + length
        i += 1
    raise LogCorrupted("the file does not match its checkpoint", offset=first)
