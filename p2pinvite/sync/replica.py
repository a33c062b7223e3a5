"""What sync needs from a replicated DAG of entries: the :class:`Replica` protocol.

Rules of this file
------------------
Only types: no behaviour. The log (``halo/``) implements :class:`Replica`
*structurally*: it needs no import from here (``halo/`` is below ``sync/``,
and imports point down), and its ``ingest`` may return its own result type
as long as it has the four attributes of :class:`IngestReport`. Sync never
imports the log. Tests implement it in memory (``tests/sync/dag.py``).

What a replica is
-----------------
A set of *entries* (opaque bytes to sync) forming a Merkle DAG: each entry
has a 32-byte *id* the replica computes (a hash of its bytes) and names the
ids of its *parents*, entries made before it. The replica is **closed under
ancestry**: an entry is in it only once all its ancestors are. An entry whose
parents have not arrived yet is *held* aside by the replica (not in the DAG:
:meth:`ReplicaView.has` says ``False``, :meth:`ReplicaView.heads` does not
list it) until they come.

Reads (:class:`ReplicaView`) are synchronous and cheap (in memory): the
sans-IO session calls them while it decides what to send. Writes
(:meth:`Replica.ingest`) are asynchronous (verification and one durable
write), and only the trio driver calls them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["IngestReport", "IngestResult", "Replica", "ReplicaView"]


class IngestReport(Protocol):
    """What :meth:`Replica.ingest` returns: any object with these attributes (see
    :class:`IngestResult`, which has them, for their meaning)."""

    @property
    def new(self) -> Sequence[bytes]:
        """Ids added to the DAG by this call, parents first."""
        ...

    @property
    def missing(self) -> Sequence[bytes]:
        """Parents that held entries of the batch still lack."""
        ...

    @property
    def refused(self) -> Sequence[tuple[int, str]]:
        """``(index in the batch, reason)`` of each entry that failed verification."""
        ...

    @property
    def ids(self) -> Sequence[bytes]:
        """The id of every entry of the batch not refused, in batch order."""
        ...


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What :meth:`Replica.ingest` did with one batch (an :class:`IngestReport`).

    * ``new``: ids of entries that are in the DAG now and were not before
      (entries of the batch, and held entries the batch completed), in the
      order they were added (parents first).
    * ``missing``: ids of parents that entries of this batch need and that the
      replica has neither in the DAG nor held (each id once). The session asks
      the peer for them.
    * ``refused``: ``(index in the batch, reason)`` for every entry that
      failed verification (malformed, bad signature, not allowed by the
      structural rules, over the DAG size limit). The peer that sent it is
      dropped. ``reason`` is short text for the local log, never sent.
    * ``ids``: the id of every entry of the batch that was not refused, in
      batch order, whatever became of it (new, duplicate or held). The peer
      holds these and everything below them, which the session needs to know
      while the peer's own heads are still unknown here (a long transfer):
      otherwise it would send the peer back what it just received.
    """

    new: tuple[bytes, ...] = field(default=(), repr=False)
    missing: tuple[bytes, ...] = ()
    refused: tuple[tuple[int, str], ...] = ()
    ids: tuple[bytes, ...] = field(default=(), repr=False)


class ReplicaView(Protocol):
    """The synchronous, read-only part of a replica (what the sans-IO session may call)."""

    def heads(self) -> Sequence[bytes]:
        """Ids of the entries that no other entry of the DAG names as a parent.

        Empty for an empty replica. The order does not matter.
        """
        ...

    def has(self, entry_id: bytes) -> bool:
        """Whether the entry is in the DAG (held entries: ``False``)."""
        ...

    def get(self, entry_id: bytes) -> bytes:
        """The bytes of an entry of the DAG (``KeyError`` if it is not in it)."""
        ...

    def ids_not_below(self, ids: Sequence[bytes]) -> Sequence[bytes]:
        """Ids of every entry of the DAG that is neither one of *ids* nor an ancestor of one.

        Ids the replica does not have are ignored (so ``ids_not_below([])``
        is the whole DAG). The result is in an order where every entry comes
        after all of its parents that are in the result (e.g. the local
        append order). Called once when a peer's heads first arrive, then
        only when the session has sent everything it had queued and the DAG
        or the peer's heads changed since: an ``O(size of the DAG)`` walk is
        acceptable, one per batch is not needed.
        """
        ...

    def haves(self, limit: int) -> Sequence[bytes]:
        """Ids of up to *limit* entries of the DAG, spread back from the newest.

        A peer that has some of these knows everything below them is here
        too, which bounds what it sends when our heads are new to it (both
        sides appended while apart). Reference choice: the entries at
        positions ``n-2, n-4, n-8, ...`` of the local order (``n`` entries,
        parents first), then position ``0`` (the genesis); any entries of the
        DAG are correct, denser near the newest is cheaper.
        """
        ...


class Replica(ReplicaView, Protocol):
    """A replica the sync driver can write to and watch."""

    async def ingest(self, entries: Sequence[bytes]) -> IngestReport:
        """Verify each entry and add the new ones durably, as one batch (one fsync).

        Entries come parents first but may still lack parents (held until
        they arrive, then added, reported in ``new`` of the call that
        completed them). Duplicates are ignored. A refused entry does not
        stop the others (the peer is dropped anyway). Returns only after
        every entry reported in ``new`` is durable. Raises only for local
        failures (:class:`~p2pinvite.errors.StorageError`), never for the
        peer's bytes: those are refused in the result.
        """
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call *callback()* after every change of the DAG; return a function that unsubscribes.

        A change is a local append or an ingest (from any peer) that added
        entries, once they are durable. The callback runs on the trio thread,
        takes no arguments, never awaits and does not raise; it may be called
        more than once for one change.
        """
        ...
