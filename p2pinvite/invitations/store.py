"""The durable invitation store: one append-only record file per invitation.

Theory of operation
-------------------
Every invitation lives in ``<dir>/<id hex>.inv`` (0600, in a 0700 directory):
a magic header and then *frames*, each a complete record; the last intact
frame is the current record. The file is born (and re-born) whole with
:func:`p2pinvite.fsutil.atomic_write` -- temporary file, fsync, rename,
directory fsync -- on create, on revoke and when it has grown long
(compaction). The frequent changes on a guest's path (a failed attempt
counted, a use committed) *append* one frame and ``fdatasync`` it: one
flush, no rename, no directory sync, which matters because a refusal waits
for the first and every admission's record for the second.

A crash during an append can leave a torn frame after the last intact one.
That frame was never acknowledged (the method had not returned), so opening
the store drops it (truncating the file) and the previous record stands.
Frames are only ever written past the last intact one, so damage can only be
at the tail; a file whose *first* frame is damaged has no record and is
quarantined (below). Revocation rewrites the file instead of appending, so a
revoke is never the frame a torn tail could take back.

The in-memory copy is updated only after the write succeeded, so memory never
runs ahead of the disk -- with two deliberate exceptions, each waiting in
memory for the record's next write (:meth:`InvitationStore.flush`): a failed
attempt (``count_failed_attempt``), which must bind concurrent guests at once
and which the host makes durable before it answers the guess; and a use whose
admission is already durable in a log (``commit_use(durable=False)``),
because the invitations manager recounts uses from the logs at start.

Two counters need care because a guest controls when connections drop:

* **Attempts (counted before anyone hears the answer).** The host checks a
  proof only while the invitation is usable, and counts a wrong one in
  memory in the same step (:meth:`InvitationStore.count_failed_attempt`), so
  concurrent guesses can never exceed ``max_attempts``; it then writes the
  record (:meth:`InvitationStore.flush`) and only then sends the refusal. A
  guest that drops the connection has sent its proof already and pays for
  it; a host that crashes before the write has told no one the answer.
  There is no free guess, and a right proof writes nothing.
* **Uses (reserve, then commit).** :meth:`InvitationStore.reserve_use` holds
  one use in memory while the admission runs, refusing when ``uses +
  reserved >= max_uses``; :meth:`InvitationStore.commit_use` persists it and
  :meth:`InvitationStore.release` gives it back. A single-use invitation raced
  by many guests has at most one reservation at a time, so it admits exactly
  one. Reservations are not persisted: a crash releases them, which is right,
  since nothing was committed. A reservation taken before a revocation or the
  expiry may still be committed: the admission was decided when it was taken.

Methods are synchronous and quick (one small append and flush); a
:class:`threading.Lock` makes each one atomic, so callers may run them on the
trio thread or in ``trio.to_thread``. Time is always a ``now`` argument, never
read from the clock here, so tests and trio's autojump clock control it.

Damaged records
---------------
A record file that cannot be decoded (bad magic, no intact first frame, a
frame that is not a valid record, or a name that does not match its id) is
*quarantined* by default: renamed to
``<name>.corrupt`` for the operator, logged as a warning, and the store
starts without it. That fails safe, since an invitation without a record is
"unknown" and admits nobody. ``quarantine_corrupt=False`` makes
:meth:`InvitationStore.open` raise :class:`InvitationRecordCorrupted` instead.
Wrong permissions are never quarantined: a record readable by others may have
leaked its secret, so opening refuses with a StorageError.

Retention
---------
Records are never deleted as a side effect: a finished invitation (revoked,
expired, exhausted, locked) stays listed so its owner can see what became of
it. :meth:`InvitationStore.prune` deletes the records that have been finished
for a retention period (:func:`finished_at` says since when). A deletion is
one ``unlink`` followed by a directory fsync: the file is never modified
first, so a crash leaves each record present and whole, or gone. An id whose
record is gone is "unknown" and admits nobody, exactly like a finished one.
"""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import logging
import math
import os
import re
import secrets
import threading
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import DecodeError, InvitationError, LocalProtocolError, StorageError
from ..fsutil import atomic_write, ensure_private_dir, fsync_dir, pwrite_all, read_private
from .codes import ShortCode, generate_pin, is_trivial_digits
from .model import (
    DEFAULT_EXPIRY_LINK,
    DEFAULT_EXPIRY_SHORT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_ATTEMPTS_SHORT,
    MAX_ACCEPTED_RECORDED,
    AuthMethod,
    InvalidInvitation,
    Invitation,
    InvitationKind,
    InvitationStatus,
)

