"""The entries of one log as a Merkle DAG: ids, parents, heads, and orphans.

Theory of operation
-------------------
Every entry is a credential; its id is the credential id and its parents the
ids it names (halo/credentials.py). A :class:`Dag` numbers entries by their
*position*: the order they were added, which always puts parents first (an
entry is added only once all its parents are), and which is also the order
of the records in the log file. Positions make everything else cheap: the
parents are arrays of positions (compressed sparse rows), and the resolver
and the state refer to entries by position.

Two derived facts are kept as entries are added:

* the *heads*: entries no other entry names as a parent;
* *cut points*: positions ``c`` where ``c`` was the only head right after it
  was added, i.e. every entry at a position ``<= c`` is an ancestor of ``c``
  (or ``c``). In a linear history every position is a cut point. Walks over
  ancestors stop at the first cut point they reach: what lies below it is
  known without visiting it. That keeps :meth:`Dag.not_below` (what a peer
  lacks) proportional to what the peer lacks, not to the log.

:class:`Orphans` holds entries whose parents have not arrived yet, bounded,
and hands them back in a valid order once they can be added.

Facts (what the rules read from a credential, halo/state.py) are held by
position. A DAG restored from a checkpoint starts without them; a *loader*
the log provides reads them from the file on first use.

Pure: no I/O except through the loader the owner passes in.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from ..errors import DecodeError, LocalProtocolError
from ..wire import pack, unpack
from .state import Fact, SnapshotError, split_keys

__all__ = ["MAX_ORPHANS", "Dag", "Orphans"]

#: Most entries held while waiting for their parents (a peer may send us
#: unrelated or withheld-parent entries; they must not grow memory freely).
MAX_ORPHANS: Final = 8192

_BIG_ENDIAN: Final = array("I", [1]).tobytes()[0] == 0


def _le(a: array[int]) -> bytes:
    if _BIG_ENDIAN:  # pragma: no cover - checkpoints are little-endian everywhere
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _from_le(typecode: str, data: object) -> array[int]:
    if not isinstance(data, bytes):
        raise SnapshotError("an array column must be bytes")
    a = array(typecode)
    if len(data) % a.itemsize:
        raise SnapshotError("array column has a partial item")
    a.frombytes(data)
    if _BIG_ENDIAN:  # pragma: no cover
        a.byteswap()
    return a


FactLoader = Callable[[Sequence[int]], list[Fact]]


class Dag:
    """Entries by position: ids, parents (positions), heads, cut points, facts."""

    __slots__ = ("_cut", "_facts", "_heads", "_index", "_loader", "_pidx", "_pstart", "ids")

    def __init__(self) -> None:
        self.ids: list[bytes] = []
        self._index: dict[bytes, int] = {}
        self._pstart = array("I", [0])  # parents of i: _pidx[_pstart[i]:_pstart[i + 1]]
        self._pidx = array("I")
        self._cut = bytearray()
        self._heads: set[int] = set()
        self._facts: list[Fact | None] = []
        self._loader: FactLoader | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._index

    def index_of(self, entry_id: bytes) -> int | None:
        """The position of *entry_id*, ``None`` if unknown."""
        return self._index.get(entry_id)

    def parents(self, i: int) -> array[int]:
        """The positions of entry *i*'s parents."""
        return self._pidx[self._pstart[i] : self._pstart[i + 1]]

    @property
    def heads(self) -> set[int]:
        """Positions of the entries nobody names as a parent (do not modify)."""
        return self._heads

    def head_ids(self) -> list[bytes]:
        """The heads' ids, sorted (the ``parents`` a new local entry names)."""
        return sorted(self.ids[i] for i in self._heads)

    def is_cut(self, i: int) -> bool:
        """Whether every entry at a position ``<= i`` is an ancestor of *i* (or *i*)."""
        return bool(self._cut[i])

    def add(self, entry_id: bytes, parents: Sequence[int], fact: Fact | None) -> int:
        """Add an entry whose *parents* (positions) are all present; return its position."""
        if entry_id in self._index:
            raise LocalProtocolError("entry already in the DAG")
        i = len(self.ids)
        if any(p >= i for p in parents) or (not parents and i):
            raise LocalProtocolError("parents must be present, and only the genesis has none")
        self.ids.append(entry_id)
        self._index[entry_id] = i
        self._pidx.extend(parents)
        self._pstart.append(len(self._pidx))
        heads = self._heads
        heads.difference_update(parents)
        heads.add(i)
        self._cut.append(len(heads) == 1)
        self._facts.append(fact)
        return i

    # -- facts ---------------------------------------------------------------------------

    def fact(self, i: int) -> Fact:
        """The fact of entry *i*, loaded through the loader if not in memory."""
        f = self._facts[i]
        if f is None:
            f = self._load([i])[0]
        return f

    def load_facts(self) -> None:
        """Make sure every fact is in memory (one pass of the loader for all missing)."""
        missing = [i for i, f in enumerate(self._facts) if f is None]
        if missing:
            self._load(missing)

    def _load(self, positions: Sequence[int]) -> list[Fact]:
        if self._loader is None:
            raise LocalProtocolError("facts are not in memory and no loader was set")
        facts = self._loader(positions)
        for i, f in zip(positions, facts, strict=True):
            if f.id != self.ids[i]:
                raise LocalProtocolError(f"the loader returned another entry for position {i}")
            self._facts[i] = f
        return facts

    def set_loader(self, loader: FactLoader | None) -> None:
        """Where facts missing from memory (after :meth:`restore`) are read from."""
        self._loader = loader

    # -- walks ---------------------------------------------------------------------------

    def ancestors(self, parents: Iterable[int]) -> tuple[bytearray, int]:
        """The ancestors-or-self of *parents*: a mask over positions and its population.

        Walks down from *parents* and stops at cut points (everything below
        a cut point is its ancestor, so it is filled in without a walk).
        """
        n = len(self.ids)
        mask = bytearray(n)
        stack = list(parents)
        for p in stack:
            mask[p] = 1
        floor = -1  # every position <= floor is in the set
        pstart, pidx, cut = self._pstart, self._pidx, self._cut
        while stack:
            i = stack.pop()
            if i <= floor:
                continue
            if cut[i]:
                floor = max(floor, i)
                continue
            for p in pidx[pstart[i] : pstart[i + 1]]:
                if not mask[p]:
                    mask[p] = 1
                    stack.append(p)
        if floor >= 0:
            mask[: floor + 1] = b"\x01" * (floor + 1)
        return mask, mask.count(1)

    def not_below(self, heads: Iterable[int], limit: int) -> list[int]:
        """Positions ``< limit``, ascending, that are not ancestors-or-self of *heads*.

        What a peer whose heads are *heads* (positions we know) lacks among
        our first *limit* entries. Walks down from position ``limit - 1`` and
        stops at the first cut point below a head: all positions below it
        are its ancestors.
        """
        below = bytearray(limit)
        for h in heads:
            if h < limit:
                below[h] = 1
        out: list[int] = []
        pstart, pidx, cut = self._pstart, self._pidx, self._cut
        for i in range(limit - 1, -1, -1):
            if below[i]:
                if cut[i]:
                    break
                for p in pidx[pstart[i] : pstart[i + 1]]:
                    below[p] = 1
            else:
                out.append(i)
        out.reverse()
        return out

    def parent_counts(self) -> array[int]:
        """The number of parents of every entry (Kahn's in-degrees)."""
        pstart = self._pstart
        return array("I", [pstart[i + 1] - pstart[i] for i in range(len(self.ids))])

    def children(self) -> tuple[array[int], array[int]]:
        """Children of every entry, as compressed sparse rows ``(start, positions)``."""
        n = len(self.ids)
        counts = array("I", bytes(4 * (n + 1)))
        pidx, pstart = self._pidx, self._pstart
        for p in pidx:
            counts[p + 1] += 1
        for i in range(n):
            counts[i + 1] += counts[i]
        start = array("I", counts)
        out = array("I", bytes(4 * len(pidx)))
        fill = array("I", counts)
        for i in range(n):
            for p in pidx[pstart[i] : pstart[i + 1]]:
                out[fill[p]] = i
                fill[p] += 1
        return start, out

    # -- snapshot --------------------------------------------------------------------------

    def snapshot_fields(self) -> dict[str, bytes]:
        """The DAG without its facts, as columns (docs/PROTOCOL.md Part 9, checkpoint)."""
        return {
            "ids": b"".join(self.ids),
            "pstart": _le(self._pstart),
            "parents": _le(self._pidx),
            "cut": bytes(self._cut),
            "heads": _le(array("I", sorted(self._heads))),
        }

    def snapshot(self) -> bytes:
        """:meth:`snapshot_fields`, encoded."""
        return pack(self.snapshot_fields())

    @classmethod
    def restore(cls, data: bytes | dict[str, object]) -> Dag:
        """A DAG from :meth:`snapshot` (or its fields); facts load on first use.

        Raises :class:`SnapshotError`.
        """
        try:
            m = unpack(data, max_size=1 << 31, max_items=16) if isinstance(data, bytes) else data
            if not isinstance(m, dict) or set(m) != {"ids", "pstart", "parents", "cut", "heads"}:
                raise SnapshotError("DAG snapshot fields")
            ids = split_keys(m["ids"])
        except (DecodeError, ValueError) as exc:
            raise SnapshotError(f"DAG snapshot does not decode: {exc}") from None
        cut = m["cut"]
        if not isinstance(cut, bytes):
            raise SnapshotError("DAG snapshot cut points")
        d = cls()
        d.ids = ids
        n = len(ids)
        d._index = dict(zip(ids, range(n), strict=True))
        d._pstart = _from_le("I", m["pstart"])
        d._pidx = _from_le("I", m["parents"])
        d._cut = bytearray(cut)
        heads = _from_le("I", m["heads"])
        d._heads = set(heads)
        if (len(d._index) != n or len(d._pstart) != n + 1 or len(d._cut) != n
                or d._pstart[0] != 0 or d._pstart[n] != len(d._pidx)
                or (n and max(heads, default=n) >= n) or len(d._heads) != len(heads)
                or (n and not d._heads) or max(d._pidx, default=0) >= max(n, 1)):
            raise SnapshotError("DAG snapshot is inconsistent")
        d._facts = [None] * n
        return d


