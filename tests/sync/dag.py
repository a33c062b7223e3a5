"""An in-memory Merkle DAG replica for the sync tests: real hashing, real DAG rules.

An entry is the canonical msgpack map ``{"parents": [id, ...], "payload": bin,
"mac": bin16}`` with ``parents`` sorted and unique, and its id is BLAKE2b-256
of those bytes. ``mac`` is BLAKE2b-128 keyed with the space secret over the
map without it: the stand-in for the log's signatures, so a forged or
altered entry is *refused* as the log would refuse a bad signature.

The replica is closed under ancestry: an entry whose parents are not all here
is held aside (not in the DAG, not a head) and added, with every held
descendant it completes, when its last parent arrives. It implements
:class:`p2pinvite.sync.Replica`; ``ingest_now`` is the same work without the
checkpoint, for the sans-IO tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import trio

from p2pinvite import wire
from p2pinvite.errors import DecodeError
from p2pinvite.sync import MAX_ENTRY, IngestResult

SECRET = b"sync-tests-space-secret-32-bytes"


def entry_id(entry: bytes) -> bytes:
    return hashlib.blake2b(entry, digest_size=32).digest()


def _mac(parents: Sequence[bytes], payload: bytes, secret: bytes) -> bytes:
    body = wire.pack({"parents": list(parents), "payload": payload})
    return hashlib.blake2b(body, key=secret, digest_size=16).digest()


def make_entry(parents: Iterable[bytes], payload: bytes, *, secret: bytes = SECRET) -> bytes:
    ps = sorted(set(parents))
    return wire.pack({"parents": ps, "payload": payload, "mac": _mac(ps, payload, secret)})


def parse_entry(entry: bytes, *, secret: bytes = SECRET) -> tuple[bytes, ...]:
    """The entry's parents; DecodeError if it is malformed or its mac is wrong."""
    if len(entry) > MAX_ENTRY:
        raise DecodeError("entry too large")
    m = wire.expect_map(wire.unpack(entry, max_size=MAX_ENTRY))
    if set(m) != {"parents", "payload", "mac"}:
        raise DecodeError("wrong fields")
    parents = m["parents"]
    if (not isinstance(parents, list) or any(not isinstance(p, bytes) or len(p) != 32
                                               for p in parents)
            or parents != sorted(set(parents))):
        raise DecodeError("bad parents")
    payload = wire.expect_bytes(m, "payload")
    mac = wire.expect_bytes(m, "mac", size=16)
    if wire.pack(m) != entry:
        raise DecodeError("not canonical")
    if mac != _mac(parents, payload, secret):
        raise DecodeError("bad mac")
    return tuple(parents)