__all__ = [
    "FILE_MAGIC",
    "InvitationPruneFailed",
    "InvitationRecordCorrupted",
    "InvitationStore",
    "Reservation",
    "finished_at",
]

_log = logging.getLogger(__name__)

#: First 8 bytes of every record file: name and format version.
FILE_MAGIC: Final = b"p2pinv\x00\x02"
_SUFFIX: Final = ".inv"
_NAME_RE: Final = re.compile(r"^[0-9a-f]{32}\.inv$")
# atomic_write's temporary files: ".<name>.<pid>.tmp"
_TMP_RE: Final = re.compile(r"^\.[0-9a-f]{32}\.inv\.\d+\.tmp$")
_MAX_FILE: Final = 512 * 1024
# A file this long (frames or bytes) is rewritten whole instead of appended to:
# it bounds the file and the work of reading it at open.
_COMPACT_FRAMES: Final = 64
_COMPACT_BYTES: Final = 64 * 1024


class InvitationRecordCorrupted(StorageError):
    """A record file cannot be decoded; ``path`` names it."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class InvitationPruneFailed(StorageError):
    """:meth:`InvitationStore.prune` stopped at a record it could not delete.

    ``removed`` holds the ids deleted before the failure (gone from disk and
    from memory); every other record is untouched, in memory and on disk.
    """

    def __init__(self, message: str, *, removed: tuple[bytes, ...]) -> None:
        super().__init__(message)
        self.removed = removed


def finished_at(inv: Invitation, now: float) -> float | None:
    """Since when *inv* is finished for good at *now*, or ``None`` if it is still usable.

    * revoked: ``revoked_at``;
    * locked: ``locked_at`` (when its last attempt was spent);
    * expired: ``expires_at``;
    * exhausted: the latest ``accepted_by`` time (the use that exhausted it),
      or ``expires_at`` if the record names no one (a record keeps the most
      recent uses only).

    A use may still be committed after the invitation finished (a reservation
    taken before it), so the latest ``accepted_by`` time is a floor for every
    status: a record is kept at least as long after its last recorded use.
    """
    status = inv.status(now)
    if status is InvitationStatus.REVOKED:
        assert inv.revoked_at is not None
        since = inv.revoked_at
    elif status is InvitationStatus.LOCKED:
        assert inv.locked_at is not None
        since = inv.locked_at
    elif status in (InvitationStatus.EXPIRED, InvitationStatus.EXHAUSTED):
        since = inv.expires_at
    else:
        return None
    if inv.accepted_by:
        last_use = max(at for _, at in inv.accepted_by)
        since = last_use if status is InvitationStatus.EXHAUSTED else max(since, last_use)
    return since


@dataclass(frozen=True, slots=True)
class Reservation:
    """One use of an invitation held by an admission in progress (memory only)."""

    invitation_id: bytes
    token: int


def _frame(inv: Invitation) -> bytes:
    """One frame: length (4 bytes, big-endian), the record, CRC-32 of length and record."""
    body = inv.to_bytes()
    head = len(body).to_bytes(4, "big")
    return head + body + zlib.crc32(head + body).to_bytes(4, "big")


@dataclass(slots=True)
class _Tail:
    """Where a record file's next frame goes, and how many frames it holds."""

    end: int
    frames: int


@dataclass(frozen=True, slots=True)
class _Decoded:
    record: Invitation
    tail: _Tail
    torn: int  # bytes after the last intact frame (a torn append)