T = TypeVar("T")


@dataclass(slots=True)
class _Orphan(Generic[T]):
    payload: T
    waiting: set[bytes] = field(default_factory=set)


class Orphans(Generic[T]):
    """Entries waiting for their parents, bounded; FIFO eviction beyond *limit*.

    Generic over what is held (the log holds decoded credentials): the caller
    gives each entry's id and parent ids. Evicted entries are simply
    forgotten: a peer that still has them will offer them again.
    """

    __slots__ = ("_by_parent", "_held", "limit")

    def __init__(self, limit: int = MAX_ORPHANS) -> None:
        self.limit = limit
        self._held: OrderedDict[bytes, _Orphan[T]] = OrderedDict()
        self._by_parent: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._held

    def hold(self, entry_id: bytes, missing: Iterable[bytes], payload: T) -> None:
        """Hold *payload* (entry *entry_id*) until every id in *missing* was released."""
        if entry_id in self._held:
            return
        o = _Orphan(payload, set(missing))
        self._held[entry_id] = o
        for p in o.waiting:
            self._by_parent.setdefault(p, set()).add(entry_id)
        while len(self._held) > self.limit:
            self._drop(next(iter(self._held)))

    def _drop(self, entry_id: bytes) -> None:
        o = self._held.pop(entry_id)
        for p in o.waiting:
            ws = self._by_parent.get(p)
            if ws is not None:
                ws.discard(entry_id)
                if not ws:
                    del self._by_parent[p]

    def release(self, entry_id: bytes) -> list[tuple[bytes, T]]:
        """Entry *entry_id* is now present: the held entries that waited only for it."""
        ready: list[tuple[bytes, T]] = []
        for child in self._by_parent.pop(entry_id, ()):
            o = self._held.get(child)
            if o is None:
                continue
            o.waiting.discard(entry_id)
            if not o.waiting:
                del self._held[child]
                ready.append((child, o.payload))
        ready.sort(key=lambda item: item[0])  # a deterministic order
        return ready

    def missing(self) -> set[bytes]:
        """Ids some held entry waits for and that are not held themselves."""
        return {p for p in self._by_parent if p not in self._held}
