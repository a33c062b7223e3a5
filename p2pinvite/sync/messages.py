"""Wire messages of the sync protocol: limits and the strict codec.

Rules of this file
------------------
Pure data and pure functions. Each message is a frozen dataclass that becomes
a canonical msgpack map with a type field ``t`` (``to_map``, packed by
:func:`encode_message`) and is read back strictly (``from_map``, through
:func:`decode_message`): a missing or unknown field, a wrong type or size,
an unknown ``t`` or a message over :data:`MAX_MESSAGE` bytes raise
:class:`~p2pinvite.errors.DecodeError`. Which message may come when is the
session's business (``session.py``). docs/PROTOCOL.md Part 11 is the
specification.

Messages
--------
``heads {v, heads, have}``
    The sender's heads (sorted, unique) and up to :data:`MAX_HAVE` other ids
    it holds (``have``, see :meth:`~p2pinvite.sync.replica.ReplicaView.haves`).
    ``v`` is the highest protocol version the sender speaks.
``entries {entries}``
    1 to :data:`MAX_BATCH` entries (each at most :data:`MAX_ENTRY` bytes),
    parents first.
``want {ids}``
    1 to :data:`MAX_WANT` ids (unique) of entries the sender asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeAlias

from ..errors import DecodeError
from ..wire import expect_int, expect_map, pack, unpack

__all__ = [
    "BATCH_BUDGET",
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
    "HeadsMsg",
    "Message",
    "WantMsg",
    "batch_cost",
    "decode_message",
    "encode_message",
]

#: The version this implementation speaks (``v`` of ``heads``).
SYNC_VERSION: Final = 1
#: Size of an entry id (BLAKE2b-256 of the entry, computed by the replica).
ID_SIZE: Final = 32
#: Largest encoded message of this protocol; the driver reads with this limit.
MAX_MESSAGE: Final = 256 * 1024
#: Largest entry.
MAX_ENTRY: Final = 64 * 1024
#: Most entries in one ``entries`` message.
MAX_BATCH: Final = 4096
#: Most ids in ``heads.heads`` (a replica with more announces the smallest ones:
#: the peer then sends a superset, which is still correct).
MAX_HEADS: Final = 1024
#: Most ids in ``heads.have``.
MAX_HAVE: Final = 64
#: Most ids in one ``want``.
MAX_WANT: Final = 4096
#: Most ids a peer may have asked for and not yet been sent, at any time.
MAX_PENDING_WANTS: Final = 65_536
#: The largest DAG a replica holds: entries and bytes of entries (the log refuses beyond).
MAX_DAG_ENTRIES: Final = 1_000_000
MAX_DAG_BYTES: Final = 512 * 1024 * 1024
#: Most entries (and bytes of entries) one peer may send in one session: an
#: honest peer sends each entry at most twice (pushed once, wanted once).
MAX_SESSION_ENTRIES: Final = 2 * MAX_DAG_ENTRIES
MAX_SESSION_BYTES: Final = 2 * MAX_DAG_BYTES

# msgpack overhead of an ``entries`` message besides its entries: the map,
# both keys, the type string and a 5-byte array header; each entry adds a bin
# header of at most 5 bytes (bin32: an entry of exactly 64 KiB).
_BATCH_OVERHEAD: Final = 32
_ENTRY_HEADER: Final = 5
_MAX_VERSION: Final = 0xFFFF


def batch_cost(entry: bytes) -> int:
    """Upper bound of what *entry* adds to an encoded ``entries`` message."""
    return len(entry) + _ENTRY_HEADER


#: Budget for the entries of one ``entries`` message.
BATCH_BUDGET: Final = MAX_MESSAGE - _BATCH_OVERHEAD


def _only(m: Mapping[str, Any], fields: frozenset[str], what: str) -> None:
    keys = set(m)
    if missing := fields - keys:
        raise DecodeError(f"{what} lacks field(s) {sorted(missing)}")
    if extra := keys - fields:
        raise DecodeError(f"{what} has unexpected field(s) {sorted(extra)}")


def _ids(m: Mapping[str, Any], key: str, *, max_items: int, what: str) -> tuple[bytes, ...]:
    v = m.get(key)
    if not isinstance(v, list):
        raise DecodeError(f"{what}.{key} must be a list")
    if len(v) > max_items:
        raise DecodeError(f"{what}.{key} has more than {max_items} ids")
    for item in v:
        if not isinstance(item, bytes) or len(item) != ID_SIZE:
            raise DecodeError(f"{what}.{key} must hold {ID_SIZE}-byte ids")
    if len(set(v)) != len(v):
        raise DecodeError(f"{what}.{key} repeats an id")
    return tuple(v)


@dataclass(frozen=True, slots=True)
class HeadsMsg:
    """The sender's heads (sorted, unique) and a few other ids it holds."""

    T: ClassVar[str] = "heads"
    heads: tuple[bytes, ...]
    have: tuple[bytes, ...] = ()
    version: int = SYNC_VERSION

    def to_map(self) -> dict[str, Any]:
        """The message as a map (:func:`encode_message` packs it)."""
        return {"t": self.T, "v": self.version, "heads": list(self.heads),
                "have": list(self.have)}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> HeadsMsg:
        """Decode, strictly: ``heads`` must be in ascending byte order."""
        _only(m, frozenset({"t", "v", "heads", "have"}), "heads")
        version = expect_int(m, "v", lo=1, hi=_MAX_VERSION)
        heads = _ids(m, "heads", max_items=MAX_HEADS, what="heads")
        if list(heads) != sorted(heads):
            raise DecodeError("heads.heads must be sorted")
        have = _ids(m, "have", max_items=MAX_HAVE, what="heads")
        return cls(heads, have, version)