def _decode_file(data: bytes) -> _Decoded:
    # The CRC tells a torn append from a whole frame; it also catches bit rot
    # that would otherwise decode into plausible but wrong counters.
    if not data.startswith(FILE_MAGIC):
        raise DecodeError("not an invitation record (bad magic)")
    off, last, frames = len(FILE_MAGIC), None, 0
    while off + 8 <= len(data):
        n = int.from_bytes(data[off:off + 4], "big")
        end = off + 8 + n
        if end > len(data) or zlib.crc32(data[off:end - 4]) != int.from_bytes(
                data[end - 4:end], "big"):
            break  # the first damaged frame: a torn append, everything from here
        last, frames, off = data[off + 4:end - 4], frames + 1, end
    if last is None:
        raise DecodeError("no intact record frame")
    return _Decoded(Invitation.from_bytes(last), _Tail(off, frames), len(data) - off)


def _append_frame(path: Path, frame: bytes, offset: int) -> None:
    """Write *frame* at *offset* of the existing file *path* and fdatasync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        pwrite_all(fd, frame, offset)
        # fdatasync also makes the new file size durable: nothing else is needed
        # to read the frame back after a crash (no rename, no directory entry).
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _unknown(inv_id: bytes) -> InvitationError:
    return InvitationError(f"no invitation {inv_id.hex()}", reason="unknown")


class InvitationStore:
    """Durable invitation records under one private directory.

    Open with :meth:`open`. Every mutating method has persisted its effect
    (fsync) when it returns, except the two that leave the record for
    :meth:`flush` (``count_failed_attempt``, ``commit_use(durable=False)``).
    Unknown ids raise :class:`~p2pinvite.errors.InvitationError` with ``reason="unknown"``;
    precise reasons are for the local owner only
    (:func:`~p2pinvite.invitations.model.refusal_for_peer` maps them for
    remote peers).
    """

    def __init__(self, directory: Path, records: dict[bytes, Invitation],
                 quarantined: tuple[Path, ...], tails: dict[bytes, _Tail] | None = None,
                 ) -> None:
        """Use :meth:`open`; this constructor trusts its arguments."""
        self._dir = directory
        self._records = records
        # Where each file's next frame goes; a record without one is rewritten.
        self._tails: dict[bytes, _Tail] = tails if tails is not None else {}
        self._quarantined = quarantined
        self._lock = threading.Lock()
        self._reserved: dict[bytes, set[int]] = {}
        self._tokens = itertools.count(1)
        # Records whose in-memory copy holds a change not yet written: a failed
        # attempt about to be flushed, or a use already durable in a log (see flush()).
        self._dirty: set[bytes] = set()

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, quarantine_corrupt: bool = True) -> InvitationStore:
        """Load every record under *directory* (created 0700 if missing).

        Raises :class:`~p2pinvite.errors.StorageError` if the directory or a
        record is accessible by others, and :class:`InvitationRecordCorrupted`
        for an undecodable record when *quarantine_corrupt* is false.
        """
        directory = ensure_private_dir(Path(directory))
        records: dict[bytes, Invitation] = {}
        tails: dict[bytes, _Tail] = {}
        quarantined: list[Path] = []
        for path in sorted(directory.iterdir()):
            name = path.name
            if _TMP_RE.match(name):
                # A write that crashed before its rename: the record it was
                # replacing is intact. Remove the leftover (it holds secrets).
                path.unlink(missing_ok=True)
                continue
            if not _NAME_RE.match(name):
                continue  # quarantined files, or foreign files: not ours to judge
            data = read_private(path, max_size=_MAX_FILE)  # refuses wrong modes
            try:
                decoded = _decode_file(data)
                inv = decoded.record
                if inv.id.hex() + _SUFFIX != name:
                    raise DecodeError("file name does not match the record's id")
            except DecodeError as exc:
                err = InvitationRecordCorrupted(f"corrupt invitation record: {exc}", path=path)
                if not quarantine_corrupt:
                    raise err from None
                target = path.with_name(name + ".corrupt")
                try:
                    os.replace(path, target)
                except OSError as move_exc:
                    raise StorageError(f"{path}: cannot quarantine: {move_exc}") from None
                _log.warning("%s; moved to %s, invitation unavailable", err, target.name)
                quarantined.append(target)
                continue
            if decoded.torn:
                _drop_torn_tail(path, decoded)
            records[inv.id] = inv
            tails[inv.id] = decoded.tail
        return cls(directory, records, tuple(quarantined), tails)

    @property
    def directory(self) -> Path:
        """The directory holding the record files."""
        return self._dir

    @property
    def quarantined(self) -> tuple[Path, ...]:
        """Record files moved aside as corrupt when the store was opened."""
        return self._quarantined

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, inv_id: object) -> bool:
        return inv_id in self._records

    # -- creating, reading, revoking ----------------------------------------

    def create(
        self,
        *,
        kind: InvitationKind,
        target: bytes,
        created_by: bytes,
        now: float,
        role: str | None = None,
        auth: AuthMethod = AuthMethod.NONE,
        expires_at: float | None = None,
        max_uses: int | None = 1,
        max_attempts: int | None = None,
        note: str = "",
        pin: str | None = None,
        short_code: ShortCode | None = None,
        admission_key: bytes | None = None,
        taken_discriminators: Collection[str] = (),
    ) -> Invitation:
        """Create, persist and return a new invitation.

        Defaults: expiry now + 7 days (15 minutes for auth ``short``), one use,
        3 attempts (20 for ``short``). For auth ``pin`` a PIN is generated
        unless *pin* is given; for ``short`` a code with a discriminator no
        other usable short invitation here has and not in
        *taken_discriminators* (the caller's topics still in use, e.g. a
        finished invitation still answering), unless *short_code* is given;
        auth ``key`` requires *admission_key*. Inconsistent arguments raise
        :class:`~p2pinvite.invitations.model.InvalidInvitation`.
        """
        if not isinstance(auth, AuthMethod):
            raise InvalidInvitation("auth must be an AuthMethod")
        is_short = auth is AuthMethod.SHORT
        if expires_at is None:
            expires_at = now + (DEFAULT_EXPIRY_SHORT if is_short else DEFAULT_EXPIRY_LINK)
        if not isinstance(expires_at, int | float) or not expires_at > now:
            raise InvalidInvitation("expires_at must be in the future")
        if max_attempts is None:
            max_attempts = DEFAULT_MAX_ATTEMPTS_SHORT if is_short else DEFAULT_MAX_ATTEMPTS
        if pin is not None and auth is not AuthMethod.PIN:
            raise InvalidInvitation("a pin is only used with auth pin")
        if short_code is not None and not is_short:
            raise InvalidInvitation("a short code is only used with auth short")
        if pin is not None and (not isinstance(pin, str) or is_trivial_digits(pin)):
            raise InvalidInvitation("the pin must be 6 digits, not a trivial pattern")
        with self._lock:
            if auth is AuthMethod.PIN and pin is None:
                pin = generate_pin()
            if is_short and short_code is None:
                short_code = self._fresh_short_code(now, taken_discriminators)
            inv = Invitation(
                id=self._fresh_id(),
                kind=kind,
                target=target,
                role=role,
                auth=auth,
                secret=secrets.token_bytes(32),
                created_at=now,
                expires_at=expires_at,
                created_by=created_by,
                pin=pin,
                short_discriminator=None if short_code is None else short_code.discriminator,
                short_secret=None if short_code is None else short_code.secret,
                admission_key=admission_key,
                max_uses=max_uses,
                max_attempts=max_attempts,
                note=note,
            )
            self._write(inv)
            return inv

    def _fresh_id(self) -> bytes:
        while (inv_id := secrets.token_bytes(16)) in self._records:
            pass  # 2**-128 per pair; the loop is for correctness, not likelihood
        return inv_id

    def _fresh_short_code(self, now: float, also_taken: Collection[str]) -> ShortCode:
        # The discriminator is what the host advertises; two usable short
        # invitations sharing one would make the guest try both secrets.
        taken = {inv.short_discriminator for inv in self._records.values()
                 if inv.auth is AuthMethod.SHORT and inv.is_usable(now)}
        taken.update(also_taken)
        for _ in range(1000):
            code = ShortCode.generate()
            if code.discriminator not in taken:
                return code
        raise InvalidInvitation("no free short-code discriminator")  # 1000 live codes?

    def get(self, inv_id: bytes) -> Invitation:
        """The current record of *inv_id* (``InvitationError(reason="unknown")`` if none)."""
        inv = self._records.get(inv_id)
        if inv is None:
            raise _unknown(inv_id)
        return inv

    def find_short(self, discriminator: str, now: float) -> builtins.list[Invitation]:
        """Usable short-code invitations advertising *discriminator*."""
        return [inv for inv in self._records.values()
                if inv.short_discriminator == discriminator and inv.is_usable(now)]

    def list(self, now: float, *, include_all: bool = False) -> builtins.list[Invitation]:
        """Usable invitations (PENDING or ACCEPTED), or every record with *include_all*.

        Ordered by creation time, oldest first.
        """
        out = [inv for inv in self._records.values() if include_all or inv.is_usable(now)]
        out.sort(key=lambda inv: (inv.created_at, inv.id))
        return out

    def revoke(self, inv_id: bytes, *, by: bytes, now: float) -> Invitation:
        """Revoke *inv_id*, keeping the record as a tombstone; return it.

        Revoking an already revoked invitation is a no-op that returns the
        existing tombstone (the first revocation's time and author stay): an
        owner retrying after a timeout must not get an error. Revoking an
        expired, locked or exhausted invitation is allowed and recorded.
        """
        with self._lock:
            inv = self.get(inv_id)
            if inv.revoked_at is not None:
                return inv
            new = dataclasses.replace(inv, revoked_at=now, revoked_by=by)
            self._write(new, rewrite=True)  # never the frame a torn tail takes back
            return new

    def check_usable(self, inv_id: bytes, now: float) -> Invitation:
        """Return the record if it may admit someone at *now*, else raise.

        Raises :class:`~p2pinvite.errors.InvitationError` with the precise
        reason (``unknown``, ``revoked``, ``locked``, ``exhausted``,
        ``expired``). Reservations in progress are not counted: this answers
        "is the invitation still open", which is what ``validate`` shows.
        """
        inv = self.get(inv_id)
        err = inv.refusal(now)
        if err is not None:
            raise err
        return inv

    def check_resumable(self, inv_id: bytes, now: float) -> Invitation:
        """Return the record if its admitted guests may still resume at *now*, else raise.

        That is an exhausted invitation (every use taken, not revoked, not
        locked): only a guest it already admitted gets anything from it.
        Raises :class:`~p2pinvite.errors.InvitationError` with the status as
        the reason otherwise.
        """
        inv = self.get(inv_id)
        status = inv.status(now)
        if status is not InvitationStatus.EXHAUSTED:
            raise InvitationError(f"invitation {inv_id.hex()} is {status.value}",
                                  reason=status.value)
        return inv

    # -- authentication attempts -------------------------------------------

    def count_failed_attempt(self, inv_id: bytes, now: float) -> int:
        """Count one wrong proof at *now*, in memory, at once; return the attempts left.

        Concurrent guests see the smaller budget immediately (the invitation is
        locked in memory when none are left). The record is marked dirty: the
        caller must :meth:`flush` it -- durably -- before it tells the guest
        anything, so that whoever learns a guess was wrong has paid for it.
        Until then a crash forgets the count, and no one learnt the answer.
        Raises InvitationError: ``unknown`` for an unknown id, ``locked`` if no
        attempt is left (the caller checks usability, in the same step, before
        it looks at the proof, so this is a bug guard). Other statuses are not
        checked: a proof checked before a revocation or the expiry still counts.
        """
        with self._lock:
            inv = self.get(inv_id)
            if inv.attempts_left == 0:
                raise InvitationError(f"invitation {inv_id.hex()}: no attempt left",
                                      reason="locked")
            failed = inv.failed_attempts + 1
            new = dataclasses.replace(inv, failed_attempts=failed,
                                      locked_at=now if failed >= inv.max_attempts else None)
            self._records[inv_id] = new
            self._dirty.add(inv_id)
            return new.attempts_left

    # -- uses --------------------------------------------------------------------

    def reserve_use(self, inv_id: bytes, now: float) -> Reservation:
        """Hold one use of *inv_id* for an admission in progress.

        Raises InvitationError with the precise reason when the invitation is
        not usable, and ``reason="reserved"`` when every remaining use is
        already held by other admissions (retry after they finish).
        """
        with self._lock:
            inv = self.check_usable(inv_id, now)
            held = self._reserved.setdefault(inv_id, set())
            if inv.max_uses is not None and inv.uses + len(held) >= inv.max_uses:
                if not held:
                    del self._reserved[inv_id]
                raise InvitationError(
                    f"invitation {inv_id.hex()}: every remaining use is being admitted",
                    reason="reserved",
                )
            token = next(self._tokens)
            held.add(token)
            return Reservation(inv_id, token)

    def commit_use(self, reservation: Reservation, accepted_by: bytes, now: float, *,
                   durable: bool = True) -> Invitation:
        """Turn *reservation* into a recorded use by identity *accepted_by*; persisted.

        Raises LocalProtocolError if the reservation was already committed or
        released. On a write failure the reservation stays held (release it).

        With ``durable=False`` the use is counted in memory only (at once, so
        no other admission can take it) and the record is marked dirty for
        :meth:`flush`. That is for a use whose admission is already durable
        elsewhere -- the credential in the log, from which the invitations
        manager recounts uses at start -- so a crash before the flush loses
        nothing.
        """
        with self._lock:
            held = self._reserved.get(reservation.invitation_id)
            if held is None or reservation.token not in held:
                raise LocalProtocolError("reservation is not held (committed or released)")
            inv = self.get(reservation.invitation_id)
            accepted = (*inv.accepted_by, (accepted_by, now))[-MAX_ACCEPTED_RECORDED:]
            new = dataclasses.replace(inv, uses=inv.uses + 1, accepted_by=accepted)
            if durable:
                self._write(new)
            else:
                self._records[inv.id] = new
                self._dirty.add(inv.id)
            self._drop_token(reservation)
            return new

    def flush(self, inv_id: bytes) -> bool:
        """Persist *inv_id*'s record if memory holds an unwritten change; return whether it wrote.

        Such changes come from :meth:`count_failed_attempt` and
        ``commit_use(durable=False)``. When this returns (without raising) the
        disk holds every change made in memory before the call, whichever
        call wrote it.
        """
        with self._lock:
            if inv_id not in self._dirty:
                return False
            self._write(self.get(inv_id))
            return True

    def is_dirty(self, inv_id: bytes) -> bool:
        """Whether memory holds a change of *inv_id* not yet on disk (see :meth:`flush`)."""
        return inv_id in self._dirty

    def release(self, reservation: Reservation) -> None:
        """Give back an uncommitted reservation; a no-op if committed or released.

        Idempotent so a driver can call it unconditionally in ``finally``.
        """
        with self._lock:
            self._drop_token(reservation)

    def reserved(self, inv_id: bytes) -> int:
        """How many uses of *inv_id* are currently held by admissions in progress."""
        return len(self._reserved.get(inv_id, ()))

    def _drop_token(self, reservation: Reservation) -> None:
        held = self._reserved.get(reservation.invitation_id)
        if held is not None:
            held.discard(reservation.token)
            if not held:
                del self._reserved[reservation.invitation_id]

    # -- retention ---------------------------------------------------------------

    def prune(self, now: float, *, retention: float,
              skip: Collection[bytes] = ()) -> builtins.list[bytes]:
        """Delete the records finished for at least *retention* seconds at *now*.

        Returns the ids deleted, oldest created first. "Finished since" is
        :func:`finished_at`. Never deleted: usable invitations, records with a
        use reserved (:meth:`reserved`) or an unwritten change (:meth:`is_dirty`),
        and the ids in *skip*: the caller's handshakes in progress, which the
        store cannot see. (One matters even for a finished record: a guest the
        exhausted invitation admitted may be resuming its admission.)

        Each record is unlinked and then forgotten; the directory is fsynced
        once after the last unlink, so the deletions are durable when this
        returns. A record whose file is already gone is forgotten too. The
        first unlink that fails stops the pass and raises
        :class:`InvitationPruneFailed`, with the ids already deleted; so does a
        failed directory fsync (the unlinked records are forgotten: they are
        gone from the directory, and a crash can only bring one back whole,
        for the next pass to delete again).
        """
        if (not isinstance(retention, int | float) or isinstance(retention, bool)
                or not math.isfinite(retention) or retention < 0):
            raise LocalProtocolError("retention must be a finite number of seconds >= 0")
        skip = frozenset(skip)
        with self._lock:
            doomed = sorted(
                (inv for inv in self._records.values()
                 if inv.id not in skip and inv.id not in self._reserved
                 and inv.id not in self._dirty
                 and (since := finished_at(inv, now)) is not None
                 and now - since >= retention),
                key=lambda inv: (inv.created_at, inv.id))
            removed: builtins.list[bytes] = []
            error: str | None = None
            for inv in doomed:
                path = self._dir / (inv.id.hex() + _SUFFIX)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # already gone (by hand?): the disk agrees with forgetting it
                except OSError as exc:
                    error = f"{path}: cannot delete invitation record: {exc}"
                    break
                removed.append(inv.id)
            if removed:
                gone = frozenset(removed)
                # Rebind rather than delete in place: list() and find_short() read
                # the dict without the lock (on the trio thread) and must not see
                # it change size under them.
                self._records = {k: v for k, v in self._records.items() if k not in gone}
                for inv_id in removed:
                    self._tails.pop(inv_id, None)
                try:
                    fsync_dir(self._dir)
                except OSError as exc:
                    error = error or f"{self._dir}: cannot sync invitation record deletions: {exc}"
            if error is not None:
                raise InvitationPruneFailed(error, removed=tuple(removed))
            return removed

    # -- disk ------------------------------------------------------------------

    def _write(self, inv: Invitation, *, rewrite: bool = False) -> None:
        """Persist *inv* (append a frame, or rewrite the file), then adopt it in memory."""
        path = self._dir / (inv.id.hex() + _SUFFIX)
        frame = _frame(inv)
        tail = self._tails.get(inv.id)
        try:
            if (rewrite or tail is None or tail.frames >= _COMPACT_FRAMES
                    or tail.end + len(frame) > _COMPACT_BYTES):
                atomic_write(path, FILE_MAGIC + frame)
                tail = self._tails[inv.id] = _Tail(len(FILE_MAGIC) + len(frame), 1)
            else:
                _append_frame(path, frame, tail.end)
                tail.end += len(frame)
                tail.frames += 1
        except OSError as exc:
            # What reached the file is unknown: the next write rewrites it whole.
            # A leftover temporary file, if any, is removed by the next open().
            self._tails.pop(inv.id, None)
            raise StorageError(f"{path}: cannot write invitation record: {exc}") from None
        self._records[inv.id] = inv
        self._dirty.discard(inv.id)


def _drop_torn_tail(path: Path, decoded: _Decoded) -> None:
    """Cut a torn append off *path*, so the next frame follows the last intact one."""
    _log.warning("%s: dropping a torn record frame (%d bytes); the previous record stands",
                 path.name, decoded.torn)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, decoded.tail.end)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"{path}: cannot truncate a torn record frame: {exc}") from None