class MemoryReplica:
    """A replica of one DAG, in memory."""

    def __init__(self, name: str = "r", *, secret: bytes = SECRET) -> None:
        self.name = name
        self.secret = secret
        self._entries: dict[bytes, bytes] = {}
        self._parents: dict[bytes, tuple[bytes, ...]] = {}
        self._order: list[bytes] = []  # local append order: parents first
        self._heads: set[bytes] = set()
        self._held: dict[bytes, tuple[bytes, tuple[bytes, ...]]] = {}
        self._waiting: dict[bytes, set[bytes]] = {}  # missing parent -> held children
        self._subscribers: list[Callable[[], None]] = []
        self.ingest_calls: list[int] = []  # batch sizes handed to ingest
        self.not_below_calls = 0

    def __repr__(self) -> str:
        return f"<MemoryReplica {self.name} entries={len(self._order)} held={len(self._held)}>"

    # -- ReplicaView --------------------------------------------------------------

    def heads(self) -> list[bytes]:
        return list(self._heads)

    def has(self, entry_id: bytes) -> bool:
        return entry_id in self._entries

    def get(self, entry_id: bytes) -> bytes:
        return self._entries[entry_id]

    def ids_not_below(self, ids: Sequence[bytes]) -> list[bytes]:
        self.not_below_calls += 1
        below: set[bytes] = set()
        stack = [i for i in ids if i in self._entries]
        while stack:
            i = stack.pop()
            if i in below:
                continue
            below.add(i)
            stack.extend(p for p in self._parents[i] if p not in below)
        if not below:
            return list(self._order)
        return [i for i in self._order if i not in below]

    def haves(self, limit: int) -> list[bytes]:
        n = len(self._order)
        out: list[bytes] = []
        step = 2
        while step <= n and len(out) < limit - 1:
            out.append(self._order[n - step])
            step *= 2
        if n and len(out) < limit and self._order[0] not in out:
            out.append(self._order[0])
        return out

    # -- Replica ------------------------------------------------------------------

    async def ingest(self, entries: Sequence[bytes]) -> IngestResult:
        await trio.lowlevel.checkpoint()  # the disk write of the real log
        return self.ingest_now(entries)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # -- the work -----------------------------------------------------------------

    def ingest_now(self, entries: Sequence[bytes]) -> IngestResult:
        self.ingest_calls.append(len(entries))
        new: list[bytes] = []
        refused: list[tuple[int, str]] = []
        held_now: list[bytes] = []
        ids: list[bytes] = []
        for index, entry in enumerate(entries):
            try:
                parents = parse_entry(entry, secret=self.secret)
            except DecodeError as exc:
                refused.append((index, str(exc)))
                continue
            eid = entry_id(entry)
            ids.append(eid)
            if eid in self._entries or eid in self._held:
                continue
            lacking = [p for p in parents if p not in self._entries]
            if lacking:
                self._held[eid] = (entry, parents)
                for p in lacking:
                    self._waiting.setdefault(p, set()).add(eid)
                held_now.append(eid)
            else:
                self._add(eid, entry, parents, new)
        missing: dict[bytes, None] = {}
        for eid in held_now:
            if eid in self._held:
                for p in self._held[eid][1]:
                    if p not in self._entries and p not in self._held:
                        missing[p] = None
        if new:
            self._notify()
        return IngestResult(tuple(new), tuple(missing), tuple(refused), tuple(ids))

    def _add(self, eid: bytes, entry: bytes, parents: tuple[bytes, ...],
             new: list[bytes]) -> None:
        todo = [(eid, entry, parents)]
        while todo:
            eid, entry, parents = todo.pop()
            self._entries[eid] = entry
            self._parents[eid] = parents
            self._order.append(eid)
            self._heads.add(eid)
            self._heads.difference_update(parents)
            new.append(eid)
            for child in sorted(self._waiting.pop(eid, ())):
                c_entry, c_parents = self._held[child]
                if all(p in self._entries for p in c_parents):
                    del self._held[child]
                    todo.append((child, c_entry, c_parents))

    def _notify(self) -> None:
        for cb in list(self._subscribers):
            cb()

    def append(self, payload: bytes, parents: Sequence[bytes] | None = None) -> bytes:
        """A local append: parents = our heads unless given. Returns the id."""
        entry = make_entry(self._heads if parents is None else parents, payload,
                           secret=self.secret)
        eid = entry_id(entry)
        assert eid not in self._entries
        ps = parse_entry(entry, secret=self.secret)
        assert all(p in self._entries for p in ps)
        self._add(eid, entry, ps, [])
        self._notify()
        return eid

    # -- for assertions -----------------------------------------------------------

    def ids(self) -> frozenset[bytes]:
        return frozenset(self._entries)

    def entries_in_order(self) -> list[bytes]:
        return [self._entries[i] for i in self._order]

    @property
    def held(self) -> int:
        return len(self._held)

    def __len__(self) -> int:
        return len(self._order)

    def copy(self, name: str) -> MemoryReplica:
        other = MemoryReplica(name, secret=self.secret)
        other.ingest_now(self.entries_in_order())
        other.ingest_calls.clear()
        return other


def chain(replica: MemoryReplica, n: int, prefix: bytes = b"e") -> list[bytes]:
    """Append *n* entries in a line; return their ids."""
    return [replica.append(prefix + str(k).encode()) for k in range(n)]
