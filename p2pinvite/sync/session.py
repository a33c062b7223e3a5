"""The sans-IO sync session: one per member connection, one peer, one replica.

Rules of this file
------------------
No I/O, no trio, no clock. The session reads the replica synchronously
(:class:`~p2pinvite.sync.replica.ReplicaView`) and never writes to it: what
the peer sent goes out as an :class:`IngestEntries` event, the driver awaits
``replica.ingest`` and hands the result back (:meth:`SyncSession.ingested`).
The peer's bytes are decoded and bounded here (``messages.py``), so the
replica is never handed more than the limits allow. The transitions are the
table ``_TRANSITIONS``; docs/PROTOCOL.md Part 11 is the specification.

Errors: a peer that breaks the protocol raises a
:class:`~p2pinvite.errors.RemoteProtocolError` subclass
(:class:`~p2pinvite.errors.DecodeError` for malformed bytes,
:class:`SyncViolation` for a well-formed message that is wrong here,
:class:`RefusedEntries` when the replica refused what it sent) and the
session is then in ``ERROR``: the driver closes the connection. Calling a
method out of turn raises :class:`~p2pinvite.errors.LocalProtocolError` and
changes nothing.

Theory of operation
-------------------
Both sides send ``heads`` at once: their heads and a few other ids they hold
(``have``). The peer's heads and haves are its *frontier*: the peer holds
every entry that is one of them or below one (a replica is closed under
ancestry), so what it lacks of ours is ``ids_not_below(frontier)`` -- exact
when we know all of its heads, a bounded superset when it appended things we
have not seen (unknown ids are ignored; the haves keep the superset near what
it really lacks instead of our whole history).

::

    A                                             B
    heads {v, heads, have}          <--->         heads {v, heads, have}
    entries {ids_not_below(B)}      ---->         ingest -> new heads
    (batches, parents first)                      heads {...}  (an ack)
                                    <----         entries {ids_not_below(A)}
    ingest: parents missing?
    want {ids}                      ---->
                                    <----         entries {wanted}
    local append / ingest from C:
    heads {...}, entries {...}      ---->

*Pushing.* The ids to send are computed once as a list (parents first) and
sent in order, one bounded batch per :meth:`SyncSession.data_to_send`. The
list is computed again only when it is used up *and* something changed (our
replica, or the peer's frontier), and not even then when each of our heads
is one the peer has or is being sent (in its frontier, sent by it, or sent
to it): then the peer has everything below them, which is all we have. So
a long transfer costs one ``ids_not_below`` per side, not one per batch.
What was sent but not yet acknowledged is remembered (``_sent``) and skipped;
``_sent`` is pruned to what is still not below the peer's frontier at every
new list, and emptied when the peer announces our own heads.

What the peer sent us (``_peer_sent``, from ``IngestResult.ids``) is part
of its frontier until its heads are all known here: during a long transfer
its heads arrive last, and without this the receiver would push back what
it just received, as "not below anything the peer is known to have".

*Heads.* Ours go out at the start and again whenever they differ from what
we last announced -- only then, so two sessions never answer heads with
heads forever: every announcement is caused by a change of the DAG. They go
out before any entry added after the previous announcement, so what a peer
sends us is always below the heads it announced first, and we never send it
back.

*Asking.* When an ingest reports parents still missing (a peer that did not
send parents first, or an entry held from another peer), the session asks
this peer for them with ``want``, each id at most once per session (and at
most :data:`~.messages.MAX_PENDING_WANTS` at a time); wanted entries are
sent before the pushed ones.

*Flow control.* Nothing is queued as bytes: :meth:`SyncSession.data_to_send`
builds one step's messages (heads, wants, one batch of entries of at most
256 KiB) when the driver is ready to write them, so the stream's
backpressure holds the session back and its memory is the list of ids to
push (at most the DAG), the wanted ids (bounded) and one batch.

*Convergence.* Every entry of ours that a peer lacks is either below the
frontier it announced (it has it), or in our list, or sent. So once the
messages in flight are delivered and both lists are used up, each side has
the other's entries; heads are equal and both sessions are :attr:`synced`.
Duplicates and reordering of whole messages change nothing but the work
done: ingest ignores duplicates, a stale frontier only makes the list longer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from ..errors import DecodeError, LocalProtocolError, RemoteProtocolError
from .messages import (
    BATCH_BUDGET,
    MAX_BATCH,
    MAX_ENTRY,
    MAX_HAVE,
    MAX_HEADS,
    MAX_PENDING_WANTS,
    MAX_SESSION_BYTES,
    MAX_SESSION_ENTRIES,
    MAX_WANT,
    EntriesMsg,
    HeadsMsg,
    Message,
    WantMsg,
    batch_cost,
    decode_message,
    encode_message,
)
from .replica import IngestReport, ReplicaView

__all__ = [
    "Event",
    "IngestEntries",
    "RefusedEntries",
    "SendMessage",
    "SyncSession",
    "SyncState",
    "SyncStats",
    "SyncViolation",
]


class SyncViolation(RemoteProtocolError):
    """The peer sent a well-formed message that is wrong here (order, budget, version)."""


class RefusedEntries(SyncViolation):
    """The replica refused entries the peer sent (``refused``: index in the batch, reason)."""

    def __init__(self, message: str, *, refused: tuple[tuple[int, str], ...]) -> None:
        super().__init__(message)
        self.refused = refused


class SyncState(enum.Enum):
    """Where a session is."""

    IDLE = "idle"                # created; start() not called
    AWAIT_HEADS = "await_heads"  # our heads are queued; the peer's have not arrived
    ACTIVE = "active"            # exchanging
    INGESTING = "ingesting"      # a batch is with the driver: no message is read meanwhile
    CLOSED = "closed"            # the connection ended (final)
    ERROR = "error"              # the peer broke the protocol (final)


class _In(enum.Enum):
    """Inputs of the table: a received message type, or a call of the driver."""

    START = "start()"
    HEADS = HeadsMsg.T
    ENTRIES = EntriesMsg.T
    WANT = WantMsg.T
    INGESTED = "ingested()"
    CLOSE = "close()"
    FAIL = "a protocol violation"


_TRANSITIONS: Final[dict[SyncState, dict[_In, SyncState]]] = {
    SyncState.IDLE: {_In.START: SyncState.AWAIT_HEADS},
    SyncState.AWAIT_HEADS: {_In.HEADS: SyncState.ACTIVE},
    SyncState.ACTIVE: {_In.HEADS: SyncState.ACTIVE, _In.ENTRIES: SyncState.INGESTING,
                       _In.WANT: SyncState.ACTIVE},
    SyncState.INGESTING: {_In.INGESTED: SyncState.ACTIVE},
}
#: Inputs accepted in every state that is not final.
_ANY_LIVE: Final = {_In.CLOSE: SyncState.CLOSED, _In.FAIL: SyncState.ERROR}
_FINAL: Final = frozenset({SyncState.CLOSED, SyncState.ERROR})
#: States in which the peer may speak: a message without a transition here is its fault.
_RECEIVING: Final = frozenset({SyncState.AWAIT_HEADS, SyncState.ACTIVE})
_MESSAGE_INPUT: Final[dict[type, _In]] = {HeadsMsg: _In.HEADS, EntriesMsg: _In.ENTRIES,
                                          WantMsg: _In.WANT}


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Bytes to send to the peer (``message`` is the decoded form, for logs and tests)."""

    data: bytes = field(repr=False)
    message: Message


