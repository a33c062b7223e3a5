"""halo.state: every membership rule, refusals leave the state unchanged, snapshots."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import CredentialError, LocalProtocolError
from p2pinvite.halo.credentials import (
    MAX_CHAIN_DEPTH,
    Role,
    decode_credential,
    issue_authorized_device,
    issue_identity_genesis,
    issue_space_genesis,
    issue_space_member,
)
from p2pinvite.halo.keys import DeviceKeys, SigningKey
from p2pinvite.halo.state import LogKind, Member, MembershipState, SnapshotError

from .strategies import IdentityBuilder, SpaceBuilder, identity_logs, space_logs


def _state(entries: list[bytes], **kw: object) -> MembershipState:
    s = MembershipState(**kw)  # type: ignore[arg-type]
    for e in entries:
        s.add(e)
    return s


def _refused(state: MembershipState, cred: bytes, rule: str, *, verify: bool = True) -> None:
    before = state.snapshot()
    with pytest.raises(CredentialError) as info:
        state.check(cred, verify_signatures=verify)
    assert info.value.rule == rule
    assert state.snapshot() == before


@pytest.fixture
def owner() -> IdentityBuilder:
    return IdentityBuilder.create("owner")


@pytest.fixture
def space(owner: IdentityBuilder) -> SpaceBuilder:
    return SpaceBuilder.create(owner, "garden")


# -- identity logs ----------------------------------------------------------------------


def test_identity_log_devices_and_chain(owner: IdentityBuilder) -> None:
    second = owner.add_device(invitation=b"dev-inv")
    third = owner.add_device(second)
    s = _state(owner.entries)
    assert s.kind is LogKind.IDENTITY
    assert s.identity_key == owner.public
    assert s.space_key is None
    assert s.name == "owner"
    assert s.devices() == [d.device_public for d in owner.devices]
    assert s.device_chain(third.device_public) == owner.chain_of(third)
    assert len(s.device_chain(third.device_public)) == 3
    assert s.redeemed(b"dev-inv") == 1
    assert s.members() == [Member(owner.public, Role.OWNER, "owner")]
    assert s.role_of(owner.public) is Role.OWNER
    with pytest.raises(LocalProtocolError):
        s.device_chain(b"\x00" * 32)


def test_already_device(owner: IdentityBuilder) -> None:
    s = _state(owner.entries)
    again = issue_authorized_device(owner.device, identity=owner.public,
                                    device=owner.device.device_public,
                                    chain=owner.chain_of(owner.device))
    _refused(s, again.encode(), "already_device")


def test_identity_key_spent(owner: IdentityBuilder) -> None:
    s = _state(owner.entries)
    late = issue_authorized_device(owner.key, identity=owner.public,
                                   device=DeviceKeys.generate().device_public)
    _refused(s, late.encode(), "key_spent")


def test_unauthorized_device(owner: IdentityBuilder) -> None:
    # A device with a valid chain for the identity, but not in this log.
    rogue = DeviceKeys.generate()
    rogue_ad = issue_authorized_device(owner.key, identity=owner.public,
                                       device=rogue.device_public)
    s = _state(owner.entries)
    cred = issue_authorized_device(rogue, identity=owner.public,
                                   device=DeviceKeys.generate().device_public,
                                   chain=[rogue_ad.encode()])
    _refused(s, cred.encode(), "unauthorized_device")


def test_wrong_identity(owner: IdentityBuilder) -> None:
    other = IdentityBuilder.create("other")
    s = _state(owner.entries)
    _refused(s, other.entries[1], "wrong_identity")


def test_chain_too_deep(owner: IdentityBuilder) -> None:
    for _ in range(MAX_CHAIN_DEPTH - 1):
        owner.add_device()
    s = _state(owner.entries)
    assert len(s.device_chain(owner.devices[-1].device_public)) == MAX_CHAIN_DEPTH
    too_deep = issue_authorized_device(
        owner.devices[-1], identity=owner.public, device=DeviceKeys.generate().device_public,
        chain=owner.chain_of(owner.devices[-1]))
    _refused(s, too_deep.encode(), "chain_too_deep")


# -- genesis rules ------------------------------------------------------------------------


def test_genesis_required(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    _refused(MembershipState(), owner.entries[1], "genesis_required")
    _refused(MembershipState(), space.entries[1], "genesis_required")


def test_duplicate_genesis(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    s = _state(space.entries)
    _refused(s, space.entries[0], "duplicate_genesis")
    _refused(s, owner.entries[0], "duplicate_genesis")
    _refused(_state(owner.entries), owner.entries[0], "duplicate_genesis")


def test_bad_genesis() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    # Signed by a, claiming to be b's genesis (issuer b): bad chain when verified...
    forged = issue_space_genesis(a, owner=b.public_key, name="x")
    other_subject = replace(forged, subject=b.public_key)
    resigned = replace(other_subject, signature=a.sign(other_subject.payload))
    _refused(MembershipState(), resigned.encode(), "bad_genesis")


def test_wrong_log_kind_and_wrong_genesis(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    _refused(MembershipState(kind=LogKind.SPACE), owner.entries[0], "wrong_log")
    _refused(MembershipState(kind=LogKind.IDENTITY), space.entries[0], "wrong_log")
    _refused(MembershipState(key=b"\x01" * 32), space.entries[0], "wrong_genesis")
    _state(space.entries, kind=LogKind.SPACE, key=space.public)  # the right one is fine
    # Credentials of the other kind after the genesis.
    _refused(_state(space.entries), owner.entries[1], "wrong_log")
    _refused(_state(owner.entries), space.entries[1], "wrong_log")


# -- space rules --------------------------------------------------------------------------


def test_space_basics(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    s = _state(space.entries)
    assert s.kind is LogKind.SPACE
    assert s.space_key == space.public
    assert s.owner == owner.public
    assert s.name == "garden"
    assert s.members() == [Member(owner.public, Role.OWNER, "owner")]
    assert s.devices() == []
    assert s.length == 2


def test_owner_first(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    s = _state(space.entries[:1])
    k = space.key
    for bad in (
        # owner membership issued by the owner's device, not the space key
        issue_space_member(owner.device, issuer=owner.public, space=k.public_key,
                           member=owner.public, role=Role.OWNER, name="o",
                           chain=owner.chain_of(owner.device)),
        # someone else made OWNER
        issue_space_member(k, issuer=k.public_key, space=k.public_key, member=b"\x01" * 32,
                           role=Role.OWNER, name="x"),
        # the owner, but not as OWNER
        issue_space_member(k, issuer=k.public_key, space=k.public_key, member=owner.public,
                           role=Role.ADMIN, name="o"),
    ):
        _refused(s, bad.encode(), "owner_first")


def test_space_key_spent(space: SpaceBuilder) -> None:
    s = _state(space.entries)
    k = space.key
    late = issue_space_member(k, issuer=k.public_key, space=k.public_key, member=b"\x02" * 32,
                              role=Role.ADMIN, name="x")
    _refused(s, late.encode(), "key_spent")


def test_wrong_space(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    other = SpaceBuilder.create(owner)
    s = _state(space.entries)
    _refused(s, other.admit(owner, b"\x03" * 32), "wrong_space")


def test_admission_rules(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    admin, editor, reader, outsider = (IdentityBuilder.create(n) for n in
                                       ("admin", "editor", "reader", "outsider"))
    space.admit(owner, admin.public, Role.ADMIN, name="admin")
    space.admit(admin, editor.public, Role.EDITOR, name="editor", invitation=b"i1")
    space.admit(admin, reader.public, Role.READER, name="reader", invitation=b"i1")
    s = _state(space.entries)
    assert [m.name for m in s.members()] == ["owner", "admin", "editor", "reader"]
    assert s.role_of(editor.public) is Role.EDITOR
    assert s.redeemed(b"i1") == 2
    assert s.redeemed(b"i2") == 0
    new = b"\x04" * 32
    _refused(s, space.admit(editor, new), "not_admin")
    _refused(s, space.admit(reader, new), "not_admin")
    _refused(s, space.admit(outsider, new), "issuer_not_member")
    _refused(s, space.admit(admin, new, Role.ADMIN), "owner_required")
    _refused(s, space.admit(admin, new, Role.OWNER), "owner_required")
    _refused(s, space.admit(admin, editor.public, Role.READER), "already_member")
    _refused(s, space.admit(owner, owner.public, Role.READER), "already_member")
    s.add(space.admit(owner, new, Role.ADMIN))  # the owner may grant ADMIN
    assert s.role_of(new) is Role.ADMIN


def test_removal_rules(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    admin, admin2, editor = (IdentityBuilder.create(n) for n in ("admin", "admin2", "editor"))
    space.admit(owner, admin.public, Role.ADMIN)
    space.admit(owner, admin2.public, Role.ADMIN)
    space.admit(admin, editor.public, Role.EDITOR)
    s = _state(space.entries)
    _refused(s, space.remove(admin, admin2.public), "owner_required")
    _refused(s, space.remove(admin, owner.public), "cannot_remove_owner")
    _refused(s, space.remove(owner, owner.public), "cannot_remove_owner")
    _refused(s, space.remove(admin, b"\x05" * 32), "not_member")
    _refused(s, space.remove(editor, admin.public), "not_admin")
    s.add(space.remove(admin, editor.public))
    assert not s.is_member(editor.public)
    assert s.role_of(editor.public) is Role.REMOVED
    assert s.removed() == [editor.public]
    _refused(s, space.remove(admin, editor.public), "not_member")
    s.add(space.remove(owner, admin.public))
    # A removed member admits no one, and removes no one.
    _refused(s, space.admit(admin, b"\x06" * 32), "issuer_removed")
    _refused(s, space.remove(admin, admin2.public), "issuer_removed")
    # A removed member may be admitted again.
    s.add(space.admit(owner, editor.public, Role.READER, name="back"))
    assert s.role_of(editor.public) is Role.READER
    assert [m.identity for m in s.members()] == [owner.public, admin2.public, editor.public]


def test_signature_and_chain_rules(owner: IdentityBuilder, space: SpaceBuilder) -> None:
    s = _state(space.entries)
    good = decode_credential(space.admit(owner, b"\x07" * 32))
    bad_sig = replace(good, signature=bytes(64)).encode()
    _refused(s, bad_sig, "bad_signature")
    no_chain = replace(good, chain=()).encode()
    _refused(s, no_chain, "bad_chain")
    _refused(s, no_chain, "bad_chain", verify=False)  # structural, even without crypto
    _refused(s, b"\x00garbage", "malformed")
    # With verification off the signature is not looked at (the hash chain vouches).
    s.check(bad_sig, verify_signatures=False)


def test_apply_refuses_stale_or_foreign_values(space: SpaceBuilder,
                                               owner: IdentityBuilder) -> None:
    base = list(space.entries)
    s = _state(base)
    a = s.check(space.admit(owner, b"\x08" * 32), verify_signatures=True)
    b = s.check(space.admit(owner, b"\x08" * 32, Role.READER), verify_signatures=True)
    s.apply(a)
    with pytest.raises(LocalProtocolError):
        s.apply(b)  # checked before `a` was applied: already_member now
    other = _state(base)
    with pytest.raises(LocalProtocolError):
        other.apply(s.check(space.admit(owner, b"\x09" * 32), verify_signatures=True))
    with pytest.raises(LocalProtocolError):
        s.apply(object())


def test_identity_genesis_then_device_signed_by_wrong_key() -> None:
    ik = SigningKey.generate()
    s = _state([issue_identity_genesis(ik, name="x").encode()])
    dev = DeviceKeys.generate()
    # First device "authorized" by itself: no chain -> bad_chain.
    selfish = issue_authorized_device(dev, identity=ik.public_key, device=dev.device_public)
    _refused(s, selfish.encode(), "bad_chain")


# -- snapshots -----------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.one_of(identity_logs(4), space_logs(6)))
def test_snapshot_restore_equals_replay(entries: list[bytes]) -> None:
    s = _state(entries)
    restored = MembershipState()
    restored.restore(s.snapshot())
    assert restored.snapshot() == s.snapshot()
    assert restored.members() == s.members()
    assert restored.devices() == s.devices()
    trusted = MembershipState()
    for e in entries:
        trusted.add(e, verify_signatures=False)
    assert trusted.snapshot() == s.snapshot()
    # The restored state keeps enforcing the rules exactly as the replayed one.
    _refused(restored, entries[0], "duplicate_genesis")
    if s.kind is LogKind.IDENTITY:
        assert all(restored.device_chain(d) == s.device_chain(d) for d in s.devices())


def test_restore_refuses_bad_snapshots(space: SpaceBuilder, owner: IdentityBuilder) -> None:
    good = _state(owner.entries).snapshot()
    s = MembershipState(kind=LogKind.SPACE)
    with pytest.raises(SnapshotError):
        s.restore(good)  # an identity snapshot for a space state
    for bad in (b"", b"\xc1", good[:-1], good.replace(b"identity", b"identitx")):
        fresh = MembershipState()
        with pytest.raises(SnapshotError):
            fresh.restore(bad)
        assert fresh.length == 0
    with pytest.raises(SnapshotError):
        MembershipState(key=b"\x01" * 32).restore(_state(space.entries).snapshot())


# -- random sequences of valid and invalid credentials --------------------------------------

_ACTIONS = [
    "admit", "admit", "admit", "remove", "already_member", "not_admin", "issuer_not_member",
    "issuer_removed", "owner_required", "not_member", "cannot_remove_owner", "key_spent",
    "bad_signature", "bad_chain", "wrong_space", "wrong_log", "duplicate_genesis",
]


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_random_sequences(data: st.DataObject) -> None:
    owner = IdentityBuilder.create("owner", seed=b"owner")
    owner.add_device()
    space = SpaceBuilder.create(owner)
    accepted = list(space.entries)
    people = {owner.public: owner}
    roles: dict[bytes, Role] = {owner.public: Role.OWNER}
    counter = iter(range(1000))

    def person() -> IdentityBuilder:
        p = IdentityBuilder.create("p", seed=next(counter).to_bytes(4, "big"))
        people[p.public] = p
        return p

    def pick(pred: object) -> IdentityBuilder | None:
        ids = sorted(k for k, r in roles.items() if pred(r))  # type: ignore[operator]
        return None if not ids else people[data.draw(st.sampled_from(ids))]

    # Start with one member of each kind, so every refusal has a candidate.
    for role in (Role.ADMIN, Role.EDITOR, Role.READER, Role.READER):
        p = person()
        accepted.append(space.admit(owner, p.public, role))
        roles[p.public] = role
    accepted.append(space.remove(owner, p.public))
    roles[p.public] = Role.REMOVED
    state = _state(accepted)

    for _ in range(data.draw(st.integers(1, 12))):
        action = data.draw(st.sampled_from(_ACTIONS))
        admin = pick(lambda r: r in (Role.OWNER, Role.ADMIN))
        assert admin is not None  # the owner can never be removed
        cred: bytes | None = None
        expect: str | None = None
        if action == "admit":
            grant = [Role.READER, Role.EDITOR] + ([Role.ADMIN] if roles[admin.public] is
                                                 Role.OWNER else [])
            role = data.draw(st.sampled_from(grant))
            p = person()
            cred = space.admit(admin, p.public, role,
                               device=data.draw(st.sampled_from(admin.devices)))
            roles[p.public] = role
        elif action == "remove":
            victim = pick(lambda r: r in (Role.EDITOR, Role.READER))
            if victim is None:
                continue
            cred, roles[victim.public] = space.remove(admin, victim.public), Role.REMOVED
        elif action == "already_member":
            m = pick(lambda r: r is not Role.REMOVED)
            assert m is not None
            cred, expect = space.admit(admin, m.public, Role.READER), action
        elif action == "not_admin":
            m = pick(lambda r: r in (Role.EDITOR, Role.READER))
            if m is None:
                continue
            cred, expect = space.admit(m, person().public), action
        elif action == "issuer_not_member":
            cred, expect = space.admit(person(), person().public), action
        elif action == "issuer_removed":
            m = pick(lambda r: r is Role.REMOVED)
            if m is None:
                continue
            cred, expect = space.admit(m, person().public), action
        elif action == "owner_required":
            m = pick(lambda r: r is Role.ADMIN)
            if m is None:
                continue
            cred, expect = space.admit(m, person().public, Role.ADMIN), action
        elif action == "not_member":
            cred, expect = space.remove(admin, person().public), action
        elif action == "cannot_remove_owner":
            cred, expect = space.remove(owner, owner.public), action
        elif action == "key_spent":
            k = space.key
            cred = issue_space_member(k, issuer=k.public_key, space=k.public_key,
                                      member=person().public, role=Role.READER, name="").encode()
            expect = action
        elif action == "bad_signature":
            good = decode_credential(space.admit(admin, person().public))
            cred, expect = replace(good, signature=bytes(64)).encode(), action
        elif action == "bad_chain":
            good = decode_credential(space.admit(admin, person().public))
            cred, expect = replace(good, chain=good.chain[1:]).encode(), action
        elif action == "wrong_space":
            cred, expect = SpaceBuilder.create(owner).admit(owner, person().public), action
        elif action == "wrong_log":
            cred, expect = owner.entries[1], action
        else:
            cred, expect = space.entries[0], action
        space.entries[:] = accepted  # refused credentials never stay in the log
        before = state.snapshot()
        if expect is None:
            state.add(cred)
            accepted.append(cred)
        else:
            with pytest.raises(CredentialError) as info:
                state.add(cred)
            assert info.value.rule == expect
            assert state.snapshot() == before
    assert {m.identity: m.role for m in state.members()} == {
        k: r for k, r in roles.items() if r is not Role.REMOVED
    }
    assert _state(accepted).snapshot() == state.snapshot()
    restored = MembershipState()
    restored.restore(state.snapshot())
    assert restored.snapshot() == state.snapshot()
