"""The space log: one local, append-only, hash-chained, crash-safe file per space.

docs/PROTOCOL.md Part 9 is the normative description of the bytes; this is the
theory of operation.

File and records
    A 16-byte header (magic, format version, CRC) is followed by records. Each
    record is framed as ``length | body CRC | header CRC`` (three big-endian
    u32) and a body: the canonical msgpack map ``{seq, prev_hash, credential}``.
    An entry's hash is BLAKE2b-256 of its body; ``prev_hash`` of seq 0 is 32
    zero bytes, of seq n the hash of entry n-1. The header CRC makes the length
    trustworthy on its own, which is what lets recovery tell a torn tail from
    damage in the middle.

Appending (group commit)
    ``append`` checks the credential against the validator and applies it in one
    synchronous section: no ``await`` between ``check`` and ``apply``, so under
    trio nothing else can interleave -- that section *is* the admission lock, and
    of two racing redemptions of a single-use invitation the second is checked
    against a state that already holds the first. The record is queued and the
    caller then waits, shielded from cancellation, until its record is fsynced.
    The first waiter that finds no commit running becomes the leader: it takes
    every queued record, writes them with one ``pwrite`` and one ``fdatasync``
    in a worker thread (the event loop keeps admitting more records meanwhile),
    then wakes everyone; records queued during that fsync go in the next batch.

    State is applied *before* the record is durable (otherwise two concurrent
    admissions could both pass ``check``). The price: if a write or fsync fails,
    the state holds records the file may not. The log is then *poisoned*: every
    waiting and later ``append`` raises :class:`LogPoisoned`, the unacknowledged
    bytes are truncated away (best effort), and the caller must close the log
    and reopen it, which rebuilds the state from what is on disk. A record is
    never acknowledged before its fsync returned.

Opening
    Every record's framing, CRCs, seq and hash-chain link are checked. A damaged
    record with nothing valid after it is a torn tail (a crash mid-write): it is
    truncated. Anything else -- damage followed by valid records, a bad chain
    link, a wrong seq, a record the validator refuses, damage inside the range a
    checkpoint vouches for -- raises :class:`~p2pinvite.errors.LogCorrupted`.

    A checkpoint file (``<log>.checkpoint``, written atomically every
    ``checkpoint_every`` entries and on close) holds the entry count, the file
    offset and head hash at that point, and ``validator.snapshot()``. Opening
    restores the snapshot instead of replaying the anchored prefix, and checks
    the records after it with signature verification. Without a usable
    checkpoint every record is replayed through the rules; the hash chain vouches
    for each record that has a successor (``verify_signatures=False``) and the
    last record's signature is verified. ``full_verify=True`` ignores the
    checkpoint and verifies every signature: the mode for logs from elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import struct
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import trio

from .. import fsutil, wire
from ..errors import (
    CredentialError,
    DecodeError,
    LocalProtocolError,
    LogCorrupted,
    P2PInviteError,
    RemoteProtocolError,
    StorageError,
)

__all__ = [
    "CHECKPOINT_MAGIC",
    "CHECKPOINT_SUFFIX",
    "DEFAULT_CHECKPOINT_EVERY",
    "FORMAT_VERSION",
    "GENESIS_PREV_HASH",
    "HASH_SIZE",
    "LOG_MAGIC",
    "MAX_BODY",
    "MAX_CREDENTIAL",
    "CheckpointError",
    "EntryValidator",
    "InvalidEntries",
    "LogClosed",
    "LogEntry",
    "LogLocked",
    "LogPoisoned",
    "OpenReport",
    "SpaceLog",
    "decode_entry",
    "encode_entry",
    "entries_from_credentials",
    "entry_hash",
    "frame_record",
]

_log = logging.getLogger(__name__)

#: First 8 bytes of every log file.
LOG_MAGIC: Final = b"\x89p2plog\n"
#: Version of the file format described in docs/PROTOCOL.md Part 9.
FORMAT_VERSION: Final = 1
#: First 8 bytes of every checkpoint file.
CHECKPOINT_MAGIC: Final = b"\x89p2pckp\n"
#: The checkpoint of ``x.log`` is ``x.log.checkpoint``.
CHECKPOINT_SUFFIX: Final = ".checkpoint"
#: Entries between automatic checkpoints.
DEFAULT_CHECKPOINT_EVERY: Final = 1024
#: Size of an entry hash (BLAKE2b-256).
HASH_SIZE: Final = 32
#: ``prev_hash`` of the entry with seq 0.
GENESIS_PREV_HASH: Final = bytes(HASH_SIZE)
#: Largest record body.
MAX_BODY: Final = 1 << 16
#: Largest credential inside an entry (MAX_BODY less the map's 72-byte worst-case overhead).
MAX_CREDENTIAL: Final = 60_000
#: Largest seq (msgpack's signed 64-bit range, like every other integer we decode).
MAX_SEQ: Final = 2**63 - 1
#: Largest checkpoint file (the snapshot dominates it).
MAX_CHECKPOINT: Final = 1 << 28
#: Upper bound on the bytes one commit writes. A torn tail is never longer than
#: one commit, so damage spanning more than this (plus one record) is corruption.
MAX_BATCH_BYTES: Final = 1 << 20

_FILE_HEADER: Final = struct.Struct(">8sHHI")  # magic, version, flags, crc32(first 12 bytes)
_REC: Final = struct.Struct(">III")  # body length, crc32(body), crc32(first 8 bytes)
_REC8: Final = struct.Struct(">II")
_CKPT_HEADER: Final = struct.Struct(">8sHHII")  # magic, version, flags, payload len, crc32(payload)
_HEADER_LEN: Final = _FILE_HEADER.size
_REC_LEN: Final = _REC.size
_TORN_LIMIT: Final = MAX_BATCH_BYTES + _REC_LEN + MAX_BODY

# The canonical encoding of {seq, prev_hash, credential} (wire.pack sorts keys by
# their encoded bytes: "seq" < "prev_hash" < "credential" as fixstr lengths 3 < 9 < 10).
_K_SEQ: Final = b"\x83\xa3seq"
_K_PREV: Final = b"\xa9prev_hash\xc4\x20"
_K_CRED: Final = b"\xaacredential"


def _file_header() -> bytes:
    head = LOG_MAGIC + FORMAT_VERSION.to_bytes(2, "big") + b"\x00\x00"
    return head + zlib.crc32(head).to_bytes(4, "big")


# ---------------------------------------------------------------------------
# Errors


class LogClosed(StorageError):
    """The log was closed; it cannot be used any more."""


class LogLocked(StorageError):
    """Another process (or another SpaceLog in this one) has the log open."""


class LogPoisoned(StorageError):
    """A write or fsync failed; the log and its validator state are no longer trusted.

    Close the log and reopen it: opening rebuilds the state from the file.
    """


class CheckpointError(StorageError):
    """A checkpoint matched its log but the validator could not restore its snapshot."""


class InvalidEntries(RemoteProtocolError):
    """Entries received from a peer do not form a valid log.

    ``index`` is the position of the first bad entry in the list given to
    :meth:`SpaceLog.import_entries`; the underlying error (a
    :class:`~p2pinvite.errors.CredentialError` carrying its ``rule``, or a
    :class:`~p2pinvite.errors.DecodeError`) is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(f"entry {index}: {message}")
        self.index = index


