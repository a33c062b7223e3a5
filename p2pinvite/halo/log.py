"""The space log: one local, append-only, crash-safe file per log, holding a Merkle DAG.

docs/PROTOCOL.md Part 9 is the normative description of the bytes (their
code: halo/logfile.py); this is the theory of operation.

File and records
    A 16-byte header (magic, format version 2, CRC) is followed by records.
    Each record is framed as ``length | body CRC | header CRC`` (three
    big-endian u32) and a body: the entry's 32-byte id, then its credential
    (chain included). Records are in a topological order (parents first),
    which is the order the entries were added; the id is stored so that
    reading a record needs no re-hashing, and is checked against the
    credential whenever a record is verified. The header CRC makes the
    length trustworthy on its own, which is what lets recovery tell a torn
    tail from damage in the middle.

State
    A :class:`~.resolve.Resolver` holds the DAG, every entry's status and the
    membership state (halo/resolve.py). Everything added to it is queued for
    the file in the same order, so the file order *is* the DAG's position
    order, and durable entries are always a prefix of it.

Appending (group commit)
    ``append`` (a credential issued here, on the current heads) verifies it,
    checks the rules and adds it in one synchronous section: no ``await``
    between the check and the change, so under trio nothing else
    interleaves -- that section *is* the admission lock, and of two racing
    redemptions of a single-use invitation the second is checked against a
    state that already holds the first. ``ingest`` (entries from a peer)
    verifies every entry first (off the event loop for big batches), then
    adds all of them in one synchronous section, each batch as one group.
    The caller then waits, shielded from cancellation, until its group is
    fsynced. The first waiter that finds no commit running becomes the
    leader: it takes the queued groups (whole, up to :data:`MAX_COMMIT_BYTES`)
    and writes them with one ``pwrite`` and one ``fdatasync`` in a worker
    thread (the event loop keeps admitting meanwhile), then wakes everyone;
    groups queued during that fsync go in the next batch.

    State changes *before* the record is durable (otherwise two concurrent
    admissions could both pass). The price: if a write or fsync fails, the
    state holds entries the file may not. The log is then *poisoned*: every
    waiting and later call raises :class:`LogPoisoned`, the unacknowledged
    bytes are truncated away (best effort), and the owner must close and
    reopen it. Nothing is acknowledged before its fsync returned. The sync
    queries (:meth:`SpaceLog.heads`, :meth:`SpaceLog.has`, :meth:`SpaceLog.get`,
    :meth:`SpaceLog.ids_not_below`, :meth:`SpaceLog.raw_entries`) see durable
    entries only.

Opening
    A *checkpoint* (``<log>.checkpoint``, written atomically every
    ``checkpoint_every`` entries or more, and on close) holds the resolver
    (DAG, statuses, state), the record offsets, and a BLAKE2b digest of the
    file bytes it covers. Opening hashes that prefix (reading and hashing is
    the floor of any reopen), restores the checkpoint if the digest matches,
    and fully verifies only the records after it: framing, id, signature and
    chain, parents earlier in the file. Without a usable checkpoint every
    record is verified so. A damaged record with nothing valid after it is a
    torn tail (a crash mid-write): it is truncated. Anything else -- damage
    followed by valid records, a prefix that no longer matches its
    checkpoint, a record that does not verify -- raises
    :class:`~p2pinvite.errors.LogCorrupted`; nothing is silently dropped.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import logging
import os
import threading
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

import trio

from .. import fsutil
from ..errors import (
    CredentialError,
    DecodeError,
    LocalProtocolError,
    LogCorrupted,
    RemoteProtocolError,
    StorageError,
)
from .credentials import Credential, CredentialVerifier, decode_credential
from .logfile import (
    CHECKPOINT_MAGIC,
    CHECKPOINT_SUFFIX,
    DEFAULT_CHECKPOINT_EVERY,
    FORMAT_VERSION,
    HEADER_LEN,
    ID_SIZE,
    LOG_MAGIC,
    MAX_BODY,
    MAX_COMMIT_BYTES,
    MAX_CREDENTIAL,
    READ_CHUNK,
    REC,
    REC_LEN,
    Checkpoint,
    LogLocked,
    checkpoint_path,
    commit,
    file_header,
    frame_record,
    load_checkpoint,
    locate_mismatch,
    lock,
    offsets_bytes,
    offsets_from,
    open_fd,
    pread_exact,
    publish_new,
    remove_checkpoint,
    remove_stale_temps,
    scan_records,
)
from .resolve import MAX_ENTRIES, Resolver, Status
from .state import Fact, LogKind, MembershipState, SnapshotError, fact_of

__all__ = [
    "CHECKPOINT_MAGIC",
    "CHECKPOINT_SUFFIX",
    "DEFAULT_CHECKPOINT_EVERY",
    "FORMAT_VERSION",
    "ID_SIZE",
    "LOG_MAGIC",
    "MAX_BODY",
    "MAX_COMMIT_BYTES",
    "MAX_CREDENTIAL",
    "MAX_INGEST",
    "MAX_INGEST_BYTES",
    "IngestResult",
    "InvalidEntries",
    "LogChange",
    "LogClosed",
    "LogLocked",
    "LogPoisoned",
    "OpenReport",
    "Refusal",
    "SpaceLog",
    "file_header",
    "frame_record",
]

_log = logging.getLogger(__name__)

#: Most credentials, and most credential bytes, one ``ingest`` call takes.
MAX_INGEST: Final = 4096
MAX_INGEST_BYTES: Final = 2 << 20
#: Batches larger than this are verified in a worker thread.
_THREAD_VERIFY: Final = 8
#: How long the committer may wait for a batch to build up, and the batch it waits for.
_GATHER_MAX: Final = 0.005
_GATHER_BATCH: Final = 16


# ---------------------------------------------------------------------------
# Errors and results


class LogClosed(StorageError):
    """The log was closed; it cannot be used any more."""


class LogPoisoned(StorageError):
    """A write or fsync failed; the log and its state are no longer trusted.

    Close the log and reopen it: opening rebuilds the state from the file.
    """


class InvalidEntries(RemoteProtocolError):
    """Credentials received from a peer do not form a valid log.

    ``index`` is the position of the first bad one in the list given to
    :meth:`SpaceLog.create`; the underlying error (a
    :class:`~p2pinvite.errors.CredentialError` carrying its ``rule``, or a
    :class:`~p2pinvite.errors.DecodeError`) is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(f"entry {index}: {message}")
        self.index = index


