"""A literal, slow model of state resolution (docs/PROTOCOL.md Part 8 §3.2), for tests.

It follows the definition word for word, with none of the resolver's
shortcuts: ``view(E)`` is ``resolve(A(E))`` computed by recursion on the
ancestor set, the order is Kahn's with the smallest key among every ready
entry, and each entry is checked against its view and against the running
state. The optimized :class:`~p2pinvite.halo.resolve.Resolver` (incremental
appends, memoized views, cached checks, recomputes) must agree with it on
every history: state, order and every status. Cost is exponential-ish; keep
histories to a few dozen entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from p2pinvite.halo.credentials import Credential
from p2pinvite.halo.rules import POWER, check, classify, rank, rule_name
from p2pinvite.halo.state import Fact, Intent, MembershipState, fact_of


class _Facts:
    def __init__(self, facts: list[Fact]) -> None:
        self.facts = facts

    def fact(self, index: int) -> Fact:
        return self.facts[index]


@dataclass(frozen=True)
class Resolution:
    """What the model computes for a set of entries."""

    order: list[bytes]
    statuses: dict[bytes, str | None]  # None: applied
    state: MembershipState


def reference_resolve(credentials: Iterable[Credential]) -> Resolution:
    """Resolve a set of credentials by the literal definition."""
    facts = {c.id: fact_of(c) for c in credentials}
    ids = sorted(facts)  # positions for the state: any fixed numbering will do
    pos = {e: i for i, e in enumerate(ids)}
    source = _Facts([facts[e] for e in ids])

    @cache
    def ancestors(e: bytes) -> frozenset[bytes]:
        out: set[bytes] = set()
        for p in facts[e].parents:
            out.add(p)
            out |= ancestors(p)
        return frozenset(out)

    @cache
    def own(e: bytes) -> tuple[Intent, int, int]:
        """(intent, rank, rule of check (a)) from view(e) = resolve(A(e))."""
        view = run(ancestors(e))[2]
        intent = classify(view, facts[e])
        return intent, rank(view, facts[e]), check(view, facts[e], intent)

    @cache
    def run(entries: frozenset[bytes]) -> tuple[tuple[bytes, ...], tuple[int, ...],
                                                MembershipState]:
        done: set[bytes] = set()
        order: list[bytes] = []
        codes: list[int] = []
        state = MembershipState(source)
        while len(done) < len(entries):
            ready = [e for e in entries if e not in done
                     and all(p in done for p in facts[e].parents)]

            def key(e: bytes) -> tuple[int, int, bytes]:
                intent, r, _ = own(e)
                return (0 if intent in POWER else 1, r, e)

            e = min(ready, key=key)
            intent, _, code = own(e)
            if code == 0:
                code = check(state, facts[e], intent)
                if code == 0:
                    state.apply(facts[e], intent, pos[e])
            done.add(e)
            order.append(e)
            codes.append(code)
        return tuple(order), tuple(codes), state

    order, codes, state = run(frozenset(facts))
    return Resolution(list(order),
                      {e: None if c == 0 else rule_name(c) for e, c in zip(order, codes,
                                                                            strict=True)},
                      state)


def canonical(state: MembershipState) -> tuple[object, ...]:
    """A state as comparable plain data, independent of entry positions."""
    members = [state.member(m.identity) for m in state.members()]
    removed = [state.member(k) for k in state.removed()]
    devices = [state.device(d) for d in state.devices()]
    redeemed = {inv: state.redeemers(inv) for inv in state.invitations()}
    key = state.key_in_force()
    swarm_key = (key.epoch, key.check, [f.id for f in key.entries], key.stale)
    return (state.kind, state.key, state.name, state.owner, members, removed, devices,
            redeemed, state.revoked_devices(), swarm_key)