@dataclass(frozen=True, slots=True)
class EntriesMsg:
    """A batch of entries, parents first."""

    T: ClassVar[str] = "entries"
    entries: tuple[bytes, ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"EntriesMsg(<{len(self.entries)} entries>)"

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        return {"t": self.T, "entries": list(self.entries)}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> EntriesMsg:
        """Decode, strictly (a batch is never empty)."""
        _only(m, frozenset({"t", "entries"}), "entries")
        v = m.get("entries")
        if not isinstance(v, list):
            raise DecodeError("entries.entries must be a list")
        if not 1 <= len(v) <= MAX_BATCH:
            raise DecodeError(f"entries.entries must hold 1 to {MAX_BATCH} entries")
        for item in v:
            if not isinstance(item, bytes) or not item or len(item) > MAX_ENTRY:
                raise DecodeError(f"entries.entries must hold entries of 1 to {MAX_ENTRY} bytes")
        return cls(tuple(v))


@dataclass(frozen=True, slots=True)
class WantMsg:
    """Ids of entries the sender asks for (e.g. parents it lacks)."""

    T: ClassVar[str] = "want"
    ids: tuple[bytes, ...]

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        return {"t": self.T, "ids": list(self.ids)}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> WantMsg:
        """Decode, strictly (never empty)."""
        _only(m, frozenset({"t", "ids"}), "want")
        ids = _ids(m, "ids", max_items=MAX_WANT, what="want")
        if not ids:
            raise DecodeError("want.ids cannot be empty")
        return cls(ids)


Message: TypeAlias = HeadsMsg | EntriesMsg | WantMsg

_DECODERS: Final[dict[str, Callable[[Mapping[str, Any]], Message]]] = {
    cls.T: cls.from_map for cls in (HeadsMsg, EntriesMsg, WantMsg)
}
# The largest container of a valid message: an ``entries`` batch.
_MAX_ITEMS: Final = max(MAX_BATCH, MAX_WANT, MAX_HEADS)


def encode_message(msg: Message) -> bytes:
    """Canonical msgpack bytes of *msg*."""
    return pack(msg.to_map())


def decode_message(data: bytes) -> Message:
    """Decode one application message strictly; :class:`DecodeError` for anything wrong.

    More than :data:`MAX_MESSAGE` bytes raises
    :class:`~p2pinvite.errors.FrameTooLarge` before anything is decoded.
    """
    m = expect_map(unpack(data, max_size=MAX_MESSAGE, max_items=_MAX_ITEMS), "sync message")
    t = m.get("t")
    decoder = _DECODERS.get(t) if isinstance(t, str) else None
    if decoder is None:
        raise DecodeError("sync message has no known type field 't'")
    return decoder(m)