# ---------------------------------------------------------------------------
# Public types


class EntryValidator(Protocol):
    """The membership rules a log checks every credential against.

    ``check`` decodes a credential and checks it against the *current* state
    (raising :class:`~p2pinvite.errors.CredentialError` with a ``rule`` when it
    is refused) without changing the state; ``apply`` then adds it. With
    ``verify_signatures=False`` the caller vouches for the signatures (a record
    of our own file protected by the hash chain) and only the rules run.
    ``check`` must not depend on the wall clock, or a replay could refuse what
    was admitted. ``snapshot``/``restore`` serialise the whole state for
    checkpoints; ``restore`` is only called on a fresh, empty validator.
    """

    def check(self, credential: bytes, *, verify_signatures: bool) -> object:
        """Decode and check *credential* against the current state; do not change it."""
        ...

    def apply(self, checked: object) -> None:
        """Add a credential that :meth:`check` accepted to the state."""
        ...

    def snapshot(self) -> bytes:
        """The whole state as bytes, for a checkpoint."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the (empty) state with one produced by :meth:`snapshot`."""
        ...


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of a space log, with its hash (BLAKE2b-256 of its encoding)."""

    seq: int
    prev_hash: bytes
    credential: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class OpenReport:
    """What opening a log found.

    ``entries``: entries in the log. ``truncated_bytes``: torn tail removed.
    ``verified_signatures``: records checked with signature verification.
    ``from_checkpoint``: entries whose state came from the checkpoint snapshot.
    """

    entries: int
    truncated_bytes: int
    verified_signatures: int
    from_checkpoint: int


# ---------------------------------------------------------------------------
# Entry encoding (pure functions)


def encode_entry(seq: int, prev_hash: bytes, credential: bytes) -> bytes:
    """The canonical msgpack body of an entry: ``{seq, prev_hash, credential}``."""
    if not 0 <= seq <= MAX_SEQ:
        raise LocalProtocolError("seq out of range")
    if len(prev_hash) != HASH_SIZE:
        raise LocalProtocolError("prev_hash must be 32 bytes")
    if len(credential) > MAX_CREDENTIAL:
        raise CredentialError(
            f"credential of {len(credential)} bytes exceeds {MAX_CREDENTIAL}", rule="too_large"
        )
    # Written out rather than through wire.pack (10x slower) since append's
    # critical section runs it; tests check it is byte-for-byte wire.pack's output.
    n = len(credential)
    bin_head = bytes((0xC4, n)) if n <= 0xFF else b"\xc5" + n.to_bytes(2, "big")
    return b"".join((_K_SEQ, _uint(seq), _K_PREV, prev_hash, _K_CRED, bin_head, credential))


def entries_from_credentials(credentials: Sequence[bytes]) -> list[bytes]:
    """Encoded, chained entries (``{seq, prev_hash, credential}``) of a new log."""
    out: list[bytes] = []
    prev = GENESIS_PREV_HASH
    for seq, cred in enumerate(credentials):
        body = encode_entry(seq, prev, cred)
        prev = entry_hash(body)
        out.append(body)
    return out


def decode_entry(body: bytes) -> tuple[int, bytes, bytes]:
    """Decode an entry body strictly: ``(seq, prev_hash, credential)``.

    The body must *be* the canonical encoding :func:`encode_entry` produces
    (exact key set and order, shortest integer and ``bin`` headers, nothing
    after the credential), so an entry has exactly one encoding and one hash.
    This is a direct parse of that one layout rather than a generic msgpack
    decode: reopening walks every record, and this keeps a 100,000-entry
    reopen well inside its budget. Raises :class:`DecodeError`.
    """
    n = len(body)
    if n > MAX_BODY:
        raise DecodeError(f"entry of {n} bytes exceeds {MAX_BODY}")
    if body[:5] != _K_SEQ or n < 6:
        raise DecodeError("entry is not the map {seq, prev_hash, credential}")
    tag = body[5]
    if tag <= 0x7F:
        seq, p = tag, 6
    elif 0xCC <= tag <= 0xCF:
        width = 1 << (tag - 0xCC)
        p = 6 + width
        if n < p:
            raise DecodeError("truncated seq")
        seq = int.from_bytes(body[6:p], "big")
        # shortest form only: each width must hold a value its predecessor cannot
        if seq < (0x80 if width == 1 else 1 << (4 * width)) or seq > MAX_SEQ:
            raise DecodeError("seq is not canonically encoded or out of range")
    else:
        raise DecodeError("seq must be a non-negative integer")
    if body[p : p + 12] != _K_PREV or n < p + 44:
        raise DecodeError("entry field prev_hash missing or not 32 bytes")
    prev = body[p + 12 : p + 44]
    p += 44
    if body[p : p + 11] != _K_CRED or n < p + 13:
        raise DecodeError("entry field credential missing")
    p += 11
    tag = body[p]
    if tag == 0xC4:
        size, p = body[p + 1], p + 2
    elif tag == 0xC5 and n >= p + 3:
        size, p = int.from_bytes(body[p + 1 : p + 3], "big"), p + 3
        if size < 0x100:
            raise DecodeError("credential length is not canonically encoded")
    else:  # bin32 would only be canonical above 65535 bytes, beyond MAX_BODY
        raise DecodeError("credential must be bytes of at most 65535")
    if n - p != size:
        raise DecodeError("credential length does not match the entry")
    if size > MAX_CREDENTIAL:
        raise DecodeError(f"credential of {size} bytes exceeds {MAX_CREDENTIAL}")
    return seq, prev, body[p:]


def entry_hash(body: bytes) -> bytes:
    """The hash of an entry: BLAKE2b-256 of its encoded body."""
    return hashlib.blake2b(body, digest_size=HASH_SIZE).digest()


def frame_record(body: bytes) -> bytes:
    """A record as stored in the file: ``length | crc32(body) | crc32(those 8 bytes)`` + body."""
    if not 1 <= len(body) <= MAX_BODY:
        raise LocalProtocolError("record body size out of range")
    head = _REC8.pack(len(body), zlib.crc32(body))
    return head + zlib.crc32(head).to_bytes(4, "big") + body


# ---------------------------------------------------------------------------
# Scanning a file image (pure)


@dataclass(slots=True)
class _Scan:
    """The valid records of a file image and how it ends."""

    offsets: array[int] = field(default_factory=lambda: array("Q"))
    hashes: bytearray = field(default_factory=bytearray)
    creds: list[bytes] = field(default_factory=list)
    end: int = _HEADER_LEN  # end of the last valid record
    torn: bool = False  # bytes after `end` are a torn tail


def _valid_record_at(data: bytes, p: int) -> bool:
    n = len(data)
    if n - p < _REC_LEN:
        return False
    length, bcrc, hcrc = _REC.unpack_from(data, p)
    if zlib.crc32(data[p : p + 8]) != hcrc or not 1 <= length <= MAX_BODY:
        return False
    end = p + _REC_LEN + length
    return end <= n and zlib.crc32(data[p + _REC_LEN : end]) == int(bcrc)


def _damage(data: bytes, bad: int, resume: int, what: str) -> None:
    """Decide whether damage at *bad* is a torn tail; raise LogCorrupted if it is not.

    A crash can only tear the last commit, so the damage is a torn tail only if
    nothing after it is a valid record and it is no longer than one commit.
    """
    if len(data) - bad > _TORN_LIMIT:
        raise LogCorrupted(f"{what}, and too much data follows to be a torn tail", offset=bad)
    for p in range(resume, len(data) - _REC_LEN + 1):
        if _valid_record_at(data, p):
            raise LogCorrupted(f"{what}, followed by a valid record at offset {p}", offset=bad)


def _uint(n: int) -> bytes:
    """Canonical msgpack encoding of a non-negative integer (as wire.pack writes it)."""
    if n <= 0x7F:
        return bytes((n,))
    width = 1 if n <= 0xFF else 2 if n <= 0xFFFF else 4 if n <= 0xFFFFFFFF else 8
    return bytes((0xCB + width.bit_length(),)) + n.to_bytes(width, "big")


def _decode_at(body: bytes, off: int) -> tuple[int, bytes, bytes]:
    try:
        return decode_entry(body)
    except DecodeError as exc:
        raise LogCorrupted(f"malformed entry: {exc}", offset=off) from None


def _scan(data: bytes, *, anchored: int, keep_creds_from: int) -> _Scan:
    """Walk the records of a file image (header already checked).

    Checks framing, seq order and every hash-chain link. Entries from seq
    *keep_creds_from* on (the ones the caller will replay) are decoded strictly
    and their credentials kept.

    The first *anchored* entries are vouched for by the checkpoint's head hash,
    which the caller checks: the BLAKE2b chain carries that hash back to each
    of them, so their bytes are the ones checked strictly when written. For
    them the body CRC (whose job is telling a torn tail from damage; nothing
    vouched for can be torn) is skipped, and unless they are replayed, checking
    that each body starts with the expected ``{seq, prev_hash`` prefix stands
    in for a full decode. This is what keeps reopening fast.
    """
    s = _Scan()
    n = len(data)
    off = _HEADER_LEN
    prev = GENESIS_PREV_HASH
    seq_expected = 0
    crc32, unpack_from, blake2b = zlib.crc32, _REC.unpack_from, hashlib.blake2b
    while off < n:
        if n - off < _REC_LEN:
            s.torn = True
            break
        length, bcrc, hcrc = unpack_from(data, off)
        if crc32(data[off : off + 8]) != hcrc:
            _damage(data, off, off + 1, "record header checksum mismatch")
            s.torn = True
            break
        if not 1 <= length <= MAX_BODY:
            raise LogCorrupted(f"record length {length} out of range", offset=off)
        end = off + _REC_LEN + length
        if end > n:
            s.torn = True  # a valid header whose body was never fully written
            break
        body = data[off + _REC_LEN : end]
        if seq_expected >= anchored and crc32(body) != bcrc:
            _damage(data, off, end, "record body checksum mismatch")
            s.torn = True
            break
        if seq_expected < keep_creds_from:
            if body.startswith(b"".join((_K_SEQ, _uint(seq_expected), _K_PREV, prev))):
                seq, prev_hash = seq_expected, prev
            else:  # decode to say what is wrong
                seq, prev_hash = _decode_at(body, off)[:2]
        else:
            seq, prev_hash, cred = _decode_at(body, off)
            s.creds.append(cred)
        if seq != seq_expected:
            raise LogCorrupted(f"entry has seq {seq}, expected {seq_expected}", offset=off)
        if prev_hash != prev:
            # Either this record's prev_hash or the previous record changed; name
            # the earlier one, the first record that may be bad.
            at = s.offsets[-1] if s.offsets else off
            raise LogCorrupted(
                f"hash chain broken: entry {seq} (at offset {off}) does not link to "
                f"the entry before it", offset=at,
            )
        prev = blake2b(body, digest_size=HASH_SIZE).digest()
        s.offsets.append(off)
        s.hashes += prev
        seq_expected += 1
        off = end
    s.end = off
    return s


# ---------------------------------------------------------------------------
# Checkpoint file


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    count: int  # entries covered: seq 0 .. count-1
    offset: int  # file offset just after entry count-1
    head_hash: bytes  # hash of entry count-1
    snapshot: bytes = field(repr=False)

    def encode(self) -> bytes:
        payload = wire.pack({
            "count": self.count, "offset": self.offset,
            "head_hash": self.head_hash, "snapshot": self.snapshot,
        })
        head = _CKPT_HEADER.pack(CHECKPOINT_MAGIC, FORMAT_VERSION, 0, len(payload),
                                 zlib.crc32(payload))
        return head + payload

    @classmethod
    def decode(cls, data: bytes) -> _Checkpoint:
        if len(data) < _CKPT_HEADER.size:
            raise DecodeError("checkpoint shorter than its header")
        magic, version, flags, size, crc = _CKPT_HEADER.unpack_from(data)
        if magic != CHECKPOINT_MAGIC or version != FORMAT_VERSION or flags != 0:
            raise DecodeError("not a version-1 checkpoint")
        payload = data[_CKPT_HEADER.size :]
        if len(payload) != size or zlib.crc32(payload) != crc:
            raise DecodeError("checkpoint checksum mismatch")
        m = wire.expect_map(wire.unpack(payload, max_size=MAX_CHECKPOINT, max_items=4))
        if set(m) != {"count", "offset", "head_hash", "snapshot"}:
            raise DecodeError("checkpoint fields")
        return cls(
            count=wire.expect_int(m, "count", lo=1, hi=MAX_SEQ),
            offset=wire.expect_int(m, "offset", lo=_HEADER_LEN + _REC_LEN + 1),
            head_hash=wire.expect_bytes(m, "head_hash", size=HASH_SIZE),
            snapshot=wire.expect_bytes(m, "snapshot", max_size=MAX_CHECKPOINT),
        )


def _checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKPOINT_SUFFIX)


def _load_checkpoint(path: Path) -> _Checkpoint | None:
    """The checkpoint of *path*, or None if missing or damaged (damage is logged).

    It is written atomically, so damage means a disk fault: the log itself is
    still authoritative and opening falls back to replaying it. Wrong
    permissions are not damage: they raise StorageError.
    """
    cp = _checkpoint_path(path)
    if not cp.exists():
        return None
    data = fsutil.read_private(cp, max_size=MAX_CHECKPOINT + _CKPT_HEADER.size)
    try:
        return _Checkpoint.decode(data)
    except DecodeError as exc:
        _log.warning("ignoring damaged checkpoint %s: %s", cp, exc)
        return None


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary files a crash left behind (the caller holds the log's lock)."""
    for pattern in (f".{path.name}{CHECKPOINT_SUFFIX}.*.tmp", f".{path.name}.*.new.tmp"):
        for tmp in path.parent.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


# ---------------------------------------------------------------------------
# File primitives (module level so tests can inject failures)


def _sync(fd: int) -> None:
    os.fdatasync(fd)


def _lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LogLocked(f"{path} is open elsewhere") from None
        raise StorageError(f"cannot lock {path}: {exc.strerror}") from None


def _publish_new(path: Path, data: bytes) -> None:
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


def _open_fd(path: Path) -> int:
    fsutil.check_private_file(path)
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise StorageError(f"cannot open {path}: {exc.strerror}") from None


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 30), offset)  # one read, no join copy
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------
# The log


