"""State resolution: a log's state as a pure function of its set of entries.

Theory of operation
-------------------
Peers add entries while apart, so a log is a DAG (halo/dag.py), and every
replica must reach the same state from the same *set* of entries, whatever
order they arrived in. :class:`Resolver` computes it over one deterministic
linear order of the DAG (Matrix state resolution's idea, kept small):

Order
    Kahn's topological sort. Among the entries whose parents have all been
    emitted, the smallest key ``(0 if power else 1, rank of the issuer,
    entry id)`` goes next. *Power* entries are role changes, removals and
    leaving (halo/rules.py ``POWER``); the rank is OWNER 0 < ADMIN 1 <
    EDITOR 2 < READER 3 < anyone else 4 (every device of an identity log
    ranks 0). Both are read from the entry's own *view*, so they depend on
    the entry and its ancestors only, never on what else arrived.

Two checks
    Entry E is checked (a) against its *view*, ``view(E) = resolve(A(E))``
    for its ancestor set ``A(E)``: the issuer had the right when it signed;
    and (b) against the running state at E's place in the order: it still
    holds after the concurrent entries ordered before it. E applies only if
    both pass. Otherwise it stays in the DAG (a signed fact) with no effect,
    and its status names the rule that refused it, (a)'s rule first.

Cost
    (a), the intent and the rank are computed once per entry, when it is
    added (they never change: ancestors never change), and kept in compact
    arrays. Computing ``view(E)``:

    * E's parents are exactly the current heads (every local append, most
      of sync): ``A(E)`` is the whole DAG, and Kahn on it is the order we
      already have (E, a descendant of everything, can only come last), so
      ``view(E)`` *is* the running state and (a) = (b): one check, E goes
      at the end of the order, applied incrementally. O(1).
    * E has a single parent P whose view we just computed (a branch that
      forked from ours, arriving in order): ``view(E) = view(P)`` with P
      applied, memoized for a few recent entries. O(1).
    * otherwise (the first entry after a fork, a merge): a replay of
      ``A(E)`` restricted to those entries, reusing their cached (a) results.

    Adding an entry that is not on the current heads marks the running state
    *dirty*; :meth:`Resolver.settle` (called at the end of every batch)
    recomputes it from scratch with the cached (a) results: a new order, the
    (b) checks, the statuses. A recompute never verifies a signature.

Pure: no I/O (facts restored from a checkpoint are read through the DAG's
loader), no clock.
"""

from __future__ import annotations

import heapq
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import CredentialError, LocalProtocolError
from ..wire import pack, unpack
from .credentials import Credential
from .dag import Dag, Orphans, _from_le, _le
from .rules import POWER, check, classify, rank, rule_code, rule_message, rule_name
from .state import Fact, FactKind, Intent, LogKind, MembershipState, SnapshotError, fact_of

__all__ = [
    "MAX_ENTRIES",
    "Offered",
    "Resolver",
    "Status",
    "check_genesis",
    "explain_rejections",
    "resolve",
]

#: Most entries in one log (a DAG of more is refused, whoever sends it).
MAX_ENTRIES: Final = 1_000_000
#: Views kept for the children of recently added fork entries.
_MEMO: Final = 8
_INTENTS: Final = tuple(Intent)
_POWER_CODES: Final = frozenset(int(i) for i in POWER)


@dataclass(frozen=True, slots=True)
class Status:
    """Whether an entry applied, and if not, the rule that refused it."""

    rule: str | None  # None: applied

    @property
    def applied(self) -> bool:
        """Whether the entry took effect."""
        return self.rule is None


@dataclass(frozen=True, slots=True)
class Offered:
    """What :meth:`Resolver.offer` did.

    ``added``: positions added, in order, each with the payload it was
    offered with; ``missing``: ids still lacking for held entries;
    ``duplicates``: entries already present or held; ``refused``: entries
    beyond :attr:`Resolver.max_entries` (rule ``log_full``), with payloads.
    """

    added: list[tuple[int, object]]
    missing: set[bytes]
    duplicates: int
    refused: list[tuple[Fact, object]]


