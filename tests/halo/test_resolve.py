"""halo.resolve: state as a pure function of the set of entries (no files).

The consequences docs/PROTOCOL.md Part 8 §3.2 promises, each on a small
history with a fork; the resolver against a literal model of the definition;
and the property the DAG exists for: replicas that issue apart and merge
reach the same state whatever order the entries arrive in.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import CredentialError, LocalProtocolError
from p2pinvite.halo.credentials import Credential, Role, issue_role_change
from p2pinvite.halo.resolve import Resolver, resolve
from p2pinvite.halo.state import Fact, LogKind, fact_of

from .reference import canonical, reference_resolve
from .strategies import T0, Cast, IdentityBuilder, Replica

X, Y = b"\x01" * 32, b"\x02" * 32


def rule(r: Resolver, cred: Credential) -> str | None:
    return r.status(cred.id).rule


def orders(creds: list[Credential], n: int = 6) -> Iterator[list[Credential]]:
    """*creds* in *n* arrival orders (the built order first), each a valid delivery."""
    rng = random.Random(len(creds))
    yield creds
    for _ in range(n - 1):
        shuffled = list(creds)
        rng.shuffle(shuffled)
        yield shuffled


def agree(creds: list[Credential]) -> Resolver:
    """Resolve *creds* in several arrival orders and by the model; all must agree."""
    model = reference_resolve(creds)
    first = None
    for arrival in orders(creds):
        r = resolve(arrival)
        assert r.order() == model.order
        assert {k: v.rule for k, v in r.statuses().items()} == model.statuses
        assert canonical(r.state) == canonical(model.state)
        first = first or r
    assert first is not None
    return first


# -- the consequences ---------------------------------------------------------------------


def test_two_admins_admitting_while_apart_both_count(cast: Cast) -> None:
    fork = cast.fork()
    x = cast.space.admit(cast.a, X, Role.READER, name="x", parents=fork, invitation=b"i")
    y = cast.space.admit(cast.b, Y, Role.EDITOR, name="y", parents=fork, invitation=b"i")
    merge = cast.space.admit(cast.owner, b"\x03" * 32, Role.READER)  # on both heads
    assert set(merge.parents) == {x.id, y.id}
    r = agree(cast.space.creds)
    assert rule(r, x) is None
    assert rule(r, y) is None
    assert r.state.role_of(X) is Role.READER
    assert r.state.role_of(Y) is Role.EDITOR
    assert r.state.redeemed(b"i") == 2
    assert r.heads() == [merge.id]


def test_a_removal_beats_what_the_removed_admin_signed_concurrently(cast: Cast) -> None:
    fork = cast.fork()
    removal = cast.space.remove(cast.owner, cast.a.public, parents=fork)
    x = cast.space.admit(cast.a, X, Role.READER, parents=fork)
    y = cast.space.admit(cast.a, Y, Role.READER, parents=[x.id])  # A goes on, still apart
    demote = cast.space.change(cast.a, cast.editor.public, Role.READER, parents=[y.id])
    r = agree(cast.space.creds)
    assert rule(r, removal) is None
    assert [rule(r, c) for c in (x, y, demote)] == ["issuer_removed"] * 3
    assert not r.state.is_member(X)
    assert not r.state.is_member(Y)
    assert r.state.role_of(cast.editor.public) is Role.EDITOR
    assert r.state.role_of(cast.a.public) is Role.REMOVED
    # Each of A's entries was valid in its own view: check (b) refused them.
    alone = resolve([c for c in cast.space.creds if c is not removal])
    assert [rule(alone, c) for c in (x, y, demote)] == [None] * 3


def test_two_owners_removing_each_other_settle_by_id(cast: Cast) -> None:
    space, owner = cast.space, cast.owner
    space.change(owner, cast.a.public, Role.OWNER)
    space.change(owner, cast.b.public, Role.OWNER)
    fork = cast.fork()
    a_removes_b = space.remove(cast.a, cast.b.public, parents=fork)
    b_removes_a = space.remove(cast.b, cast.a.public, parents=fork)
    r = agree(space.creds)
    first, second = sorted([a_removes_b, b_removes_a], key=lambda c: c.id)
    assert rule(r, first) is None
    assert rule(r, second) == "issuer_removed"
    loser = cast.b if first is a_removes_b else cast.a
    assert r.state.role_of(loser.public) is Role.REMOVED
    assert len(r.state.removed()) == 1


def test_a_higher_rank_power_entry_goes_first_whatever_the_ids(cast: Cast) -> None:
    space = cast.space
    space.change(cast.owner, cast.a.public, Role.OWNER)
    fork = cast.fork()
    # An OWNER (rank 0) removes the ADMIN B, who concurrently removes the EDITOR.
    # Both are power entries; rank decides before the ids are compared, so
    # pick B's entry with the smaller id: by id alone, it would go first.
    owner_removes_b = space.remove(cast.a, cast.b.public, parents=fork)
    t = T0
    while True:
        t += 1
        b_removes_editor = issue_role_change(
            cast.b.device, issuer=cast.b.public, space=space.public,
            member=cast.editor.public, role=Role.REMOVED, parents=fork,
            chain=cast.b.chain_of(), issued_at=t)
        if b_removes_editor.id < owner_removes_b.id:
            break
    space.add(b_removes_editor)
    r = agree(space.creds)
    assert rule(r, owner_removes_b) is None
    assert rule(r, b_removes_editor) == "issuer_removed"
    assert r.state.is_member(cast.editor.public)
    order = r.order()
    assert order.index(owner_removes_b.id) < order.index(b_removes_editor.id)


def test_power_entries_go_before_concurrent_admissions(cast: Cast) -> None:
    fork = cast.fork()
    # The owner admits X (rank 0, admission) while B demotes... no: B, an ADMIN,
    # removes the editor (rank 1, power): power first despite the lower rank.
    admission = cast.space.admit(cast.owner, X, Role.READER, parents=fork)
    removal = cast.space.remove(cast.b, cast.editor.public, parents=fork)
    r = agree(cast.space.creds)
    order = r.order()
    assert order.index(removal.id) < order.index(admission.id)


def test_the_genesis_owner_can_never_be_removed_or_demoted(cast: Cast) -> None:
    space, owner = cast.space, cast.owner
    space.change(owner, cast.a.public, Role.OWNER)  # a co-owner may manage OWNERs...
    removal = space.remove(cast.a, owner.public)
    demotion = space.change(cast.a, owner.public, Role.ADMIN)
    leaving = space.remove(owner, owner.public)  # ... and the owner cannot leave either
    r = agree(space.creds)
    assert rule(r, removal) == "cannot_remove_owner"
    assert rule(r, demotion) == "cannot_demote_owner"
    assert rule(r, leaving) == "cannot_remove_owner"
    assert r.state.role_of(owner.public) is Role.OWNER


def test_entries_issued_after_a_removal_have_no_effect_once_merged(cast: Cast) -> None:
    fork = cast.fork()
    removal = cast.space.remove(cast.owner, cast.a.public, parents=fork)
    # A saw its own removal (a stale or hostile client) and issues anyway...
    late = cast.space.admit(cast.a, X, Role.READER, parents=[removal.id])
    # ... and B, apart, admitted Y before hearing of it; the logs then merge.
    y = cast.space.admit(cast.b, Y, Role.READER, parents=fork)
    after = cast.space.admit(cast.a, b"\x04" * 32, Role.READER)  # on the merged heads
    r = agree(cast.space.creds)
    assert rule(r, late) == "issuer_removed"
    assert rule(r, after) == "issuer_removed"
    assert rule(r, y) is None
    assert not r.state.is_member(X)
    assert r.state.is_member(Y)


def test_a_concurrently_promoted_member_could_not_admit_before_seeing_it(cast: Cast) -> None:
    fork = cast.fork()
    promotion = cast.space.change(cast.owner, cast.editor.public, Role.ADMIN, parents=fork)
    early = cast.space.admit(cast.editor, X, Role.READER, parents=fork)
    later = cast.space.admit(cast.editor, Y, Role.READER, parents=[promotion.id, early.id])
    r = agree(cast.space.creds)
    order = r.order()
    # The promotion (power) is ordered first, so check (b) alone would pass:
    # check (a), the editor's own view, refuses.
    assert order.index(promotion.id) < order.index(early.id)
    assert rule(r, early) == "not_admin"
    assert rule(r, later) is None
    assert not r.state.is_member(X)
    assert r.state.is_member(Y)


def test_a_status_names_the_rule_of_check_a_first(cast: Cast) -> None:
    fork = cast.fork()
    removal = cast.space.remove(cast.owner, cast.editor.public, parents=fork)
    attempt = cast.space.admit(cast.editor, X, Role.READER, parents=fork)
    r = agree(cast.space.creds)
    assert rule(r, removal) is None
    # (a) not_admin (an EDITOR), (b) issuer_removed (removed first): (a) wins.
    assert rule(r, attempt) == "not_admin"


def test_two_admins_admitting_the_same_identity_admit_it_once(cast: Cast) -> None:
    fork = cast.fork()
    x1 = cast.space.admit(cast.a, X, Role.READER, name="by a", parents=fork, invitation=b"1")
    x2 = cast.space.admit(cast.b, X, Role.EDITOR, name="by b", parents=fork, invitation=b"2")
    r = agree(cast.space.creds)
    first, second = sorted([x1, x2], key=lambda c: c.id)  # same rank: the id decides
    assert rule(r, first) is None
    assert rule(r, second) == "already_member"
    m = r.state.member(X)
    assert m is not None
    assert m.entry == first.id
    assert r.state.redeemed(b"1") + r.state.redeemed(b"2") == 1


# -- role changes, removals, leaving (linear) ----------------------------------------------


def test_role_change_rules(cast: Cast) -> None:
    space, owner, a = cast.space, cast.owner, cast.a
    editor = cast.editor.public
    cases = [
        (space.change(a, editor, Role.READER), None),
        (space.change(a, editor, Role.READER), "same_role"),
        (space.change(a, editor, Role.ADMIN), "owner_required"),
        (space.change(a, cast.b.public, Role.EDITOR), "owner_required"),
        (space.remove(a, cast.b.public), "owner_required"),
        (space.change(a, X, Role.EDITOR), None),  # not a member: an admission
        (space.change(cast.editor, X, Role.READER), "not_admin"),
        (space.change(owner, cast.b.public, Role.EDITOR), None),
        (space.remove(a, cast.b.public), None),  # an EDITOR now: an ADMIN may
        (space.remove(a, cast.b.public), "not_member"),
        (space.change(a, cast.b.public, Role.READER), None),  # REMOVED: re-admitted
        (space.remove(cast.editor, cast.editor.public), None),  # leaving
        (space.admit(cast.editor, Y, Role.READER), "issuer_removed"),
        (space.change(owner, cast.editor.public, Role.EDITOR), None),  # back
    ]
    r = agree(space.creds)
    assert [rule(r, c) for c, _ in cases] == [expected for _, expected in cases]
    assert r.state.role_of(editor) is Role.EDITOR
    assert r.state.role_of(cast.b.public) is Role.READER
    b = r.state.member(cast.b.public)
    assert b is not None
    assert b.entry == cases[10][0].id
    keeps = r.state.member(X)
    assert keeps is not None
    assert keeps.role is Role.EDITOR


def test_a_role_change_keeps_the_admission(cast: Cast) -> None:
    admission = cast.space.admit(cast.a, X, Role.READER, name="Xavier", invitation=b"inv")
    cast.space.change(cast.owner, X, Role.ADMIN)
    r = agree(cast.space.creds)
    m = r.state.member(X)
    assert m is not None
    assert (m.role, m.name, m.admitted_by, m.invitation, m.entry) == (
        Role.ADMIN, "Xavier", cast.a.public, b"inv", admission.id)
    assert r.state.redeemers(b"inv") == [X]


def test_identity_log_devices_and_concurrent_authorizations() -> None:
    ident = IdentityBuilder.create("me", seed=b"me")
    second = ident.add_device()
    fork = sorted(ident.heads)
    third = ident.add_device(ident.device, parents=fork)
    fourth = ident.add_device(second, parents=fork)
    r = agree(ident.creds)
    assert r.state.kind is LogKind.IDENTITY
    assert set(r.state.devices()) == {d.device_public for d in (ident.device, second, third,
                                                                 fourth)}
    assert r.state.device_chain(fourth.device_public) == ident.chain_of(fourth)
    assert all(s.applied for s in r.statuses().values())


# -- cost ----------------------------------------------------------------------------------


def test_a_linear_history_never_replays(cast: Cast) -> None:
    r = Resolver()
    for c in cast.space.creds:
        r.append(fact_of(c)) if c.parents else r.add(fact_of(c))
    for i in range(100):
        c = cast.space.admit(cast.owner, i.to_bytes(32, "big"), Role.READER)
        r.append(fact_of(c))
    assert (r.recomputes, r.replayed_views) == (0, 0)
    assert len(r.state.members()) == 104


def test_a_branch_costs_one_view_replay_and_one_recompute(cast: Cast) -> None:
    r = resolve(cast.space.creds)
    fork = cast.fork()
    ours = [cast.space.admit(cast.owner, bytes([9, i]) * 16, parents=fork if i == 0 else None)
            for i in range(5)]
    for c in ours:
        r.append(fact_of(c))
    # Another admin's branch from the same fork, arriving in order in one batch.
    theirs = []
    parents = fork
    for i in range(20):
        c = cast.space.admit(cast.a, bytes([7, i]) * 16, parents=parents)
        theirs.append(c)
        parents = [c.id]
    before = (r.recomputes, r.replayed_views)
    r.offer(fact_of(c) for c in theirs)
    assert (r.recomputes - before[0], r.replayed_views - before[1]) == (1, 1)
    assert len(r.state.members()) == 4 + 5 + 20


def test_append_refuses_what_the_rules_refuse_and_entries_off_the_heads(cast: Cast) -> None:
    r = resolve(cast.space.creds)
    before = canonical(r.state)
    bad = cast.space.admit(cast.editor, X, Role.READER)
    with pytest.raises(CredentialError) as info:
        r.append(fact_of(bad))
    assert info.value.rule == "not_admin"
    assert canonical(r.state) == before
    assert bad.id not in r
    stale = cast.space.admit(cast.owner, Y, parents=cast.space.creds[-3].parents)
    with pytest.raises(LocalProtocolError):
        r.append(fact_of(stale))


# -- delivery: orphans, duplicates ----------------------------------------------------------


def test_orphans_wait_for_their_parents_and_report_them(cast: Cast) -> None:
    creds = cast.space.creds
    r = Resolver()
    first = r.offer(fact_of(c) for c in [creds[0], creds[3], creds[4]])
    assert [r.dag.ids[i] for i, _ in first.added] == [creds[0].id]
    # creds[3] waits for creds[2], creds[4] for creds[3] (held: not reported).
    assert first.missing == {creds[2].id}
    second = r.offer(fact_of(c) for c in [creds[2], creds[1], creds[2]])
    assert second.duplicates == 1
    assert second.missing == set()
    assert [r.dag.ids[i] for i, _ in second.added] == [c.id for c in creds[1:5]]
    assert canonical(r.state) == canonical(resolve(creds).state)


def test_orphans_are_bounded(cast: Cast) -> None:
    r = Resolver()
    r.orphans.limit = 3
    r.offer([fact_of(cast.space.creds[0])])
    chain = [cast.space.admit(cast.owner, bytes([i]) * 32) for i in range(6)]
    r.offer(fact_of(c) for c in chain)  # all orphans: the owner's membership is missing
    assert len(r.orphans) == 3


# -- snapshot --------------------------------------------------------------------------------


def test_snapshot_restore_then_continue(cast: Cast) -> None:
    fork = cast.fork()
    cast.space.admit(cast.a, X, parents=fork)
    cast.space.remove(cast.owner, cast.a.public, parents=fork)
    r = resolve(cast.space.creds)
    back = Resolver.restore(r.snapshot(), kind=LogKind.SPACE, key=cast.space.public)
    by_id = {c.id: fact_of(c) for c in cast.space.creds}
    back.dag.set_loader(lambda positions: [by_id[back.dag.ids[i]] for i in positions])
    assert back.order() == r.order()
    assert back.statuses() == r.statuses()
    assert canonical(back.state) == canonical(r.state)
    # Continue on both: a linear entry, then a fork and a merge.
    more = [cast.space.admit(cast.owner, Y)]
    more.append(cast.space.admit(cast.b, b"\x05" * 32, parents=fork))
    more.append(cast.space.admit(cast.owner, b"\x06" * 32))
    for res in (r, back):
        res.offer(fact_of(c) for c in more)
    assert canonical(back.state) == canonical(r.state)
    assert back.statuses() == r.statuses()
    assert canonical(r.state) == canonical(reference_resolve(cast.space.creds).state)


def test_restore_refuses_a_snapshot_of_another_log(cast: Cast) -> None:
    from p2pinvite.halo.state import SnapshotError

    data = resolve(cast.space.creds).snapshot()
    with pytest.raises(SnapshotError):
        Resolver.restore(data, key=b"\x00" * 32)
    with pytest.raises(SnapshotError):
        Resolver.restore(data, kind=LogKind.IDENTITY)
    with pytest.raises(SnapshotError):
        Resolver.restore(data[:-3])


# -- the property: replicas apart, merged, delivered in any order ----------------------------

_OPS = st.sampled_from(["admit", "change", "remove", "leave", "rotate", "merge", "merge",
                        "sync"])
#: Swarm keys the histories rotate to: a few epochs and checks, so that
#: concurrent rotations collide and grants of the key in force happen.
_KEYS = st.tuples(st.integers(2, 4), st.sampled_from([b"\x0a" * 16, b"\x0b" * 16]))
_ROLES = st.sampled_from([Role.ADMIN, Role.EDITOR, Role.READER, Role.OWNER])


@st.composite
def histories(draw: st.DrawFn, base: Cast) -> list[Credential]:
    """A random history of three replicas of *base* (issuers O, A, B, editor): admissions,
    role changes, removals, leaves and swarm keys (rotations and grants)."""
    issuers = [base.owner, base.a, base.b, base.editor]
    subjects = [i.public for i in issuers[1:]] + [X, Y]
    space = base.copy().space
    replicas = [Replica(space.creds) for _ in range(3)]
    for _ in range(draw(st.integers(1, 20))):
        op = draw(_OPS)
        here = draw(st.integers(0, 2))
        if op == "merge":
            replicas[here].merge(replicas[draw(st.integers(0, 2))])
            continue
        if op == "sync":
            for r in replicas[1:]:
                replicas[0].merge(r)
            for r in replicas[1:]:
                r.merge(replicas[0])
            continue
        who = issuers[draw(st.integers(0, 3))]
        parents = sorted(replicas[here].heads)
        if op == "leave":
            cred = space.remove(who, who.public, parents=parents)
        elif op == "rotate":
            epoch, check = draw(_KEYS)
            cred = space.swarm_key(who, epoch, check, parents=parents)
        else:
            subject = subjects[draw(st.integers(0, len(subjects) - 1))]
            if op == "admit":
                cred = space.admit(who, subject, draw(_ROLES), parents=parents,
                                   invitation=draw(st.sampled_from([None, b"i1", b"i2"])))
            elif op == "change":
                cred = space.change(who, subject, draw(_ROLES), parents=parents)
            else:
                cred = space.remove(who, subject, parents=parents)
        replicas[here].add(cred)
    union = Replica()
    for r in replicas:
        union.merge(r)
    return list(union.creds.values())


def deliveries(creds: list[Credential], rnd: random.Random) -> list[list[Fact]]:
    """*creds* shuffled, some duplicated, cut into batches."""
    pool = [*creds, *rnd.choices(creds, k=rnd.randint(0, len(creds)))]
    rnd.shuffle(pool)
    cuts = sorted(rnd.sample(range(1, len(pool)), k=min(3, len(pool) - 1)))
    return [[fact_of(c) for c in pool[a:b]]
            for a, b in zip([0, *cuts], [*cuts, len(pool)], strict=True)]


@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_any_arrival_order_reaches_the_same_state(base: Cast, data: st.DataObject) -> None:
    creds = data.draw(histories(base))
    model = reference_resolve(creds)
    expected = (model.order, model.statuses, canonical(model.state))
    facts = {c.id: fact_of(c) for c in creds}
    for seed in range(3):
        rnd = random.Random(data.draw(st.integers(0, 2**32), label=f"seed {seed}"))
        r = Resolver()
        for batch in deliveries(creds, rnd):
            r.offer(batch)
        assert not r.orphans
        got = (r.order(), {k: v.rule for k, v in r.statuses().items()}, canonical(r.state))
        assert got == expected
        # And the same again after a snapshot round trip.
        back = Resolver.restore(r.snapshot())
        back.dag.set_loader(lambda ps, b=back: [facts[b.dag.ids[i]] for i in ps])
        assert canonical(back.state) == expected[2]