@dataclass(slots=True)
class _Pending:
    seq: int
    record: bytes
    hash: bytes


class SpaceLog:
    """An open space log: durable appends with group commit, reads of durable entries.

    Create one with :meth:`open` or :meth:`import_entries`; one process holds a
    log at a time (an exclusive ``flock``). ``length``, ``head_hash``,
    :meth:`entries` and :meth:`raw_entries` cover durable entries only.
    """

    def __init__(
        self, path: Path, fd: int, validator: EntryValidator, scan: _Scan,
        report: OpenReport, checkpointed: int, checkpoint_every: int,
    ) -> None:
        """Internal: use :meth:`open` or :meth:`import_entries`."""
        self._path = path
        self._fd: int | None = fd
        self._validator = validator
        self.report = report
        self._checkpoint_every = checkpoint_every
        # Durable entries: where each record starts, and its hash.
        self._offsets = scan.offsets
        self._hashes = scan.hashes
        self._durable_end = scan.end
        # Admitted entries, durable or queued.
        self._next_seq = len(scan.offsets)
        self._tail_hash = bytes(scan.hashes[-HASH_SIZE:]) if scan.offsets else GENESIS_PREV_HASH
        self._pending: list[_Pending] = []
        self._commit_done: trio.Event | None = None  # set while a leader commits
        self._poison: BaseException | None = None
        self._checkpointed = checkpointed  # entries covered by the checkpoint on disk
        self._candidate: _Checkpoint | None = None  # snapshot awaiting durability
        self._commits = 0

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path, validator: EntryValidator, *, create: bool = False,
        full_verify: bool = False, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> SpaceLog:
        """Open the log at *path*, replaying it into the fresh *validator*.

        *create*: create an empty log if the file does not exist (its directory
        must). *full_verify*: do not restore the checkpoint's snapshot; replay
        every entry, verifying every signature and rule. Truncates a torn
        tail; raises :class:`LogCorrupted` for anything else that is wrong,
        :class:`LogLocked` if the log is open elsewhere, :class:`CheckpointError`
        if the validator refuses the checkpoint's snapshot.
        """
        if checkpoint_every < 1:
            raise LocalProtocolError("checkpoint_every must be at least 1")
        path = Path(path)
        if not path.exists():
            if not create:
                raise StorageError(f"{path} does not exist")
            with contextlib.suppress(FileExistsError):  # lost a race: open theirs
                _remove_checkpoint(path)
                _publish_new(path, _file_header())
        fd = _open_fd(path)
        try:
            _lock(fd, path)
            _remove_stale_temps(path)
            log = cls._load(path, fd, validator, full_verify, checkpoint_every)
        except BaseException:
            os.close(fd)
            raise
        log._checkpoint_if_behind()
        return log

    @classmethod
    def _load(
        cls, path: Path, fd: int, validator: EntryValidator, full_verify: bool,
        checkpoint_every: int,
    ) -> SpaceLog:
        data = _read_all(fd)
        if len(data) < _HEADER_LEN or data[:_HEADER_LEN] != _file_header():
            if data[:8] == LOG_MAGIC and len(data) >= 10 and data[8:10] != b"\x00\x01":
                raise StorageError(f"{path}: unsupported log format version")
            raise LogCorrupted(f"{path}: not a p2pinvite log (bad file header)", offset=0)
        # Even a full verification uses the checkpoint's anchor (damage to records
        # it vouches for is corruption, not a torn tail); it only skips the snapshot.
        ckpt = _load_checkpoint(path)
        anchored = ckpt.count if ckpt and not full_verify else 0
        scan = _scan(data, anchored=ckpt.count if ckpt else 0, keep_creds_from=anchored)
        count = len(scan.offsets)
        if ckpt is not None:
            if count < ckpt.count:
                raise LogCorrupted(
                    f"log holds {count} valid entries but its checkpoint vouches for "
                    f"{ckpt.count}", offset=scan.end,
                )
            last = ckpt.count - 1
            end_of_last = scan.offsets[last + 1] if ckpt.count < count else scan.end
            if (end_of_last != ckpt.offset
                    or scan.hashes[last * HASH_SIZE : ckpt.count * HASH_SIZE] != ckpt.head_hash):
                raise LogCorrupted(
                    f"entry {last} does not match the checkpoint's head hash",
                    offset=scan.offsets[last],
                )
        if ckpt is not None and not full_verify:
            try:
                validator.restore(ckpt.snapshot)
            except P2PInviteError as exc:
                raise CheckpointError(
                    f"{_checkpoint_path(path)} could not be restored ({exc}); reopen with "
                    "full_verify=True and a fresh validator to rebuild it from the log"
                ) from exc
        verified = 0
        for i, cred in enumerate(scan.creds):
            seq = anchored + i
            # Anchored-by-checkpoint tails and full verification check signatures
            # everywhere; a checkpoint-less trusted replay relies on the chain for
            # every record that has a successor and checks the last one.
            sigs = full_verify or ckpt is not None or seq == count - 1
            try:
                validator.apply(validator.check(cred, verify_signatures=sigs))
            except (CredentialError, DecodeError) as exc:
                raise LogCorrupted(
                    f"entry {seq} refused by the membership rules: {exc}",
                    offset=scan.offsets[seq],
                ) from exc
            verified += sigs
        truncated = len(data) - scan.end
        if truncated:
            _log.warning("%s: truncating a torn tail of %d bytes", path, truncated)
            os.ftruncate(fd, scan.end)
            os.fsync(fd)
        scan.creds = []
        report = OpenReport(entries=count, truncated_bytes=truncated,
                            verified_signatures=verified, from_checkpoint=anchored)
        return cls(path, fd, validator, scan, report, ckpt.count if ckpt else 0,
                   checkpoint_every)

    @classmethod
    def import_entries(
        cls, path: Path, entries: Sequence[bytes], validator: EntryValidator, *,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> SpaceLog:
        """Create the log at *path* from *entries* received from a peer.

        *entries* are encoded entries as :meth:`raw_entries` returns them. Every
        one is checked -- strict encoding, seq, hash chain, and the credential
        with signature verification against the fresh *validator* -- before
        anything is written; then the file appears atomically and durably.
        Raises :class:`InvalidEntries` for a bad list, StorageError if *path*
        exists.
        """
        path = Path(path)
        if path.exists():
            raise StorageError(f"{path} already exists")
        scan = _Scan()
        parts = [_file_header()]
        prev = GENESIS_PREV_HASH
        offset = _HEADER_LEN
        for i, body in enumerate(entries):
            try:
                if not isinstance(body, bytes):
                    raise DecodeError("entry must be bytes")
                seq, prev_hash, cred = decode_entry(body)
                if seq != i:
                    raise DecodeError(f"entry has seq {seq}")
                if prev_hash != prev:
                    raise DecodeError("prev_hash does not match the previous entry's hash")
                validator.apply(validator.check(cred, verify_signatures=True))
            except (CredentialError, DecodeError) as exc:
                raise InvalidEntries(str(exc), index=i) from exc
            prev = entry_hash(body)
            record = frame_record(body)
            parts.append(record)
            scan.offsets.append(offset)
            scan.hashes += prev
            offset += len(record)
        scan.end = offset
        _remove_checkpoint(path)
        try:
            _publish_new(path, b"".join(parts))
        except FileExistsError:
            raise StorageError(f"{path} already exists") from None
        fd = _open_fd(path)
        try:
            _lock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        n = len(scan.offsets)
        report = OpenReport(entries=n, truncated_bytes=0, verified_signatures=n,
                            from_checkpoint=0)
        log = cls(path, fd, validator, scan, report, 0, checkpoint_every)
        # A short log replays faster on reopen than its checkpoint costs to write
        # now (two fsyncs on a guest's join path); close() writes one anyway.
        if n >= checkpoint_every:
            log._checkpoint_if_behind()
        return log

    # -- properties ---------------------------------------------------------

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def length(self) -> int:
        """Number of durable entries (the seq the next durable entry after them gets)."""
        return len(self._offsets)

    @property
    def head_hash(self) -> bytes:
        """Hash of the last durable entry; 32 zero bytes for an empty log."""
        return bytes(self._hashes[-HASH_SIZE:]) if self._offsets else GENESIS_PREV_HASH

    @property
    def commit_count(self) -> int:
        """Write+fsync batches since open (group commit makes this < appends)."""
        return self._commits

    @property
    def poisoned(self) -> bool:
        """True once a write or fsync failed: reopen to trust the state again."""
        return self._poison is not None

    # -- appending ----------------------------------------------------------

    async def append(self, credential: bytes) -> int:
        """Admit *credential* and return its seq once its record is fsynced.

        Raises whatever ``validator.check`` raises (the log and state are then
        unchanged), :class:`LogPoisoned` if a write or fsync failed, and
        :class:`LogClosed` after :meth:`close`. Once admitted, the call finishes
        the commit even if cancelled (the cancellation is delivered afterwards):
        a record in the state is always either written or the log poisoned.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._usable()
        if not isinstance(credential, bytes):
            raise CredentialError("credential must be bytes", rule="malformed")
        if len(credential) > MAX_CREDENTIAL:
            raise CredentialError(
                f"credential of {len(credential)} bytes exceeds {MAX_CREDENTIAL}",
                rule="too_large",
            )
        # From here to the queueing there is no await: this is the admission lock.
        checked = self._validator.check(credential, verify_signatures=True)
        seq = self._next_seq
        body = encode_entry(seq, self._tail_hash, credential)
        h = entry_hash(body)
        record = frame_record(body)
        try:
            self._validator.apply(checked)
            if (seq + 1) % self._checkpoint_every == 0:
                # The state is exactly entries 0..seq now; it becomes the
                # checkpoint once this record is durable (offset filled in then).
                self._candidate = _Checkpoint(seq + 1, 0, h, self._validator.snapshot())
        except BaseException as exc:
            self._poison_with(exc)  # the state may be half-changed
            raise LogPoisoned("the validator failed while applying; reopen the log") from exc
        self._pending.append(_Pending(seq, record, h))
        self._next_seq = seq + 1
        self._tail_hash = h
        with trio.CancelScope(shield=True):
            await self._wait_durable(seq)
        return seq

    async def _wait_durable(self, seq: int) -> None:
        while len(self._offsets) <= seq:
            if self._poison is not None:
                raise LogPoisoned(f"{self._path}: a write failed; reopen the log") \
                    from self._poison
            if self._commit_done is None:
                await self._lead_commit()
            else:
                await self._commit_done.wait()

    async def _lead_commit(self) -> None:
        done = self._commit_done = trio.Event()
        try:
            batch: list[_Pending] = []
            size = 0
            for p in self._pending:
                if batch and size + len(p.record) > MAX_BATCH_BYTES:
                    break
                batch.append(p)
                size += len(p.record)
            del self._pending[: len(batch)]
            if not batch:
                return
            start = self._durable_end
            data = b"".join(p.record for p in batch)
            ckpt = self._candidate
            if ckpt is not None and ckpt.count <= batch[-1].seq + 1:
                # The snapshot was taken right after entry count-1 was applied;
                # it becomes valid once that record is durable, i.e. after this batch.
                end = start + sum(len(p.record) for p in batch if p.seq < ckpt.count)
                ckpt = _Checkpoint(ckpt.count, end, ckpt.head_hash, ckpt.snapshot)
                self._candidate = None
            else:
                ckpt = None
            assert self._fd is not None
            try:
                wrote_ckpt = await trio.to_thread.run_sync(
                    _commit, self._fd, data, start, self._path, ckpt
                )
            except BaseException as exc:
                self._poison_with(exc)
                return
            self._commits += 1
            offset = start
            for p in batch:
                self._offsets.append(offset)
                self._hashes += p.hash
                offset += len(p.record)
            self._durable_end = offset
            if wrote_ckpt and ckpt is not None:
                self._checkpointed = ckpt.count
        finally:
            self._commit_done = None
            done.set()

    def _poison_with(self, exc: BaseException) -> None:
        if self._poison is not None:
            return
        self._poison = exc
        _log.error("%s: log poisoned by %r; reopen it", self._path, exc)
        if self._fd is not None:
            # Drop unacknowledged bytes so nothing half-written survives in the
            # page cache to be mistaken for data later (best effort).
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._durable_end)

    def _usable(self) -> None:
        if self._fd is None:
            raise LogClosed(f"{self._path} is closed")
        if self._poison is not None:
            raise LogPoisoned(f"{self._path}: a write failed; reopen the log") from self._poison

    # -- reading ------------------------------------------------------------

    def raw_entries(self, start: int = 0) -> list[bytes]:
        """Encoded entries (``{seq, prev_hash, credential}`` bodies) from seq *start* on.

        This is what a guest receives and passes to :meth:`import_entries`.
        Each record is re-read from the file and checked against the CRC and
        hash recorded when it was written.
        """
        if self._fd is None:
            raise LogClosed(f"{self._path} is closed")
        count = len(self._offsets)
        if not 0 <= start <= count:
            raise LocalProtocolError(f"start {start} outside 0..{count}")
        if start == count:
            return []
        base = self._offsets[start]
        data = os.pread(self._fd, self._durable_end - base, base)
        bodies: list[bytes] = []
        for seq in range(start, count):
            off = self._offsets[seq] - base
            if len(data) - off < _REC_LEN:
                raise LogCorrupted("log changed on disk while open", offset=base + off)
            length = _REC.unpack_from(data, off)[0]
            body = data[off + _REC_LEN : off + _REC_LEN + length]
            if entry_hash(body) != self._hashes[seq * HASH_SIZE : (seq + 1) * HASH_SIZE]:
                raise LogCorrupted("log changed on disk while open", offset=base + off)
            bodies.append(body)
        return bodies

    def entries(self, start: int = 0) -> list[LogEntry]:
        """Decoded durable entries from seq *start* on."""
        out = []
        for body in self.raw_entries(start):
            seq, prev, cred = decode_entry(body)
            out.append(LogEntry(seq, prev, cred, entry_hash(body)))
        return out

    # -- checkpoints and closing -----------------------------------------------

    def _checkpoint_if_behind(self) -> None:
        """Write a checkpoint now if the one on disk does not cover every entry.

        Only valid when no append is in flight (the state equals the file).
        """
        count = len(self._offsets)
        if count == 0 or count <= self._checkpointed or self._poison is not None:
            return
        ckpt = _Checkpoint(count, self._durable_end, self.head_hash, self._validator.snapshot())
        try:
            fsutil.atomic_write(_checkpoint_path(self._path), ckpt.encode())
        except OSError as exc:  # the log stays authoritative; opening replays more
            _log.warning("%s: could not write checkpoint: %s", self._path, exc)
            return
        self._checkpointed = count

    def close(self) -> None:
        """Write a final checkpoint (unless poisoned) and release the log. Idempotent."""
        if self._fd is None:
            return
        if self._commit_done is not None or (self._pending and self._poison is None):
            raise LocalProtocolError("close() while appends are in flight")
        try:
            self._checkpoint_if_behind()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> SpaceLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SpaceLog {str(self._path)!r} length={len(self._offsets)}>"


def _remove_checkpoint(path: Path) -> None:
    """Remove a checkpoint left by an earlier log at *path* before a new log appears."""
    cp = _checkpoint_path(path)
    if cp.exists():
        cp.unlink()
        fsutil.fsync_dir(path.parent)


def _commit(fd: int, data: bytes, offset: int, path: Path, ckpt: _Checkpoint | None) -> bool:
    """Worker-thread half of a commit: write and sync the batch, then maybe checkpoint.

    Raises (poisoning the log) if the batch cannot be made durable; a failed
    checkpoint is only logged, as the previous one stays valid.
    """
    fsutil.pwrite_all(fd, data, offset)
    _sync(fd)
    if ckpt is None:
        return False
    try:
        fsutil.atomic_write(_checkpoint_path(path), ckpt.encode())
    except OSError as exc:
        _log.warning("%s: could not write checkpoint: %s", path, exc)
        return False
    return True