def check_genesis(fact: Fact, *, kind: LogKind | None, key: bytes | None) -> None:
    """Refuse a genesis that cannot start the expected log (``CredentialError``).

    Rules: ``genesis_required`` (not a genesis type), ``wrong_log`` (another
    kind than *kind*), ``bad_genesis`` (not issued, signed and about its own
    key: a genesis is self-signed, and the credential check already refused a
    self-signed credential with a chain), ``wrong_genesis`` (another key
    than *key*).
    """
    if fact.kind is FactKind.IDENTITY_GENESIS:
        got = LogKind.IDENTITY
    elif fact.kind is FactKind.SPACE_GENESIS:
        got = LogKind.SPACE
    else:
        raise CredentialError("the first entry of a log must be a genesis",
                              rule="genesis_required")
    if kind is not None and got is not kind:
        raise CredentialError(f"expected a {kind} log, got a {got} log", rule="wrong_log")
    if not fact.issuer == fact.subject == fact.signer:
        raise CredentialError("a genesis is issued, signed and about its own key",
                              rule="bad_genesis")
    if key is not None and fact.issuer != key:
        raise CredentialError("genesis is for another key than expected", rule="wrong_genesis")


class Resolver:
    """The DAG of one log, its resolved order, every entry's status, and the state.

    *kind* and *key*, when given, pin the log: a genesis of another kind or
    key is refused (:func:`check_genesis`).

    Add entries with :meth:`append` (a local entry on the current heads:
    refused if its rules refuse it), :meth:`add` (a structurally valid entry
    whose parents are present: kept whatever its status) or :meth:`offer`
    (any entries, in any order, with duplicates: held until their parents
    arrive). Call :meth:`settle` after :meth:`add`; :meth:`offer` and
    :meth:`append` settle themselves.
    """

    def __init__(self, *, kind: LogKind | None = None, key: bytes | None = None,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.kind = kind
        self.key = key
        self.max_entries = max_entries
        self.dag = Dag()
        self.state = MembershipState(self.dag)
        # Per position: the cached results of check (a), from the entry's view.
        self._intent = bytearray()
        self._rank = bytearray()
        self._self = bytearray()  # (a)'s rule code, 0 if it passed
        self._status = bytearray()  # the final rule code, 0 if applied
        self._order = array("I")
        self._dirty = False
        self._memo: OrderedDict[int, MembershipState] = OrderedDict()
        self.orphans: Orphans[tuple[Fact, object]] = Orphans()
        #: Counters, for tests and benchmarks: full recomputes, and views that
        #: needed a replay of an ancestor set.
        self.recomputes = 0
        self.replayed_views = 0

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.dag)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self.dag

    def heads(self) -> list[bytes]:
        """Ids of the current heads, sorted: the parents of the next local entry."""
        return self.dag.head_ids()

    def status(self, entry_id: bytes) -> Status:
        """The status of entry *entry_id* (``KeyError`` if unknown)."""
        i = self.dag.index_of(entry_id)
        if i is None:
            raise KeyError(entry_id)
        self.settle()
        code = self._status[i]
        return Status(None if code == 0 else rule_name(code))

    def statuses(self) -> dict[bytes, Status]:
        """Every entry's status, by id."""
        self.settle()
        return {self.dag.ids[i]: Status(None if c == 0 else rule_name(c))
                for i, c in enumerate(self._status)}

    def rejected_about(self, subject: bytes) -> list[tuple[bytes, str]]:
        """``(id, rule)`` of the entries about *subject* that did not apply (diagnostics)."""
        self.settle()
        dag = self.dag
        return [(dag.ids[i], rule_name(c)) for i, c in enumerate(self._status)
                if c and dag.fact(i).subject == subject]

    def order(self) -> list[bytes]:
        """Entry ids in the resolved order."""
        self.settle()
        ids = self.dag.ids
        return [ids[i] for i in self._order]

    # -- adding ----------------------------------------------------------------------------

    def append(self, fact: Fact) -> int:
        """Add a local entry issued on the current heads, if its rules accept it.

        Raises ``CredentialError`` with the refusing rule (nothing changes),
        and ``LocalProtocolError`` if its parents are not the current heads.
        """
        self.settle()
        if len(self.dag) >= self.max_entries:
            raise CredentialError(f"the log holds {self.max_entries} entries", rule="log_full")
        parents = self._positions(fact)
        if not parents or set(parents) != self.dag.heads:
            raise LocalProtocolError("a local entry must name the current heads as parents")
        state = self.state
        intent = classify(state, fact)
        code = check(state, fact, intent)
        if code:
            raise CredentialError(rule_message(code), rule=rule_name(code))
        return self._add_linear(fact, parents, intent, rank(state, fact), 0)

    def add(self, fact: Fact) -> int:
        """Add a structurally valid entry whose parents are all present; return its position.

        The entry stays whatever its status. Call :meth:`settle` before
        reading the state (:meth:`offer` does).
        """
        parents = self._positions(fact)
        dag = self.dag
        if not parents:
            if len(dag):
                raise LocalProtocolError("a log has one genesis")
            check_genesis(fact, kind=self.kind, key=self.key)
            return self._add_linear(fact, parents, Intent.GENESIS, 0, 0)
        if set(parents) == dag.heads:
            self.settle()
            state = self.state
            intent = classify(state, fact)
            return self._add_linear(fact, parents, intent, rank(state, fact),
                                    check(state, fact, intent))
        view = self._view(parents)
        intent = classify(view, fact)
        code = check(view, fact, intent)
        i = self._record(fact, parents, intent, rank(view, fact), code)
        if code == 0:
            view.apply(fact, intent, i)
        self._memo[i] = view  # view(child) for a child naming only this entry
        while len(self._memo) > _MEMO:
            self._memo.popitem(last=False)
        self._dirty = True
        return i

    def offer(self, items: Iterable[Fact | tuple[Fact, object]]) -> Offered:
        """Add any structurally valid entries, in any order, duplicates ignored.

        Each item is a fact, or a fact with a payload the caller wants back
        when the entry is added (the log: its bytes, to write). An entry whose
        parents are missing is held (:attr:`orphans`) until they arrive;
        ``missing`` reports the ids still lacking. Entries beyond
        :attr:`max_entries` are refused. Settles.
        """
        dag, orphans = self.dag, self.orphans
        added: list[tuple[int, object]] = []
        refused: list[tuple[Fact, object]] = []
        duplicates = 0
        for item in items:
            f, payload = item if isinstance(item, tuple) else (item, None)
            if f.id in dag or f.id in orphans:
                duplicates += 1
                continue
            missing = [p for p in f.parents if p not in dag]
            if missing:
                orphans.hold(f.id, missing, (f, payload))
                continue
            ready = [(f, payload)]
            while ready:
                g, gp = ready.pop()
                if len(dag) >= self.max_entries:
                    refused.append((g, gp))
                    continue
                added.append((self.add(g), gp))
                ready.extend(h for _, h in orphans.release(g.id))
        self.settle()
        return Offered(added, orphans.missing(), duplicates, refused)

    def _positions(self, fact: Fact) -> list[int]:
        index = self.dag.index_of
        out = []
        for p in fact.parents:
            i = index(p)
            if i is None:
                raise LocalProtocolError("an entry's parents must be added before it")
            out.append(i)
        return out

    def _record(self, fact: Fact, parents: Sequence[int], intent: Intent, rank_: int,
                code: int) -> int:
        i = self.dag.add(fact.id, parents, fact)
        self._intent.append(intent)
        self._rank.append(rank_)
        self._self.append(code)
        self._status.append(code)
        return i

    def _add_linear(self, fact: Fact, parents: Sequence[int], intent: Intent, rank_: int,
                    code: int) -> int:
        i = self._record(fact, parents, intent, rank_, code)
        self._order.append(i)
        if code == 0:
            self.state.apply(fact, intent, i)
        return i

    def _view(self, parents: Sequence[int]) -> MembershipState:
        """A private copy of ``resolve(ancestors-or-self of parents)``."""
        if len(parents) == 1:
            memo = self._memo.pop(parents[0], None)
            if memo is not None:
                return memo
        mask, count = self.dag.ancestors(parents)
        if count == len(self.dag):  # redundant parents: the ancestors are everything
            self.settle()
            return self.state.copy()
        self.replayed_views += 1
        return self._replay(mask)[0]

    # -- recomputing -----------------------------------------------------------------------

    def settle(self) -> None:
        """Recompute the order, the statuses and the state if entries were added off-heads."""
        if not self._dirty:
            return
        state, order, status = self._replay(None)
        self.state.assume(state)
        self._order, self._status = order, status
        self._dirty = False
        self.recomputes += 1

    def _replay(self, mask: bytearray | None) -> tuple[MembershipState, array[int], bytearray]:
        """Kahn's order over the entries in *mask* (all if None), checked and applied."""
        dag = self.dag
        dag.load_facts()
        n = len(dag)
        ids, intent_of, rank_of, self_of = dag.ids, self._intent, self._rank, self._self
        kstart, kids = dag.children()
        indeg = dag.parent_counts()
        state = MembershipState(dag)
        order = array("I")
        status = bytearray(n)
        power = _POWER_CODES

        def key(i: int) -> tuple[int, int, bytes, int]:
            return (0 if intent_of[i] in power else 1, rank_of[i], ids[i], i)

        heap = [key(0)] if n and (mask is None or mask[0]) else []
        pop, push, apply, fact = heapq.heappop, heapq.heappush, state.apply, dag.fact
        while heap:
            i = pop(heap)[3]
            order.append(i)
            code = self_of[i]
            if code == 0:
                f = fact(i)
                intent = _INTENTS[intent_of[i]]
                code = check(state, f, intent)
                if code == 0:
                    apply(f, intent, i)
            status[i] = code
            for c in kids[kstart[i] : kstart[i + 1]]:
                if mask is None or mask[c]:
                    indeg[c] -= 1
                    if indeg[c] == 0:
                        push(heap, key(c))
        return state, order, status

    # -- snapshot --------------------------------------------------------------------------

    def snapshot_fields(self) -> dict[str, Any]:
        """Everything but the facts, as nested columns (docs/PROTOCOL.md Part 9, checkpoint)."""
        self.settle()
        return {
            "dag": self.dag.snapshot_fields(),
            "intent": bytes(self._intent),
            "rank": bytes(self._rank),
            "self": bytes(self._self),
            "status": bytes(self._status),
            "order": _le(self._order),
            "state": self.state.snapshot_fields(),
        }

    def snapshot(self) -> bytes:
        """:meth:`snapshot_fields`, encoded."""
        return pack(self.snapshot_fields())

    @classmethod
    def restore(cls, data: bytes | dict[str, Any], *, kind: LogKind | None = None,
                key: bytes | None = None, max_entries: int = MAX_ENTRIES) -> Resolver:
        """The resolver a :meth:`snapshot` (or its fields) describes; facts load on first use.

        Raises :class:`SnapshotError` if it does not decode, is inconsistent,
        or is for another kind or key than *kind*/*key*.
        """
        try:
            m = unpack(data, max_size=1 << 31, max_items=16) if isinstance(data, bytes) else data
        except Exception as exc:
            raise SnapshotError(f"resolver snapshot does not decode: {exc}") from None
        fields = {"dag", "intent", "rank", "self", "status", "order", "state"}
        if not isinstance(m, dict) or set(m) != fields:
            raise SnapshotError("resolver snapshot fields")
        r = cls(kind=kind, key=key, max_entries=max_entries)
        r.dag = Dag.restore(m["dag"])
        n = len(r.dag)
        cols = [m[k] for k in ("intent", "rank", "self", "status")]
        if not all(isinstance(c, bytes) and len(c) == n for c in cols):
            raise SnapshotError("resolver snapshot columns differ in length")
        r._intent, r._rank, r._self, r._status = (bytearray(c) for c in cols)
        r._order = _from_le("I", m["order"])
        if (len(r._order) != n or (n and max(r._order) >= n)
                or (n and max(r._intent) >= len(_INTENTS))):
            raise SnapshotError("resolver snapshot order or intents out of range")
        r.state = MembershipState.restore(r.dag, m["state"], entries=n)
        if (kind is not None and r.state.kind is not kind) or (
                key is not None and r.state.key != key):
            raise SnapshotError("snapshot is for another log")
        return r


def explain_rejections(resolver: Resolver, subject: bytes) -> str:
    """Why entries about *subject* did not apply, as a parenthesis for an error message."""
    rules = [rule for _, rule in resolver.rejected_about(subject)]
    if not rules:
        return ""
    return " (" + "; ".join(f"{r}: {rule_message(rule_code(r))}" for r in rules) + ")"


def resolve(credentials: Iterable[Credential], *, kind: LogKind | None = None,
            key: bytes | None = None) -> Resolver:
    """The resolved log of structurally valid *credentials*, given in any order.

    Every parent must be among them and exactly one must be a genesis;
    duplicates are ignored. (Signatures are not checked here: that is the
    log's job, on ingest.)
    """
    r = Resolver(kind=kind, key=key)
    offered = r.offer(fact_of(c) for c in credentials)
    if offered.missing:
        raise LocalProtocolError(f"{len(offered.missing)} parents are missing")
    return r
