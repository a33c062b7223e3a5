"""A space or identity log as sync sees it: the :class:`~p2pinvite.sync.replica.Replica` view.

The log (:class:`~p2pinvite.halo.log.SpaceLog`) already answers sync's reads
(heads, has, get, ids_not_below, haves) over its durable entries and
verifies and writes a batch of entries in one fsync. What differs is only
shape: its ingest result names refusals with a rule, and its change
listeners receive the change. This adapter bridges the two without either
layer importing the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..halo.log import SpaceLog
from ..sync.replica import IngestResult

__all__ = ["LogReplica"]


class LogReplica:
    """*log* as a sync replica (reads go straight to the log)."""

    __slots__ = ("_log",)

    def __init__(self, log: SpaceLog) -> None:
        self._log = log

    def __repr__(self) -> str:
        return f"<LogReplica {self._log!r}>"

    def heads(self) -> Sequence[bytes]:
        """The log's durable heads."""
        return self._log.heads()

    def has(self, entry_id: bytes) -> bool:
        """Whether *entry_id* is a durable entry of the log."""
        return self._log.has(entry_id)

    def get(self, entry_id: bytes) -> bytes:
        """The credential bytes of a durable entry (``KeyError`` if none)."""
        return self._log.get(entry_id)

    def ids_not_below(self, ids: Sequence[bytes]) -> Sequence[bytes]:
        """Durable ids that are neither in *ids* nor below them, in file order."""
        return self._log.ids_not_below(ids)

    def haves(self, limit: int) -> Sequence[bytes]:
        """Up to *limit* ids spread back from the newest."""
        return self._log.haves(limit)

    async def ingest(self, entries: Sequence[bytes]) -> IngestResult:
        """Verify and durably add a peer's entries (one fsync), in sync's terms."""
        result = await self._log.ingest(entries)
        return IngestResult(
            new=result.added,
            missing=result.missing,
            refused=tuple((r.index, f"{r.rule}: {r.message}") for r in result.refused),
            ids=result.ids,
        )

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call *callback()* whenever entries become durable in the log."""
        return self._log.subscribe(lambda _change: callback())