@dataclass(frozen=True, slots=True)
class IngestEntries:
    """Hand these entries to ``replica.ingest``, then call :meth:`SyncSession.ingested`."""

    entries: tuple[bytes, ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"IngestEntries(<{len(self.entries)} entries>)"


Event: TypeAlias = IngestEntries


@dataclass(frozen=True, slots=True)
class SyncStats:
    """Counters of one session (a snapshot)."""

    entries_sent: int = 0
    entries_received: int = 0
    bytes_received: int = 0
    entries_new: int = 0
    wants_sent: int = 0
    wants_received: int = 0
    heads_received: int = 0


class SyncSession:
    """The sans-IO sync protocol with one peer over one replica.

    Call :meth:`start`, then, in any order: :meth:`receive_message` with each
    message from the peer (and, for every :class:`IngestEntries` it returns,
    :meth:`ingested` with the replica's result before the next message),
    :meth:`data_to_send` whenever the stream can take one more write,
    :meth:`replica_changed` after every change of the replica, and
    :meth:`close` when the connection ends.
    """

    def __init__(self, replica: ReplicaView) -> None:
        self._replica = replica
        self._state = SyncState.IDLE
        #: Why the session ended in ERROR or CLOSED (local use only).
        self.reason: str | None = None
        self.peer_version: int | None = None
        self._peer_heads: tuple[bytes, ...] | None = None
        self._frontier: tuple[bytes, ...] = ()
        self._announced: tuple[bytes, ...] | None = None
        # pushing: _pending[:_pos] is sent; _sent holds earlier sends not known to be below
        # the peer's frontier (and wanted entries we sent); _stale: a new list could differ
        self._pending: list[bytes] = []
        self._pos = 0
        self._sent: set[bytes] = set()
        self._stale = False
        self._frontier_set: frozenset[bytes] = frozenset()
        # what the peer sent us, until its announced heads are all known here
        self._peer_sent: set[bytes] = set()
        # answering the peer's wants (an ordered set)
        self._answers: dict[bytes, None] = {}
        # asking: ids to put in our next want, and every id asked and not yet received
        self._want_out: dict[bytes, None] = {}
        self._requested: set[bytes] = set()
        self._n = {k: 0 for k in SyncStats.__dataclass_fields__}

    def __repr__(self) -> str:
        return f"<SyncSession state={self._state.name} queued={self.queued}>"

    # -- state ------------------------------------------------------------------------

    @property
    def state(self) -> SyncState:
        """The session's state (see :class:`SyncState`)."""
        return self._state

    @property
    def peer_heads(self) -> tuple[bytes, ...] | None:
        """The heads the peer last announced (``None`` before its first ``heads``)."""
        return self._peer_heads

    @property
    def synced(self) -> bool:
        """Whether the peer's last announced heads equal ours: both hold the same entries."""
        return (self._state is SyncState.ACTIVE and self._peer_heads is not None
                and self._peer_heads == self._all_our_heads())

    @property
    def queued(self) -> int:
        """Entries known to be waiting to go out (pushes of the current list and answers)."""
        return len(self._pending) - self._pos + len(self._answers)

    @property
    def stats(self) -> SyncStats:
        """The counters so far."""
        return SyncStats(**self._n)

    def _go(self, inp: _In) -> None:
        self._state = self._next(inp)
        if self._state in _FINAL:
            self._pending, self._pos = [], 0
            self._sent, self._answers, self._peer_sent = set(), {}, set()
            self._want_out, self._requested = {}, set()

    def _next(self, inp: _In) -> SyncState:
        if self._state not in _FINAL and inp in _ANY_LIVE:
            return _ANY_LIVE[inp]
        nxt = _TRANSITIONS.get(self._state, {}).get(inp)
        if nxt is None:
            raise LocalProtocolError(f"sync: {inp.value} not allowed in state {self._state.name}")
        return nxt

    def _violation(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self.reason = str(exc)
        self._go(_In.FAIL)
        return exc

    # -- driver calls -----------------------------------------------------------------

    def start(self) -> None:
        """Begin: our heads go out with the first :meth:`data_to_send`."""
        self._go(_In.START)

    def close(self, reason: str = "connection closed") -> None:
        """The connection ended; the session forgets its queues. Idempotent."""
        if self._state not in _FINAL:
            self.reason = reason
            self._go(_In.CLOSE)

    def replica_changed(self) -> None:
        """The replica changed (an append, or an ingest from any peer): look again."""
        self._stale = True

    def receive_message(self, data: bytes) -> list[Event]:
        """Feed one application message from the peer; return what the driver must do.

        Raises a :class:`~p2pinvite.errors.RemoteProtocolError` subclass when
        the peer broke the protocol (the session is then in ``ERROR``).
        """
        if self._state not in _RECEIVING:
            raise LocalProtocolError(f"sync: no message may be fed in state {self._state.name}")
        try:
            msg = decode_message(data)
        except DecodeError as exc:
            raise self._violation(exc) from None
        inp = _MESSAGE_INPUT[type(msg)]
        if inp not in _TRANSITIONS[self._state]:
            raise self._violation(SyncViolation(
                f"sync: {msg.T!r} message before the peer's heads"))
        return _HANDLERS[inp](self, msg)

    def ingested(self, result: IngestReport) -> list[Event]:
        """The replica's answer to the last :class:`IngestEntries`.

        Raises :class:`RefusedEntries` if it refused any entry (the peer sent
        something invalid: drop it).
        """
        self._next(_In.INGESTED)  # out of turn: LocalProtocolError, nothing changed
        if result.refused:
            index, why = result.refused[0]
            raise self._violation(RefusedEntries(
                f"sync: the replica refused {len(result.refused)} entries of the peer's batch"
                f" (first: #{index}: {why})", refused=tuple(result.refused)))
        self._n["entries_new"] += len(result.new)
        if result.new:
            self._stale = True
        self._peer_sent.update(result.ids)
        self._forget_peer_sent()
        has = self._replica.has
        if self._requested:
            self._requested = {i for i in self._requested if not has(i)}
        for pid in result.missing:
            if len(self._requested) >= MAX_PENDING_WANTS:
                break  # the rest waits for another session: held entries are not lost
            if pid not in self._requested and not has(pid):
                self._requested.add(pid)
                self._want_out[pid] = None
        self._go(_In.INGESTED)
        return []

    def data_to_send(self) -> list[SendMessage]:
        """The messages of the next write (empty: nothing to send now).

        At most: our heads if they changed since last announced, the ids we
        want, and one batch of entries (wanted ones first, then the pushed
        list, parents first). Call it again after the write completes.
        """
        if self._state is SyncState.IDLE:
            raise LocalProtocolError("sync: start() first")
        if self._state in _FINAL:
            return []
        out: list[SendMessage] = []
        heads = self._our_heads()
        if heads != self._announced:
            out.append(self._send(HeadsMsg(heads, self._haves(heads))))
            self._announced = heads
        if self._peer_heads is None:
            return out
        if self._want_out:
            ids = [i for i in self._want_out if not self._replica.has(i)]
            self._want_out.clear()
            for k in range(0, len(ids), MAX_WANT):
                out.append(self._send(WantMsg(tuple(ids[k : k + MAX_WANT]))))
            self._n["wants_sent"] += len(ids)
        batch = self._batch()
        if batch:
            out.append(self._send(EntriesMsg(tuple(batch))))
            self._n["entries_sent"] += len(batch)
        return out

    # -- receiving --------------------------------------------------------------------

    def _on_heads(self, msg: HeadsMsg) -> list[Event]:
        if self.peer_version is None:
            self.peer_version = msg.version
        elif msg.version != self.peer_version:
            raise self._violation(SyncViolation("sync: the peer changed its version"))
        self._n["heads_received"] += 1
        self._peer_heads = msg.heads
        self._frontier = msg.heads + msg.have
        self._frontier_set = frozenset(self._frontier)
        self._stale = True
        if msg.heads == self._all_our_heads():
            # the peer has everything we have: nothing sent is in doubt, nothing queued needed
            self._sent.clear()
            self._peer_sent.clear()
            self._pending, self._pos = [], 0
        else:
            self._forget_peer_sent()
        self._go(_In.HEADS)
        return []

    def _forget_peer_sent(self) -> None:
        """Once the peer's heads are all known here, they cover what it sent us."""
        if self._peer_sent and self._peer_heads is not None and all(
                self._replica.has(h) for h in self._peer_heads):
            self._peer_sent.clear()

    def _on_entries(self, msg: EntriesMsg) -> list[Event]:
        n = self._n["entries_received"] + len(msg.entries)
        size = self._n["bytes_received"] + sum(len(e) for e in msg.entries)
        if n > MAX_SESSION_ENTRIES or size > MAX_SESSION_BYTES:
            raise self._violation(SyncViolation(
                "sync: the peer sent more entries in one session than a whole DAG twice"))
        self._n["entries_received"], self._n["bytes_received"] = n, size
        self._go(_In.ENTRIES)
        return [IngestEntries(msg.entries)]

    def _on_want(self, msg: WantMsg) -> list[Event]:
        self._n["wants_received"] += len(msg.ids)
        has = self._replica.has
        for eid in msg.ids:
            if has(eid):  # unknown ids: nothing to answer (we may have lost a race)
                self._answers[eid] = None
        if len(self._answers) > MAX_PENDING_WANTS:
            raise self._violation(SyncViolation(
                f"sync: the peer wants more than {MAX_PENDING_WANTS} entries at once"))
        self._go(_In.WANT)
        return []

    # -- sending ----------------------------------------------------------------------

    def _our_heads(self) -> tuple[bytes, ...]:
        """Our heads as announced: sorted, the smallest :data:`MAX_HEADS`."""
        return tuple(sorted(self._replica.heads())[:MAX_HEADS])

    def _all_our_heads(self) -> tuple[bytes, ...] | None:
        """Our heads, sorted, or ``None`` when there are more than an announcement holds
        (two truncated lists can be equal while the DAGs differ)."""
        heads = sorted(self._replica.heads())
        return tuple(heads) if len(heads) <= MAX_HEADS else None

    def _haves(self, heads: tuple[bytes, ...]) -> tuple[bytes, ...]:
        skip = set(heads)
        out: list[bytes] = []
        for eid in self._replica.haves(MAX_HAVE + len(heads)):
            if eid not in skip:
                skip.add(eid)
                out.append(eid)
                if len(out) == MAX_HAVE:
                    break
        return tuple(out)

    @staticmethod
    def _send(msg: Message) -> SendMessage:
        return SendMessage(encode_message(msg), msg)

    def _refill(self) -> None:
        """A new list to push, once the current one is used up and something changed."""
        if self._pos < len(self._pending) or not self._stale:
            return
        self._stale = False
        sent = self._sent
        sent.update(self._pending)  # every id of a used-up list went out (or was in _sent)
        self._pending, self._pos = [], 0
        front, peer = self._frontier_set, self._peer_sent
        if all(h in front or h in peer or h in sent for h in self._replica.heads()):
            return  # the peer has, or is being sent, all we have: no walk needed
        fresh = self._replica.ids_not_below(self._frontier + tuple(peer))
        if sent:
            # forget what the peer's frontier now covers: _sent keeps what is in flight
            self._sent = sent = sent.intersection(fresh)
            self._pending = [i for i in fresh if i not in sent]
        else:
            self._pending = list(fresh)

    def _batch(self) -> list[bytes]:
        batch: list[bytes] = []
        used = 0
        get, sent = self._replica.get, self._sent

        def fits(data: bytes) -> bool:
            if len(data) > MAX_ENTRY:
                raise LocalProtocolError(
                    f"sync: the replica holds an entry of {len(data)} bytes (limit {MAX_ENTRY})")
            return len(batch) < MAX_BATCH and used + batch_cost(data) <= BATCH_BUDGET

        while self._answers:
            eid = next(iter(self._answers))
            data = get(eid)
            if not fits(data):
                return batch
            del self._answers[eid]
            sent.add(eid)
            batch.append(data)
            used += batch_cost(data)
        self._refill()
        sent = self._sent
        pending = self._pending
        while self._pos < len(pending):
            eid = pending[self._pos]
            if eid in sent:
                self._pos += 1
                continue
            data = get(eid)
            if not fits(data):
                break
            self._pos += 1
            batch.append(data)
            used += batch_cost(data)
        return batch


_HANDLERS: Final[dict[_In, Callable[[SyncSession, Any], list[Event]]]] = {
    _In.HEADS: SyncSession._on_heads,
    _In.ENTRIES: SyncSession._on_entries,
    _In.WANT: SyncSession._on_want,
}