@dataclass(frozen=True, slots=True)
class OpenReport:
    """What opening a log found.

    ``entries``: entries in the log. ``truncated_bytes``: torn tail removed.
    ``verified``: records verified in full (signature included).
    ``from_checkpoint``: entries restored from the checkpoint.
    """

    entries: int
    truncated_bytes: int
    verified: int
    from_checkpoint: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """A credential :meth:`SpaceLog.ingest` refused: its index in the batch and why."""

    index: int
    id: bytes | None
    rule: str
    message: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What :meth:`SpaceLog.ingest` did.

    ``added``: ids now durable in the log, in file order. ``missing``: ids
    named as parents by entries held in memory, that the caller should ask
    for. ``duplicates``: entries already in the log or held. ``refused``:
    entries that failed structurally (the sender is at fault) or did not
    fit (``log_full``). ``ids``: the id of every entry of the batch that was
    not refused, in batch order, whatever became of it (added, duplicate or
    held): the sender holds them, which sync needs to know.
    """

    added: tuple[bytes, ...]
    missing: tuple[bytes, ...]
    duplicates: int
    refused: tuple[Refusal, ...]
    ids: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class LogChange:
    """Entries that became durable: their ids (file order), the durable heads, the count."""

    added: tuple[bytes, ...]
    heads: tuple[bytes, ...]
    count: int


# ---------------------------------------------------------------------------
# Verification of one credential (pure but for the verifier's caches)


def _structure(data: object, verifier: CredentialVerifier) -> Credential:
    """Decode and verify one credential: everything about it but the rules.

    Raises CredentialError: ``too_large``, ``malformed``, ``bad_chain``,
    ``bad_signature``.
    """
    if not isinstance(data, bytes):
        raise CredentialError("a credential is bytes", rule="malformed")
    _check_size(data)
    cred = decode_credential(data)
    verifier.verify(cred)
    return cred


def _check_size(data: bytes) -> None:
    if len(data) > MAX_CREDENTIAL:
        raise CredentialError(f"credential of {len(data)} bytes exceeds {MAX_CREDENTIAL}",
                              rule="too_large")


# ---------------------------------------------------------------------------
# The log


@dataclass(slots=True)
class _Group:
    """Records queued together (one append, or one ingest batch): written in one commit."""

    records: list[bytes]
    size: int
    count: int  # the admitted count once this group's records are written
    checkpoint: Checkpoint | None  # taken right after this group was admitted


class SpaceLog:
    """An open log: durable appends with group commit, ingest from peers, sync queries.

    Create one with :meth:`open` or :meth:`create`; one process holds a log
    at a time (an exclusive ``flock``). :attr:`state` and :meth:`status`
    reflect every admitted entry; the sync queries see durable ones.
    """

    def __init__(self, path: Path, fd: int, resolver: Resolver, offsets: array[int],
                 end: int, hasher: hashlib.blake2b, verifier: CredentialVerifier,
                 report: OpenReport, checkpointed: int, checkpoint_every: int) -> None:
        """Internal: use :meth:`open` or :meth:`create`."""
        self._path = path
        self._fd: int | None = fd
        self._resolver = resolver
        self._verifier = verifier
        self.report = report
        self._checkpoint_every = checkpoint_every
        dag = resolver.dag
        self._dag = dag
        dag.set_loader(self._load_facts)
        # Every admitted entry's record offset (file order = DAG position order).
        self._offsets = offsets
        self._end = end  # end of the admitted records
        self._hasher = hasher  # over the file bytes [0, _end)
        n = len(dag)
        self._durable = n
        self._durable_end = end
        self._durable_heads: set[int] = set(dag.heads)
        # Queued groups and the committer thread's flag, shared with that thread.
        self._lock = threading.Lock()
        self._groups: list[_Group] = []
        self._committing = False
        self._written = end  # where the committer writes next (its own)
        self._gathered = threading.Event()  # the batch the committer waits for is queued
        self._gather_target = 0
        self._waiters: collections.deque[tuple[int, trio.lowlevel.Task]] = collections.deque()
        self._poison: BaseException | None = None
        self._checkpointed = checkpointed  # entries covered by the checkpoint on disk
        self._next_snapshot = n + self._checkpoint_gap(n)
        self._commits = 0
        self._listeners: list[Callable[[LogChange], None]] = []
        self._changed = trio.Event()

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path, *, kind: LogKind | None = None, key: bytes | None = None,
        verifier: CredentialVerifier | None = None, full_verify: bool = False,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> SpaceLog:
        """Open the log at *path*; *kind* and *key*, if given, pin its genesis.

        *full_verify*: do not restore the checkpoint; verify every record.
        Truncates a torn tail; raises :class:`LogCorrupted` for anything else
        that is wrong, :class:`LogLocked` if the log is open elsewhere.
        """
        if checkpoint_every < 1:
            raise LocalProtocolError("checkpoint_every must be at least 1")
        path = Path(path)
        if not path.exists():
            raise StorageError(f"{path} does not exist")
        verifier = verifier if verifier is not None else CredentialVerifier()
        fd = open_fd(path)
        try:
            lock(fd, path)
            remove_stale_temps(path)
            log = cls._load(path, fd, kind, key, verifier, full_verify, checkpoint_every)
        except BaseException:
            os.close(fd)
            raise
        log._checkpoint_if_behind()
        return log

    @classmethod
    def _load(
        cls, path: Path, fd: int, kind: LogKind | None, key: bytes | None,
        verifier: CredentialVerifier, full_verify: bool, checkpoint_every: int,
    ) -> SpaceLog:
        size = os.fstat(fd).st_size
        head = os.pread(fd, HEADER_LEN, 0)
        if head != file_header():
            if head[:8] == LOG_MAGIC and len(head) >= 10 and head[8:10] != b"\x00\x02":
                raise StorageError(f"{path}: unsupported log format version")
            raise LogCorrupted(f"{path}: not a p2pinvite log (bad file header)", offset=0)
        # Even a full verification checks the checkpoint's digest: damage to the
        # bytes it vouches for is corruption, never a torn tail.
        ckpt = load_checkpoint(path)
        resolver: Resolver | None = None
        offsets = array("Q")
        start = HEADER_LEN
        prefix = hashlib.blake2b(digest_size=32)
        if ckpt is not None:
            if size < ckpt.offset:  # vouched bytes are gone: name the first missing record
                locate_mismatch(fd, ckpt)
            # Hash in chunks through one buffer (bounded memory, and no fresh
            # pages to fault in per chunk), keeping the state: the tail
            # continues it.
            buf = bytearray(min(READ_CHUNK, ckpt.offset))
            view = memoryview(buf)
            off = 0
            while off < ckpt.offset:
                got = os.preadv(fd, [view[: ckpt.offset - off]], off)
                if not got:
                    break
                prefix.update(view[:got])
                off += got
            del view
            if prefix.digest() != ckpt.digest:
                locate_mismatch(fd, ckpt)
            if not full_verify:
                try:
                    resolver = Resolver.restore(ckpt.resolver, kind=kind, key=key)
                    offsets = offsets_from(ckpt.offsets)
                    if (len(resolver) != ckpt.count or offsets[0] != HEADER_LEN
                            or offsets[-1] >= ckpt.offset):
                        raise SnapshotError("checkpoint does not match its own index")
                    start = ckpt.offset
                    # A tail record off the heads makes the resolver replay, which
                    # needs the restored facts: read them from the file until the
                    # open log's own loader takes over.
                    resolver.dag.set_loader(functools.partial(
                        _restored_facts, fd, offsets, resolver.dag.ids, ckpt.offset))
                except SnapshotError as exc:
                    _log.warning("%s: checkpoint not restored (%s); verifying every record",
                                  path, exc)
                    resolver, offsets = None, array("Q")
        if resolver is None:
            resolver = Resolver(kind=kind, key=key)
            hasher = hashlib.blake2b(file_header(), digest_size=32)
        else:
            hasher = prefix
        restored = len(resolver)
        data = pread_exact(fd, size - start, start)
        records, end = scan_records(data, start)
        if ckpt is not None and end < ckpt.offset:  # (only when not restored)
            raise LogCorrupted("a record the checkpoint vouches for is damaged", offset=end)
        hasher.update(memoryview(data)[: end - start])
        del data
        for offset, body in records:
            try:
                fact = _verify_record(body, resolver, verifier)
                resolver.add(fact)
            except (CredentialError, DecodeError, LocalProtocolError) as exc:
                raise LogCorrupted(f"record does not verify: {exc}", offset=offset) from exc
            offsets.append(offset)
        resolver.settle()
        if not len(resolver):
            raise LogCorrupted(f"{path}: a log holds at least its genesis", offset=HEADER_LEN)
        truncated = size - end
        if truncated:
            _log.warning("%s: truncating a torn tail of %d bytes", path, truncated)
            os.ftruncate(fd, end)
            os.fsync(fd)
        report = OpenReport(entries=len(resolver), truncated_bytes=truncated,
                            verified=len(records), from_checkpoint=restored)
        checkpointed = ckpt.count if ckpt is not None else 0
        return cls(path, fd, resolver, offsets, end, hasher, verifier, report,
                   checkpointed, checkpoint_every)

    @classmethod
    def create(
        cls, path: Path, credentials: Sequence[bytes], *, kind: LogKind | None = None,
        key: bytes | None = None, verifier: CredentialVerifier | None = None,
        accept: Callable[[Resolver], None] | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> SpaceLog:
        """Create the log at *path* from *credentials*, atomically and durably.

        *credentials* are in a topological order (parents first), the genesis
        first: a new log's first entries, or a log received from a peer
        (:meth:`raw_entries` of theirs). Every one is verified (signature,
        chain, parents, genesis) before anything is written, and *accept*
        may refuse the resolved log by raising ``CredentialError``. Raises
        :class:`InvalidEntries` for a bad list, the error *accept* raised, and
        ``FileExistsError`` if *path* exists.
        """
        path = Path(path)
        if path.exists():
            raise FileExistsError(path)
        if not credentials:
            raise InvalidEntries("a log holds at least its genesis", index=0)
        if len(credentials) > MAX_ENTRIES:
            raise InvalidEntries(f"a log holds at most {MAX_ENTRIES} entries",
                                 index=MAX_ENTRIES)
        verifier = verifier if verifier is not None else CredentialVerifier()
        resolver = Resolver(kind=kind, key=key)
        parts = [file_header()]
        offsets = array("Q")
        offset = HEADER_LEN
        for i, data in enumerate(credentials):
            try:
                cred = _structure(data, verifier)
                if i and not cred.parents:
                    raise CredentialError("a log has one genesis", rule="duplicate_genesis")
                if cred.id in resolver:
                    raise DecodeError("the same entry twice")
                if any(p not in resolver for p in cred.parents):
                    raise DecodeError("an entry comes before one of its parents")
                resolver.add(fact_of(cred))
            except (CredentialError, DecodeError) as exc:
                raise InvalidEntries(str(exc), index=i) from exc
            record = frame_record(cred.id + cred.encode())
            parts.append(record)
            offsets.append(offset)
            offset += len(record)
        resolver.settle()
        if accept is not None:
            accept(resolver)
        image = b"".join(parts)
        remove_checkpoint(path)
        publish_new(path, image)
        fd = open_fd(path)
        try:
            lock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        hasher = hashlib.blake2b(image, digest_size=32)
        n = len(credentials)
        report = OpenReport(entries=n, truncated_bytes=0, verified=n, from_checkpoint=0)
        log = cls(path, fd, resolver, offsets, offset, hasher, verifier, report, 0,
                  checkpoint_every)
        # A short log verifies faster on reopen than its checkpoint costs to write
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
    def resolver(self) -> Resolver:
        """The DAG, order, statuses and state of every admitted entry."""
        return self._resolver

    @property
    def state(self) -> MembershipState:
        """The resolved membership state of every admitted entry."""
        return self._resolver.state

    @property
    def count(self) -> int:
        """Number of durable entries."""
        return self._durable

    def __len__(self) -> int:
        return self._durable

    @property
    def commit_count(self) -> int:
        """Write+fsync batches since open (group commit makes this < appends)."""
        return self._commits

    @property
    def poisoned(self) -> bool:
        """True once a write or fsync failed: reopen to trust the state again."""
        return self._poison is not None

    def status(self, entry_id: bytes) -> Status:
        """Whether admitted entry *entry_id* applied, or the rule that refused it."""
        return self._resolver.status(entry_id)

    def append_parents(self) -> list[bytes]:
        """The parents a credential issued now names: the heads of every admitted entry."""
        return self._resolver.heads()

    # -- sync queries (durable entries) ----------------------------------------

    def heads(self) -> list[bytes]:
        """Ids of the heads of the durable entries, sorted."""
        ids = self._dag.ids
        return sorted(ids[i] for i in self._durable_heads)

    def has(self, entry_id: bytes) -> bool:
        """Whether *entry_id* is a durable entry of this log."""
        i = self._dag.index_of(entry_id)
        return i is not None and i < self._durable

    def get(self, entry_id: bytes) -> bytes:
        """The credential (chain included) of durable entry *entry_id*; ``KeyError`` if none.

        Read from the file and checked against the record's CRC and id.
        """
        i = self._dag.index_of(entry_id)
        if i is None or i >= self._durable:
            raise KeyError(entry_id)
        self._open_fd()
        return self._read_bodies(i, i + 1)[0][ID_SIZE:]

    def ids_not_below(self, peer_heads: Iterable[bytes]) -> list[bytes]:
        """Durable ids, in file order, that are not ancestors-or-equal of *peer_heads*.

        What a peer whose heads are *peer_heads* lacks. Heads we do not
        know (or do not hold durably) are ignored.
        """
        index = self._dag.index_of
        known = [i for h in peer_heads if (i := index(h)) is not None and i < self._durable]
        ids = self._dag.ids
        return [ids[i] for i in self._dag.not_below(known, self._durable)]

    def haves(self, limit: int) -> list[bytes]:
        """Up to *limit* durable ids spread back from the newest (sync's ``haves``).

        The entries at file positions ``n-2, n-4, n-8, ...`` and then the
        genesis: a peer that holds one holds everything below it, so it can
        tell what we lack with few ids, denser near the newest entries.
        """
        ids, n = self._dag.ids, self._durable
        out: list[bytes] = []
        step = 2
        while len(out) < limit - 1 and n - step > 0:
            out.append(ids[n - step])
            step *= 2
        if n and limit > 0:
            out.append(ids[0])
        return out

    def raw_entries(self) -> list[bytes]:
        """Every durable credential in file order (a topological order).

        What a guest receives and passes to :meth:`create`. Each record is
        re-read and checked against its CRC and id.
        """
        self._open_fd()
        if not self._durable:
            return []
        return [b[ID_SIZE:] for b in self._read_bodies(0, self._durable)]

    def _open_fd(self) -> int:
        if self._fd is None:
            raise LogClosed(f"{self._path} is closed")
        return self._fd

    def _read_bodies(self, first: int, stop: int) -> list[bytes]:
        """Bodies of records at positions [first, stop) (all written), checked."""
        fd = self._open_fd()
        offsets, ids = self._offsets, self._dag.ids
        base = offsets[first]
        end = offsets[stop] if stop < len(offsets) else self._end
        data = pread_exact(fd, end - base, base)
        out = []
        for i in range(first, stop):
            off = offsets[i] - base
            if len(data) - off < REC_LEN:
                raise LogCorrupted("log changed on disk while open", offset=base + off)
            length, bcrc, _ = REC.unpack_from(data, off)
            body = data[off + REC_LEN : off + REC_LEN + length]
            if zlib.crc32(body) != bcrc or body[:ID_SIZE] != ids[i]:
                raise LogCorrupted("log changed on disk while open", offset=base + off)
            out.append(body)
        return out

    def _load_facts(self, positions: Sequence[int]) -> list[Fact]:
        """The DAG's loader: facts of restored entries, decoded from their records.

        The records were verified before the checkpoint vouching for them was
        written and the file prefix matched its digest on open; here each id
        is recomputed from the credential and must match the DAG's (so a
        record changed since cannot pass for another).
        """
        lo, hi = min(positions), max(positions)
        bodies = self._read_bodies(lo, hi + 1)
        out = []
        for i in positions:
            body = bodies[i - lo]
            try:
                cred = decode_credential(body[ID_SIZE:])
            except DecodeError as exc:
                raise LogCorrupted(f"record changed on disk: {exc}",
                                   offset=self._offsets[i]) from exc
            if cred.id != body[:ID_SIZE]:
                raise LogCorrupted("record changed on disk", offset=self._offsets[i])
            out.append(fact_of(cred))
        return out

    # -- change notification -----------------------------------------------------

    def subscribe(self, listener: Callable[[LogChange], None]) -> Callable[[], None]:
        """Call *listener* after every commit that made entries durable; returns an unsubscribe.

        Listeners run on the trio thread, synchronously, and must not block;
        an exception is logged and ignored.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def next_change(self) -> trio.Event:
        """An event set when entries next become durable (a fresh one after each change)."""
        return self._changed

    def _notify(self, first: int, stop: int) -> None:
        ids = self._dag.ids
        change = LogChange(tuple(ids[first:stop]), tuple(self.heads()), stop)
        event, self._changed = self._changed, trio.Event()
        event.set()
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                _log.exception("%s: a change listener failed", self._path)

    # -- appending ----------------------------------------------------------

    async def append(self, credential: Credential | bytes) -> bytes:
        """Admit a credential issued here and return its id once its record is fsynced.

        It must name the current heads (:meth:`append_parents`) as parents.
        Give the :class:`Credential` an ``issue_*`` function returned (its
        fields were checked when it was built and it encodes canonically, so
        it is not decoded again), or its bytes (decoded strictly).
        Raises ``CredentialError`` if it does not verify or its rules refuse it
        (nothing changes then: a local issuer never writes an entry it knows
        has no effect), :class:`LogPoisoned` if a write failed, and
        :class:`LogClosed` after :meth:`close`. Once admitted, the call
        finishes the commit even if cancelled (the cancellation is delivered
        afterwards): an entry in the state is always written or the log
        poisoned.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._usable()
        if isinstance(credential, Credential):
            cred, data = credential, credential.encode()
            _check_size(data)
            self._verifier.verify(cred)
        else:
            cred, data = _structure(credential, self._verifier), credential
        if not cred.parents:
            raise CredentialError("a log has one genesis", rule="duplicate_genesis")
        # From here to the queueing there is no await: this is the admission lock.
        pos = self._resolver.append(fact_of(cred))
        self._queue([(cred.id, data)])
        await self._wait_durable(pos + 1)
        return cred.id

    async def ingest(self, credentials: Sequence[bytes]) -> IngestResult:
        """Add credentials from a peer: verified, deduplicated, written as one batch.

        Each is verified structurally (size, encoding, chain, signature) before
        anything is written; one that fails is refused and reported (the
        sender broke the protocol), the others still go in. Entries already
        here are ignored; entries whose parents are missing are held in
        memory (bounded) until they arrive, and their missing parents
        reported. What can be added is written with one fsync; this returns
        once it is durable. Idempotent under duplicates and any delivery
        order. At most :data:`MAX_INGEST` credentials and
        :data:`MAX_INGEST_BYTES` bytes per call (``LocalProtocolError``).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._usable()
        if len(credentials) > MAX_INGEST or sum(
                len(c) if isinstance(c, bytes) else 0 for c in credentials) > MAX_INGEST_BYTES:
            raise LocalProtocolError(
                f"ingest takes at most {MAX_INGEST} credentials and {MAX_INGEST_BYTES} bytes")
        refused: list[Refusal] = []
        duplicates = 0
        todo: list[tuple[int, Credential, bytes]] = []
        root = self._dag.ids[0]
        seen: set[bytes] = set()
        batch_ids: dict[int, bytes] = {}
        for index, data in enumerate(credentials):
            try:
                if not isinstance(data, bytes) or len(data) > MAX_CREDENTIAL:
                    _structure(data, self._verifier)  # raises the precise refusal
                cred = decode_credential(data)
            except CredentialError as exc:
                refused.append(Refusal(index, None, exc.rule, str(exc)))
                continue
            cid = batch_ids[index] = cred.id
            if cid in self._resolver or cid in self._resolver.orphans or cid in seen:
                duplicates += 1  # known: no signature to check
                continue
            if not cred.parents and cid != root:
                refused.append(Refusal(index, cid, "duplicate_genesis",
                                       "a log has one genesis"))
                continue
            seen.add(cid)
            todo.append((index, cred, data))
        verified = await self._verify_batch(todo, refused)
        self._usable()  # it may have been closed or poisoned meanwhile
        # From here to the queueing there is no await.
        offered = self._resolver.offer((fact_of(cred), (cred.id, data))
                                       for cred, data in verified)
        by_id = {cred.id: index for index, cred, _ in todo}
        for fact, _ in offered.refused:
            refused.append(Refusal(by_id.get(fact.id, -1), fact.id, "log_full",
                                   f"the log holds {self._resolver.max_entries} entries"))
        items = [cast(tuple[bytes, bytes], payload) for _, payload in offered.added]
        if items:
            self._queue(items)
            await self._wait_durable(offered.added[-1][0] + 1)
        ids = self._dag.ids
        refused.sort(key=lambda r: r.index)
        for r in refused:
            batch_ids.pop(r.index, None)
        return IngestResult(tuple(ids[i] for i, _ in offered.added),
                            tuple(sorted(offered.missing)),
                            duplicates + offered.duplicates, tuple(refused),
                            tuple(batch_ids.values()))

    async def _verify_batch(self, todo: list[tuple[int, Credential, bytes]],
                            refused: list[Refusal]) -> list[tuple[Credential, bytes]]:
        def run() -> list[tuple[Credential, bytes, CredentialError | None]]:
            out: list[tuple[Credential, bytes, CredentialError | None]] = []
            for _, cred, data in todo:
                try:
                    self._verifier.verify(cred)
                    out.append((cred, data, None))
                except CredentialError as exc:
                    out.append((cred, data, exc))
            return out

        # Signatures dominate (about 0.1 ms each): a big batch is checked in a
        # worker thread so the event loop keeps serving meanwhile.
        checked = await trio.to_thread.run_sync(run) if len(todo) > _THREAD_VERIFY else run()
        ok = []
        for (index, _, _), (cred, data, exc) in zip(todo, checked, strict=True):
            if exc is None:
                ok.append((cred, data))
            else:
                refused.append(Refusal(index, cred.id, exc.rule, str(exc)))
        return ok

    def _queue(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Frame the admitted entries' records and queue them as one group (no await)."""
        try:
            records = []
            for entry_id, data in items:
                record = frame_record(entry_id + data)
                self._offsets.append(self._end)
                self._end += len(record)
                self._hasher.update(record)
                records.append(record)
            admitted = len(self._dag)
            ckpt = None
            if admitted >= self._next_snapshot:
                # The state is exactly the admitted entries now; it becomes the
                # checkpoint once they are all durable.
                ckpt = Checkpoint(
                    admitted, self._end, self._hasher.copy().digest(),
                    offsets_bytes(self._offsets, admitted), self._resolver.snapshot_fields())
                self._next_snapshot = admitted + self._checkpoint_gap(admitted)
        except BaseException as exc:
            self._poison_with(exc)  # the state holds entries nothing will write
            raise LogPoisoned("could not queue an admitted entry; reopen the log") from exc
        # A group is written whole, in one commit, and a crash tears at most one
        # commit (the torn-tail bound at reopen): an ingest that completed many
        # held entries is queued as several groups of at most MAX_COMMIT_BYTES.
        # Records go in file order, parents first, so any durable prefix is a DAG.
        parts: list[tuple[list[bytes], int]] = [([], 0)]
        for record in records:
            part, part_size = parts[-1]
            if part and part_size + len(record) > MAX_COMMIT_BYTES:
                parts.append(([], 0))
                part, part_size = parts[-1]
            part.append(record)
            parts[-1] = (part, part_size + len(record))
        with self._lock:
            count = admitted - len(records)
            for k, (part, part_size) in enumerate(parts):
                count += len(part)
                self._groups.append(_Group(part, part_size, count,
                                           ckpt if k == len(parts) - 1 else None))
            start = not self._committing
            self._committing = True
            if self._gather_target and len(self._groups) >= self._gather_target:
                self._gathered.set()
        if start:
            token = trio.lowlevel.current_trio_token()
            trio.lowlevel.start_thread_soon(lambda: self._commit_loop(token),
                                            lambda result: None)

    def _checkpoint_gap(self, count: int) -> int:
        # A snapshot costs O(log size); spacing them by a fraction of the log
        # keeps that O(1) per entry while bounding what a reopen after a crash
        # verifies past the checkpoint.
        return max(self._checkpoint_every, count // 64)

    def _commit_loop(self, token: trio.lowlevel.TrioToken) -> None:
        """The committer (a worker thread): write and sync what is queued, until nothing is.

        It takes the next batch the moment an fdatasync returns, without a
        round trip through the event loop: trio notices a finished thread
        only after the tasks it is running, and a commit that waits for that
        leaves the loop idle once every writer waits for it. The trio side
        learns of each commit through ``run_sync_soon`` (:meth:`_committed`).
        """
        fd, path = self._fd, self._path
        assert fd is not None
        while True:
            self._gather()
            with self._lock:
                batch: list[_Group] = []
                size = 0
                for g in self._groups:
                    if batch and size + g.size > MAX_COMMIT_BYTES:
                        break
                    batch.append(g)
                    size += g.size
                del self._groups[: len(batch)]
                if not batch:
                    self._committing = False
                    return
            start = self._written
            data = b"".join(r for g in batch for r in g.records)
            ckpt = next((g.checkpoint for g in reversed(batch) if g.checkpoint), None)
            try:
                wrote = commit(fd, data, start, path, ckpt)
            except BaseException as exc:
                # _committing stays set: no new committer starts on a failed log.
                token.run_sync_soon(self._commit_failed, exc)
                return
            self._written = start + len(data)
            token.run_sync_soon(self._committed, batch[-1].count, self._written,
                                ckpt.count if wrote and ckpt is not None else 0)

    def _gather(self) -> None:
        """In the committer: with many writers waiting, let a batch build up first.

        Writers wait for their own entries, so the number waiting says how
        many entries are coming. With few, commit at once (a lone append pays
        no delay). With many, wait until about a quarter of them queued (or
        :data:`_GATHER_MAX` passed): each commit costs the event loop a few
        GIL hand-offs with this thread, so one fdatasync per record would
        cost more than it saves.
        """
        target = min(len(self._waiters), _GATHER_BATCH)
        if len(self._groups) >= target:
            return
        self._gather_target = target
        self._gathered.clear()
        if len(self._groups) < target:  # _queue sets the event at the target
            self._gathered.wait(_GATHER_MAX)  # releases the GIL
        self._gather_target = 0

    def _committed(self, stop: int, end: int, checkpointed: int) -> None:
        """Trio side of a commit: entries up to position *stop* are durable."""
        if self._poison is not None:
            return
        self._commits += 1
        first = self._durable
        dag, heads = self._dag, self._durable_heads
        for i in range(first, stop):
            heads.difference_update(dag.parents(i))
            heads.add(i)
        self._durable = stop
        self._durable_end = end
        if checkpointed:
            self._checkpointed = checkpointed
        waiters = self._waiters
        while waiters and waiters[0][0] <= stop:
            trio.lowlevel.reschedule(waiters.popleft()[1])
        self._notify(first, stop)

    def _commit_failed(self, exc: BaseException) -> None:
        self._poison_with(exc)
        while self._waiters:  # they see the poison
            trio.lowlevel.reschedule(self._waiters.popleft()[1])

    async def _wait_durable(self, count: int) -> None:
        """Wait until the first *count* entries are durable; not cancellable.

        Waiters register in admission order (no await since their entries were
        queued), so the deque is sorted and a commit wakes exactly the waiters
        it made durable, not every writer. The wait refuses cancellation
        (``Abort.FAILED``): a cancelled caller still learns the outcome, and
        the cancellation is delivered at its next checkpoint -- a shield,
        without a cancel scope per append.
        """
        if self._durable < count and self._poison is None:
            self._waiters.append((count, trio.lowlevel.current_task()))
            await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        if self._durable < count:
            raise LogPoisoned(f"{self._path}: a write failed; reopen the log") \
                from self._poison

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

    # -- checkpoints and closing -----------------------------------------------

    def _checkpoint_if_behind(self) -> None:
        """Write a checkpoint now if the one on disk does not cover every entry.

        Only valid when nothing is in flight (the state equals the file).
        """
        count = self._durable
        if count <= self._checkpointed or self._poison is not None or count < len(self._dag):
            return
        ckpt = Checkpoint(count, self._durable_end, self._hasher.copy().digest(),
                           offsets_bytes(self._offsets, count), self._resolver.snapshot_fields())
        try:
            fsutil.atomic_write(checkpoint_path(self._path), ckpt.encode())
        except OSError as exc:  # the log stays authoritative; opening verifies more
            _log.warning("%s: could not write checkpoint: %s", self._path, exc)
            return
        self._checkpointed = count

    def close(self) -> None:
        """Write a final checkpoint (unless poisoned) and release the log. Idempotent."""
        if self._fd is None:
            return
        # The committer may still be winding down (nothing left to write):
        # only entries admitted and not yet durable keep the log open.
        if self._durable < len(self._dag) and self._poison is None:
            raise LocalProtocolError("close() while appends are in flight")
        try:
            self._checkpoint_if_behind()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)
            # The loader is a bound method: without this the log and its DAG
            # form a cycle that only the cyclic collector frees, later, and a
            # big log's collection is a pause of its own.
            self._dag.set_loader(None)

    def __enter__(self) -> SpaceLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SpaceLog {str(self._path)!r} entries={self._durable}>"


def _refuse_abort(raise_cancel: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _restored_facts(fd: int, offsets: array[int], ids: Sequence[bytes], end: int,
                    positions: Sequence[int]) -> list[Fact]:
    """Facts of checkpointed records while the log opens (as :meth:`SpaceLog._load_facts`).

    *end* is where the checkpointed records end; each record's CRC and id are
    checked again.
    """
    lo, hi = min(positions), max(positions)
    base = offsets[lo]
    data = pread_exact(fd, (offsets[hi + 1] if hi + 1 < len(offsets) else end) - base, base)
    out = []
    for i in positions:
        off = offsets[i] - base
        length, bcrc, _ = REC.unpack_from(data, off)
        body = data[off + REC_LEN : off + REC_LEN + length]
        try:
            if zlib.crc32(body) != bcrc or body[:ID_SIZE] != ids[i]:
                raise DecodeError("record changed on disk")
            cred = decode_credential(body[ID_SIZE:])
            if cred.id != ids[i]:
                raise DecodeError("record changed on disk")
        except DecodeError as exc:
            raise LogCorrupted(f"record changed on disk: {exc}", offset=offsets[i]) from exc
        out.append(fact_of(cred))
    return out


def _verify_record(body: bytes, resolver: Resolver, verifier: CredentialVerifier) -> Fact:
    """Verify a record read on open: id, credential, parents earlier, one genesis."""
    cred = _structure(body[ID_SIZE:], verifier)
    if cred.id != body[:ID_SIZE]:
        raise DecodeError("the record's id is not its credential's id")
    if cred.id in resolver:
        raise DecodeError("the same entry twice")
    if len(resolver) and not cred.parents:
        raise CredentialError("a log has one genesis", rule="duplicate_genesis")
    if any(p not in resolver for p in cred.parents):
        raise DecodeError("a record comes before one of its parents")
    return fact_of(cred)
