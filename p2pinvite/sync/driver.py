"""The trio driver of sync: one :class:`~.session.SyncSession` on one member connection.

Theory of operation
-------------------
:func:`run_sync` runs two tasks on an authenticated
:class:`~p2pinvite.net.secure.SecureStream` (the membership check is done
before it is called) until the connection ends:

* the **reader** reads one message at a time (at most
  :data:`~.messages.MAX_MESSAGE` bytes), feeds it to the session and, when
  the session asks, awaits ``replica.ingest`` and hands the result back.
  It reads nothing while an ingest runs: the peer's writes wait in the
  stream, which is the backpressure a slow disk puts on the peer;
* the **writer** asks the session for one step's messages
  (:meth:`~.session.SyncSession.data_to_send`), sends them in one write
  (``send_messages``), and asks again; with nothing to send it sleeps until
  a message arrives or the replica changes. The session builds a batch only
  when the writer can send it, so nothing piles up behind a slow peer.

The reader never waits for the writer and the writer never waits for the
reader, so two peers pushing large batches at each other cannot deadlock.
The replica's change callback (a local append, or an ingest from any peer)
marks the session stale and wakes the writer, which announces our new heads
and pushes what the peer lacks.

Errors are turned into ours at the edge: the peer's end-of-stream marker,
a broken connection or a write stuck past *send_timeout* end the session
and :func:`run_sync` returns a :class:`SyncResult` saying which; a peer that
breaks the protocol (bad bytes on the secure stream, a malformed or
misplaced message, entries the replica refuses) makes it close the stream
and raise that :class:`~p2pinvite.errors.RemoteProtocolError`. Nothing a
peer sent reaches the replica except through ``ingest``, which verifies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from ..errors import ConnectionClosed, RemoteProtocolError
from ..net.secure import ConnectionBroken, SecureStream
from .messages import MAX_MESSAGE
from .replica import Replica
from .session import IngestEntries, SyncSession, SyncStats

__all__ = ["DEFAULT_SEND_TIMEOUT", "SyncProgress", "SyncResult", "run_sync"]

log = logging.getLogger("p2pinvite.sync")

#: Longest one write may take before the connection is given up (seconds).
DEFAULT_SEND_TIMEOUT: Final = 60.0
# After a failed write, how long the reader may take to report the end itself.
_READER_GRACE: Final = 2.0


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """Where one session stands, after each message read and each write.

    ``synced``: the peer's last heads equal ours. ``last_synced``: the
    *clock* value when that was last seen (``None``: not yet).
    """

    stats: SyncStats
    synced: bool
    last_synced: float | None


@dataclass(frozen=True, slots=True)
class SyncResult:
    """How a session ended: its counters, why, and when it was last in sync.

    ``end``: ``"closed"`` (the peer ended the stream), ``"broken: ..."``
    (the connection failed), ``"send timeout"`` or ``"closed locally"``.
    """

    stats: SyncStats
    end: str
    last_synced: float | None


class _Driver:
    def __init__(self, stream: SecureStream, replica: Replica,
                 on_progress: Callable[[SyncProgress], None] | None,
                 clock: Callable[[], float], send_timeout: float) -> None:
        self.stream = stream
        self.replica = replica
        self.session = SyncSession(replica)
        self.on_progress = on_progress
        self.clock = clock
        self.send_timeout = send_timeout
        self.wake = trio.Event()
        self.end = "closed locally"
        self.error: Exception | None = None
        self.last_synced: float | None = None

    def _changed(self) -> None:
        self.session.replica_changed()
        self.wake.set()

    def _report(self) -> None:
        synced = self.session.synced
        if synced:
            self.last_synced = self.clock()
        if self.on_progress is not None:
            self.on_progress(SyncProgress(self.session.stats, synced, self.last_synced))

    async def run(self) -> SyncResult:
        self.session.start()
        unsubscribe = self.replica.subscribe(self._changed)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery.cancel_scope)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            unsubscribe()
            self.session.close(self.end)
        if self.error is not None:
            if isinstance(self.error, RemoteProtocolError):
                log.info("sync: peer dropped: %s", self.error)
                await self.stream.aclose()
            raise self.error
        return SyncResult(self.session.stats, self.end, self.last_synced)

    async def _reader(self) -> None:
        session = self.session
        while True:
            try:
                data = await self.stream.receive_message(MAX_MESSAGE)
            except ConnectionBroken as exc:
                self.end = f"broken: {exc.reason}"
                return
            except ConnectionClosed:
                self.end = "closed"
                return
            except trio.ClosedResourceError:
                self.end = "closed locally"
                return
            except trio.BrokenResourceError as exc:
                self.end = f"broken: {exc}"
                return
            except RemoteProtocolError as exc:  # the secure stream judged the bytes
                if self.error is None:
                    self.error = exc
                return
            try:
                for ev in session.receive_message(data):
                    assert isinstance(ev, IngestEntries)
                    session.ingested(await self.replica.ingest(ev.entries))
                self.wake.set()
                self._report()
            except Exception as exc:  # the peer's fault, or a local one (storage, a callback)
                if self.error is None:
                    self.error = exc
                return

    async def _writer(self, scope: trio.CancelScope) -> None:
        try:
            await self._write_loop(scope)
        except Exception as exc:  # a local failure (the replica, a progress callback)
            if self.error is None:
                self.error = exc
            scope.cancel()

    async def _write_loop(self, scope: trio.CancelScope) -> None:
        session = self.session
        while True:
            # A new event before looking: a change after the look sets it, so none is missed.
            self.wake = trio.Event()
            messages = session.data_to_send()
            if not messages:
                await self.wake.wait()
                continue
            try:
                with trio.fail_after(self.send_timeout):
                    await self.stream.send_messages([m.data for m in messages])
            except trio.TooSlowError:
                self.end = "send timeout"
                scope.cancel()
                return
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.end = f"broken: {getattr(exc, 'reason', exc)}"
                # The reader sees the same end, or the cause of it (the peer's bad bytes
                # that made the stream close the transport under this write): let it say
                # which, instead of cancelling it in the middle.
                scope.deadline = min(scope.deadline, trio.current_time() + _READER_GRACE)
                return
            self._report()


async def run_sync(
    stream: SecureStream,
    replica: Replica,
    *,
    on_progress: Callable[[SyncProgress], None] | None = None,
    clock: Callable[[], float] = time.time,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
) -> SyncResult:
    """Sync *replica* with the peer at the other end of *stream* until the connection ends.

    Both sides call it on a member connection (after the membership check).
    Returns when the peer ends the stream, the connection breaks or a write
    takes longer than *send_timeout* seconds (:class:`SyncResult` says
    which); runs forever otherwise, exchanging new entries as either replica
    changes, until cancelled. The caller owns *stream* and closes it after.

    *on_progress* is called (on the trio thread, it must not block) after
    every message read and every write, with the counters and the last time
    (*clock*, wall time by default) both sides were seen in sync: what the
    daemon reports as a peer's "last sync".

    Raises the peer's :class:`~p2pinvite.errors.RemoteProtocolError` (after
    closing *stream*) when it broke the protocol, and any local error of
    the replica (e.g. :class:`~p2pinvite.errors.StorageError`).
    """
    return await _Driver(stream, replica, on_progress, clock, send_timeout).run()
