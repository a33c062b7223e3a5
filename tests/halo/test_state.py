"""halo.rules and halo.state: every membership rule on linear logs, snapshots.

Entries go through :meth:`Resolver.append` (a local entry on the heads): a
refusal names the rule and leaves the state as it was. Concurrency is
test_resolve.py's subject; signatures and chains are the log's (test_log.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import CredentialError, LocalProtocolError
from p2pinvite.halo.credentials import (
    MAX_CHAIN_DEPTH,
    Credential,
    Role,
    issue_authorized_device,
    issue_space_member,
)
from p2pinvite.halo.keys import DeviceKeys, SigningKey
from p2pinvite.halo.resolve import Resolver, check_genesis, resolve
from p2pinvite.halo.rules import RULE_NAMES, rule_code, rule_message
from p2pinvite.halo.state import LogKind, MembershipState, SnapshotError, fact_of

from .reference import canonical
from .strategies import IdentityBuilder, SpaceBuilder, identity_logs, space_logs


def linear(creds: list[Credential], **kw: object) -> Resolver:
    r = Resolver(**kw)  # type: ignore[arg-type]
    for c in creds:
        r.append(fact_of(c)) if c.parents else r.add(fact_of(c))
    return r


def refused(r: Resolver, log: IdentityBuilder | SpaceBuilder, cred: Credential,
            rule: str) -> None:
    """*cred* (just built on *log*) is refused by *rule*; drop it from *log* again."""
    before = canonical(r.state)
    with pytest.raises(CredentialError) as info:
        r.append(fact_of(cred))
    assert info.value.rule == rule
    assert str(info.value) == rule_message(rule_code(rule))
    assert canonical(r.state) == before
    assert cred.id not in r
    log.creds.remove(cred)
    log.heads = set(r.heads())


def accepted(r: Resolver, cred: Credential) -> None:
    r.append(fact_of(cred))


@pytest.fixture
def owner() -> IdentityBuilder:
    return IdentityBuilder.create("owner", seed=b"owner")


@pytest.fixture
def space(owner: IdentityBuilder) -> SpaceBuilder:
    return SpaceBuilder.create(owner, "garden", seed=b"garden")


def test_rule_codes_are_stable() -> None:
    # Codes are stored in checkpoints: the table only ever grows at the end.
    assert RULE_NAMES[:4] == ("", "wrong_log", "wrong_identity", "wrong_space")
    assert RULE_NAMES[16:] == ("cannot_demote_owner", "same_role", "not_device", "last_device",
                               "wrong_log_key", "stale_epoch", "stale_key")
    assert len(set(RULE_NAMES)) == len(RULE_NAMES) == 23


# -- identity logs ----------------------------------------------------------------------


def test_identity_log_devices_and_chain(owner: IdentityBuilder) -> None:
    second = owner.add_device(invitation=b"dev-inv")
    third = owner.add_device(second)
    s = linear(owner.creds).state
    assert s.kind is LogKind.IDENTITY
    assert s.identity_key == owner.public
    assert s.space_key is None
    assert s.name == "owner"
    assert s.devices() == [d.device_public for d in owner.devices]
    assert s.device_chain(third.device_public) == owner.chain_of(third)
    assert len(s.device_chain(third.device_public)) == 3
    assert s.redeemed(b"dev-inv") == 1
    assert s.redeemers(b"dev-inv") == [second.device_public]
    d = s.device(second.device_public)
    assert d is not None
    assert (d.authorized_by, d.invitation, d.depth) == (
        owner.device.device_public, b"dev-inv", 2)
    [me] = s.members()
    assert (me.identity, me.role, me.name, me.entry) == (
        owner.public, Role.OWNER, "owner", owner.creds[0].id)
    assert s.role_of(owner.public) is Role.OWNER
    assert s.role_of(b"\x00" * 32) is None
    with pytest.raises(LocalProtocolError):
        s.device_chain(b"\x00" * 32)


def test_identity_rules(owner: IdentityBuilder) -> None:
    r = linear(owner.creds)
    again = owner.add(issue_authorized_device(
        owner.device, identity=owner.public, device=owner.device.device_public,
        parents=r.heads(), chain=owner.chain_of()))
    refused(r, owner, again, "already_device")
    late = owner.add(issue_authorized_device(
        owner.key, identity=owner.public, device=DeviceKeys.generate().device_public,
        parents=r.heads()))
    refused(r, owner, late, "key_spent")
    # A device with a valid chain for the identity, but not in this log.
    rogue = DeviceKeys.generate()
    rogue_ad = issue_authorized_device(owner.key, identity=owner.public,
                                       device=rogue.device_public, parents=[b"\x01" * 32])
    stranger = owner.add(issue_authorized_device(
        rogue, identity=owner.public, device=DeviceKeys.generate().device_public,
        parents=r.heads(), chain=[rogue_ad.core]))
    refused(r, owner, stranger, "unauthorized_device")
    other = IdentityBuilder.create("other")
    foreign = owner.add(issue_authorized_device(
        other.device, identity=other.public, device=DeviceKeys.generate().device_public,
        parents=r.heads(), chain=other.chain_of()))
    refused(r, owner, foreign, "wrong_identity")


def test_chain_too_deep(owner: IdentityBuilder) -> None:
    for _ in range(MAX_CHAIN_DEPTH - 1):
        owner.add_device()
    r = linear(owner.creds)
    assert len(r.state.device_chain(owner.devices[-1].device_public)) == MAX_CHAIN_DEPTH
    too_deep = owner.add(issue_authorized_device(
        owner.devices[-1], identity=owner.public, device=DeviceKeys.generate().device_public,
        parents=r.heads(), chain=owner.chain_of(owner.devices[-1])))
    refused(r, owner, too_deep, "chain_too_deep")


# -- genesis and kinds ---------------------------------------------------------------------


def test_genesis_checks(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    g_id, g_space = fact_of(owner.creds[0]), fact_of(space.creds[0])

    def rule_of(call: Callable[[], object]) -> str:
        with pytest.raises(CredentialError) as info:
            call()
        return info.value.rule

    assert rule_of(lambda: check_genesis(fact_of(owner.creds[1]), kind=None, key=None)) == \
        "genesis_required"
    assert rule_of(lambda: check_genesis(g_id, kind=LogKind.SPACE, key=None)) == "wrong_log"
    assert rule_of(lambda: check_genesis(g_space, kind=LogKind.IDENTITY, key=None)) == \
        "wrong_log"
    assert rule_of(lambda: check_genesis(g_space, kind=None, key=b"\x01" * 32)) == \
        "wrong_genesis"
    check_genesis(g_space, kind=LogKind.SPACE, key=space.public)
    # A genesis about another key than the one that issued and signed it.
    forged = dataclasses.replace(g_space, subject=SigningKey.generate().public_key)
    assert rule_of(lambda: check_genesis(forged, kind=None, key=None)) == "bad_genesis"
    with pytest.raises(CredentialError):
        Resolver(kind=LogKind.IDENTITY).add(g_space)
    r = linear(owner.creds)
    with pytest.raises(LocalProtocolError):
        r.add(g_space)  # a log has one genesis


def test_credentials_of_the_other_kind_are_wrong_log(owner: IdentityBuilder,
                                                      space: SpaceBuilder) -> None:
    r = linear(space.creds)
    ad = space.add(issue_authorized_device(
        owner.device, identity=owner.public, device=DeviceKeys.generate().device_public,
        parents=r.heads(), chain=owner.chain_of()))
    refused(r, space, ad, "wrong_log")
    ri = linear(owner.creds)
    member = owner.add(issue_space_member(
        owner.device, issuer=owner.public, space=space.public, member=b"\x01" * 32,
        role=Role.READER, name="", parents=ri.heads(), chain=owner.chain_of()))
    refused(ri, owner, member, "wrong_log")


# -- space rules --------------------------------------------------------------------------


def test_space_basics(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    s = linear(space.creds).state
    assert s.kind is LogKind.SPACE
    assert s.space_key == space.public
    assert s.owner == owner.public
    assert s.name == "garden"
    [m] = s.members()
    assert (m.identity, m.role, m.name, m.admitted_by, m.invitation, m.entry) == (
        owner.public, Role.OWNER, "owner", space.public, None, space.creds[1].id)
    assert s.devices() == []


def test_owner_first_and_space_key_spent(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    k = space.key
    genesis = space.creds[0]
    space.creds[1:] = []
    space.heads = {genesis.id}
    r = linear(space.creds)
    for bad in (
        # someone else made OWNER
        issue_space_member(k, issuer=k.public_key, space=k.public_key, member=b"\x01" * 32,
                           role=Role.OWNER, name="x", parents=[genesis.id]),
        # the owner, but not as OWNER
        issue_space_member(k, issuer=k.public_key, space=k.public_key, member=owner.public,
                           role=Role.ADMIN, name="o", parents=[genesis.id]),
    ):
        refused(r, space, space.add(bad), "owner_first")
    # The owner's own device cannot stand in for the space key: not a member yet.
    by_owner = space.add(issue_space_member(
        owner.device, issuer=owner.public, space=k.public_key, member=owner.public,
        role=Role.OWNER, name="o", parents=[genesis.id], chain=owner.chain_of()))
    refused(r, space, by_owner, "issuer_not_member")
    good = space.add(issue_space_member(
        k, issuer=k.public_key, space=k.public_key, member=owner.public, role=Role.OWNER,
        name="owner", parents=[genesis.id]))
    accepted(r, good)
    late = space.add(issue_space_member(
        k, issuer=k.public_key, space=k.public_key, member=b"\x02" * 32, role=Role.ADMIN,
        name="x", parents=r.heads()))
    refused(r, space, late, "key_spent")


def test_wrong_space(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    other = SpaceBuilder.create(owner)
    r = linear(space.creds)
    cred = space.add(issue_space_member(
        owner.device, issuer=owner.public, space=other.public, member=b"\x03" * 32,
        role=Role.READER, name="", parents=r.heads(), chain=owner.chain_of()))
    refused(r, space, cred, "wrong_space")


def test_admission_rules(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    admin, editor, reader, outsider = (IdentityBuilder.create(n) for n in
                                       ("admin", "editor", "reader", "outsider"))
    space.admit(owner, admin.public, Role.ADMIN, name="admin")
    space.admit(admin, editor.public, Role.EDITOR, name="editor", invitation=b"i1")
    space.admit(admin, reader.public, Role.READER, name="reader", invitation=b"i1")
    r = linear(space.creds)
    s = r.state
    assert [m.name for m in s.members()] == ["owner", "admin", "editor", "reader"]
    assert s.role_of(editor.public) is Role.EDITOR
    assert s.redeemed(b"i1") == 2
    assert s.redeemers(b"i1") == [editor.public, reader.public]
    assert s.redeemed(b"i2") == 0
    new = b"\x04" * 32
    refused(r, space, space.admit(editor, new), "not_admin")
    refused(r, space, space.admit(reader, new), "not_admin")
    refused(r, space, space.admit(outsider, new), "issuer_not_member")
    refused(r, space, space.admit(admin, new, Role.ADMIN), "owner_required")
    refused(r, space, space.admit(admin, new, Role.OWNER), "owner_required")
    # Admitting a current member is a role change; the same role is refused.
    refused(r, space, space.admit(admin, editor.public, Role.EDITOR), "same_role")
    accepted(r, space.admit(owner, new, Role.ADMIN))  # the owner may grant ADMIN
    assert s.role_of(new) is Role.ADMIN


def test_removal_rules(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    admin, admin2, editor = (IdentityBuilder.create(n) for n in ("admin", "admin2", "editor"))
    space.admit(owner, admin.public, Role.ADMIN)
    space.admit(owner, admin2.public, Role.ADMIN)
    space.admit(admin, editor.public, Role.EDITOR)
    r = linear(space.creds)
    s = r.state
    refused(r, space, space.remove(admin, admin2.public), "owner_required")
    refused(r, space, space.remove(admin, owner.public), "cannot_remove_owner")
    refused(r, space, space.remove(owner, owner.public), "cannot_remove_owner")
    refused(r, space, space.remove(admin, b"\x05" * 32), "not_member")
    refused(r, space, space.remove(editor, admin.public), "not_admin")
    accepted(r, space.remove(admin, editor.public))
    assert not s.is_member(editor.public)
    assert s.role_of(editor.public) is Role.REMOVED
    assert s.removed() == [editor.public]
    refused(r, space, space.remove(admin, editor.public), "not_member")
    accepted(r, space.remove(owner, admin.public))
    # A removed member admits no one, removes no one, cannot even leave again.
    refused(r, space, space.admit(admin, b"\x06" * 32), "issuer_removed")
    refused(r, space, space.remove(admin, admin2.public), "issuer_removed")
    refused(r, space, space.remove(admin, admin.public), "issuer_removed")
    # A removed member may be admitted again.
    accepted(r, space.admit(owner, editor.public, Role.READER, name="back"))
    assert s.role_of(editor.public) is Role.READER
    assert [m.identity for m in s.members()] == [owner.public, admin2.public, editor.public]
    # Anyone but the genesis owner may leave.
    accepted(r, space.remove(admin2, admin2.public))
    assert not s.is_member(admin2.public)


# -- snapshots -----------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.one_of(identity_logs(4), space_logs(6)))
def test_state_snapshot_restore(entries: list[bytes]) -> None:
    from p2pinvite.halo.credentials import decode_credential

    r = resolve([decode_credential(e) for e in entries])
    s = r.state
    restored = MembershipState.restore(r.dag, s.snapshot(), entries=len(r.dag))
    assert restored.snapshot() == s.snapshot()
    assert canonical(restored) == canonical(s)
    if s.kind is LogKind.IDENTITY:
        assert all(restored.device_chain(d) == s.device_chain(d) for d in s.devices())


def test_restore_refuses_bad_snapshots(space: SpaceBuilder, owner: IdentityBuilder) -> None:
    r = linear(owner.creds)
    good = r.state.snapshot()
    n = len(r.dag)
    assert MembershipState.restore(r.dag, good, entries=n).same_as(r.state)
    for bad in (b"", b"\xc1", good[:-1], good.replace(b"identity", b"identitx")):
        with pytest.raises(SnapshotError):
            MembershipState.restore(r.dag, bad, entries=n)
    with pytest.raises(SnapshotError):  # entry positions beyond the DAG
        MembershipState.restore(r.dag, good, entries=1)


# -- random sequences, against a model of roles ---------------------------------------------

_ACTIONS = [
    "admit", "admit", "admit", "remove", "change", "leave", "same_role", "not_admin",
    "issuer_not_member", "issuer_removed", "owner_required", "not_member",
    "cannot_remove_owner", "cannot_demote_owner", "key_spent", "wrong_space",
]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_sequences(data: st.DataObject) -> None:
    owner = IdentityBuilder.create("owner", seed=b"owner")
    owner.add_device()
    space = SpaceBuilder.create(owner, seed=b"random")
    people = {owner.public: owner}
    roles: dict[bytes, Role] = {owner.public: Role.OWNER}
    counter = iter(range(1000))

    def person() -> IdentityBuilder:
        p = IdentityBuilder.create("p", seed=next(counter).to_bytes(4, "big"))
        people[p.public] = p
        return p

    def pick(pred: Callable[[Role], bool]) -> IdentityBuilder | None:
        ids = sorted(k for k, r in roles.items() if pred(r))
        return None if not ids else people[data.draw(st.sampled_from(ids))]

    # Start with one member of each kind, so every refusal has a candidate.
    for role in (Role.ADMIN, Role.EDITOR, Role.READER, Role.READER):
        p = person()
        space.admit(owner, p.public, role)
        roles[p.public] = role
    space.remove(owner, p.public)
    roles[p.public] = Role.REMOVED
    r = linear(space.creds)

    for _ in range(data.draw(st.integers(1, 14))):
        action = data.draw(st.sampled_from(_ACTIONS))
        admin = pick(lambda x: x in (Role.OWNER, Role.ADMIN))
        assert admin is not None  # the owner can never be removed
        cred: Credential | None = None
        expect: str | None = None
        new_role: tuple[bytes, Role] | None = None
        if action == "admit":
            grant = [Role.READER, Role.EDITOR] + ([Role.ADMIN] if roles[admin.public] is
                                                 Role.OWNER else [])
            role = data.draw(st.sampled_from(grant))
            p = person()
            cred = space.admit(admin, p.public, role,
                               device=data.draw(st.sampled_from(admin.devices)))
            new_role = (p.public, role)
        elif action in ("remove", "change"):
            victim = pick(lambda x: x in (Role.EDITOR, Role.READER))
            if victim is None:
                continue
            role = Role.REMOVED if action == "remove" else (
                Role.READER if roles[victim.public] is Role.EDITOR else Role.EDITOR)
            cred, new_role = space.change(admin, victim.public, role), (victim.public, role)
        elif action == "leave":
            m = pick(lambda x: x not in (Role.REMOVED,))
            if m is None or m is owner:
                continue
            cred, new_role = space.remove(m, m.public), (m.public, Role.REMOVED)
        elif action == "same_role":
            m = pick(lambda x: x in (Role.EDITOR, Role.READER))
            if m is None:
                continue
            cred, expect = space.change(admin, m.public, roles[m.public]), action
        elif action == "not_admin":
            m = pick(lambda x: x in (Role.EDITOR, Role.READER))
            if m is None:
                continue
            cred, expect = space.admit(m, person().public), action
        elif action == "issuer_not_member":
            cred, expect = space.admit(person(), person().public), action
        elif action == "issuer_removed":
            m = pick(lambda x: x is Role.REMOVED)
            if m is None:
                continue
            cred, expect = space.admit(m, person().public), action
        elif action == "owner_required":
            m = pick(lambda x: x is Role.ADMIN)
            if m is None:
                continue
            cred, expect = space.admit(m, person().public, Role.ADMIN), action
        elif action == "not_member":
            cred, expect = space.remove(admin, person().public), action
        elif action == "cannot_remove_owner":
            cred, expect = space.remove(admin, owner.public), action
        elif action == "cannot_demote_owner":
            if roles[admin.public] is not Role.OWNER:
                continue
            cred, expect = space.change(admin, owner.public, Role.ADMIN), action
        elif action == "key_spent":
            k = space.key
            cred = space.add(issue_space_member(
                k, issuer=k.public_key, space=k.public_key, member=person().public,
                role=Role.READER, name="", parents=r.heads()))
            expect = action
        else:
            other = SpaceBuilder.create(owner)
            cred = space.add(issue_space_member(
                owner.device, issuer=owner.public, space=other.public,
                member=person().public, role=Role.READER, name="", parents=r.heads(),
                chain=owner.chain_of()))
            expect = action
        assert cred is not None
        if expect is None:
            accepted(r, cred)
            assert new_role is not None
            roles[new_role[0]] = new_role[1]
        else:
            refused(r, space, cred, expect)
    assert {m.identity: m.role for m in r.state.members()} == {
        k: x for k, x in roles.items() if x is not Role.REMOVED
    }
    assert canonical(resolve(space.creds).state) == canonical(r.state)
