"""Anti-entropy sync of a replicated Merkle DAG between two member devices.

Rules of this package
---------------------
Sync sits beside ``invitations/``: it may import ``net/`` (the secure
stream), ``wire.py`` and ``errors.py``, never ``halo/`` or ``invitations/``.
The DAG is abstract (:class:`Replica`, implemented by the log); entries are
opaque bytes here, identified and verified by the replica. docs/PROTOCOL.md
Part 11 is the wire specification. Import from the package: it re-exports
everything public.

Where each part lives
---------------------
Imports point one way, down this list:

- ``replica.py``: :class:`Replica` / :class:`ReplicaView`, what the log must
  provide (structurally: it imports nothing from here), :class:`IngestReport`
  and :class:`IngestResult`.
- ``messages.py``: the wire messages (``heads``, ``entries``, ``want``),
  their limits and strict codec.
- ``session.py``: :class:`SyncSession`, the sans-IO protocol (transition
  table, errors, events); its docstring is the theory of operation.
- ``driver.py``: :func:`run_sync`, the thin trio driver on a member
  connection.
"""

from __future__ import annotations

from .driver import DEFAULT_SEND_TIMEOUT, SyncProgress, SyncResult, run_sync
from .messages import (
    ID_SIZE,
    MAX_BATCH,
    MAX_DAG_BYTES,
    MAX_DAG_ENTRIES,
    MAX_ENTRY,
    MAX_HAVE,
    MAX_HEADS,
    MAX_MESSAGE,
    MAX_PENDING_WANTS,
    MAX_SESSION_BYTES,
    MAX_SESSION_ENTRIES,
    MAX_WANT,
    SYNC_VERSION,
    EntriesMsg,
    HeadsMsg,
    Message,
    WantMsg,
    decode_message,
    encode_message,
)
from .replica import IngestReport, IngestResult, Replica, ReplicaView
from .session import (
    Event,
    IngestEntries,
    RefusedEntries,
    SendMessage,
    SyncSession,
    SyncState,
    SyncStats,
    SyncViolation,
)

__all__ = [
    "DEFAULT_SEND_TIMEOUT",
    "ID_SIZE",
    "MAX_BATCH",
    "MAX_DAG_BYTES",
    "MAX_DAG_ENTRIES",
    "MAX_ENTRY",
    "MAX_HAVE",
    "MAX_HEADS",
    "MAX_MESSAGE",
    "MAX_PENDING_WANTS",
    "MAX_SESSION_BYTES",
    "MAX_SESSION_ENTRIES",
    "MAX_WANT",
    "SYNC_VERSION",
    "EntriesMsg",
    "Event",
    "HeadsMsg",
    "IngestEntries",
    "IngestReport",
    "IngestResult",
    "Message",
    "RefusedEntries",
    "Replica",
    "ReplicaView",
    "SendMessage",
    "SyncProgress",
    "SyncResult",
    "SyncSession",
    "SyncState",
    "SyncStats",
    "SyncViolation",
    "WantMsg",
    "decode_message",
    "encode_message",
    "run_sync",
]
