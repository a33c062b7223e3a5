"""Rotating a log's swarm secret: the credentials, the rules, the key in force, sealing.

The vector is the one docs/PROTOCOL.md Part 12 §7 refers to; the rules and the
key in force are checked on small histories with forks (the property test in
test_resolve.py adds swarm keys to its random histories); sealing on real keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from p2pinvite.crypto.seal import seal
from p2pinvite.errors import BadTag, StorageError
from p2pinvite.halo.credentials import (
    MAX_GRANTS,
    Credential,
    CredentialVerifier,
    Grant,
    MalformedCredential,
    RevokedDevice,
    Role,
    SwarmKey,
    decode_credential,
    issue_swarm_key,
)
from p2pinvite.halo.keys import DeviceKeys
from p2pinvite.halo.resolve import Resolver, resolve
from p2pinvite.halo.state import LogKind, MembershipState, fact_of
from p2pinvite.halo.swarm_keys import (
    Recipient,
    grantees,
    grants_for,
    needs_rotation,
    new_secret,
    open_grant,
)
from p2pinvite.halo.swarm_secrets import (
    HANDOVER_CONTEXT,
    MAX_PREVIOUS,
    SwarmSecret,
    SwarmSecrets,
    key_check,
    open_handover,
)
from p2pinvite.wire import pack

from .strategies import T0, Cast, IdentityBuilder, SpaceBuilder

VECTOR = Path(__file__).parents[1] / "vectors" / "swarm-rekey.json"
C1, C2 = b"\x0a" * 16, b"\x0b" * 16


def _state(creds: list[Credential]) -> MembershipState:
    return resolve(creds).state


# -- the vector -------------------------------------------------------------------------------


def test_the_rotation_vector_of_the_protocol_document() -> None:
    v = json.loads(VECTOR.read_text())
    log, secret = bytes.fromhex(v["log"]), bytes.fromhex(v["secret"])
    epoch = v["epoch"]
    context = bytes.fromhex(v["context"])
    assert context == HANDOVER_CONTEXT + log + epoch.to_bytes(4, "big")
    assert key_check(secret).hex() == v["check"]
    cred = decode_credential(bytes.fromhex(v["credential"]))
    CredentialVerifier().verify(cred)
    assert cred.id.hex() == v["id"]
    assert (cred.type_name, cred.issuer, cred.subject) == ("swarm_key", log, log)
    a = cred.assertion
    assert isinstance(a, SwarmKey)
    assert (a.epoch, a.check.hex()) == (epoch, v["check"])
    assert [p.hex() for p in cred.parents] == v["parents"]
    assert [c.hex() for c in cred.chain] == v["chain"]
    # Each box is the documented seal of the secret to that device (a fixed
    # ephemeral reproduces it) and opens with that device's key alone.
    removed = bytes.fromhex(v["removed_static_private"])
    by_device = {g.device: g for g in a.grants}
    assert len(by_device) == len(v["grants"]) == 2
    for g in v["grants"]:
        grant = by_device[bytes.fromhex(g["device"])]
        assert grant.static.hex() == g["static_public"]
        assert grant.member == log
        assert grant.box == seal(grant.static, secret, context=context,
                                 ephemeral=bytes.fromhex(g["ephemeral_private"]))
        assert grant.box.hex() == g["box"]
        opened = open_handover(bytes.fromhex(g["static_private"]), log, epoch, grant.box)
        assert opened.secret == secret
        assert opened.check == a.check
        with pytest.raises(BadTag):  # the removed device: no box opens for it
            open_handover(removed, log, epoch, grant.box)
    # Re-issued from the vector's inputs, the credential is byte for byte the same.
    dev = DeviceKeys.from_private(bytes.fromhex(v["device_seed"]), bytes(32))
    again = issue_swarm_key(dev, issuer=log, log=log, epoch=epoch, check=a.check,
                            grants=reversed(a.grants), parents=cred.parents, chain=cred.chain,
                            issued_at=v["issued_at"])
    assert again.encode().hex() == v["credential"]


def test_new_credential_types_round_trip_and_refuse_malformed_grants() -> None:
    ident = IdentityBuilder.create("alice", seed=b"rt")
    second = ident.add_device()
    revoked = ident.revoke(ident.device, second.device_public)
    key = ident.swarm_key(ident.device, 2, C1, [Grant(ident.public, second.device_public,
                                                      second.static_public, bytes(80))])
    for cred in (revoked, key):
        back = decode_credential(cred.encode())
        assert back == cred
        assert back.encode() == cred.encode()
        assert pack(cred.to_map()) == cred.encode()
        CredentialVerifier().verify(back)
    assert isinstance(revoked.assertion, RevokedDevice)
    bad = key.to_map()
    for grants in ([[b"\x01" * 32] * 3 + [bytes(79)]],  # a box of the wrong size
                   [[b"\x01" * 32] * 3],                # a grant of three fields
                   [[b"\x01" * 32] * 3 + [bytes(80)], [b"\x01" * 32] * 3 + [bytes(80)]]):
        with pytest.raises(MalformedCredential):
            decode_credential(pack({**bad, "grants": grants}))
    with pytest.raises(MalformedCredential):  # epoch 1 is the log's first, never written
        decode_credential(pack({**bad, "epoch": 1}))
    with pytest.raises(MalformedCredential):
        decode_credential(pack({**bad, "check": bytes(15)}))
    with pytest.raises(MalformedCredential, match="at most 64 grants"):
        issue_swarm_key(ident.device, issuer=ident.public, log=ident.public, epoch=2, check=C1,
                        grants=[Grant(bytes([i]) * 32, bytes([i]) * 32, bytes(32), bytes(80))
                                for i in range(MAX_GRANTS + 1)], parents=[key.id])


# -- the rules and the key in force ---------------------------------------------------------


def test_who_may_rotate_and_grant_in_a_space(cast: Cast) -> None:
    space = cast.space
    k = _state(space.creds).key_in_force()
    assert (k.epoch, k.check, k.entries, k.stale) == (1, None, (), False)
    by_editor = space.swarm_key(cast.editor, 2, C1)
    rotation = space.swarm_key(cast.a, 2, C1)
    not_above = space.swarm_key(cast.b, 2, C2)
    grant = space.swarm_key(cast.editor, 2, C1)
    r = resolve(space.creds)
    assert r.status(by_editor.id).rule == "not_admin"
    assert r.status(rotation.id).rule is None
    assert r.status(not_above.id).rule == "stale_epoch"
    assert r.status(grant.id).rule is None  # any member grants the key in force
    k = r.state.key_in_force()
    assert (k.epoch, k.check, [f.id for f in k.entries], k.stale) == (
        2, C1, [rotation.id, grant.id], False)
    # A grant of the key in force in its view, concurrent with a rotation that
    # comes first in the order, grants a key no longer in force.
    fork = cast.fork()
    stale_grant = space.swarm_key(cast.editor, 2, C1, parents=fork)
    rotated = space.swarm_key(cast.b, 3, C2, parents=fork)
    r = resolve(space.creds)
    assert r.status(rotated.id).rule is None
    assert r.status(stale_grant.id).rule == "stale_key"
    assert r.state.key_in_force().entries == (fact_of(rotated),)
    other_space = SpaceBuilder.create(cast.owner, "other", seed=b"other")
    wrong = issue_swarm_key(cast.a.device, issuer=cast.a.public, log=other_space.public,
                            epoch=4, check=C2, grants=(), parents=sorted(space.heads),
                            chain=cast.a.chain_of(), issued_at=T0)
    assert resolve([*space.creds, wrong]).status(wrong.id).rule == "wrong_log_key"


def test_a_removal_or_leave_makes_the_key_stale_until_the_next_rotation(cast: Cast) -> None:
    space = cast.space
    space.swarm_key(cast.owner, 2, C1)
    space.change(cast.owner, cast.editor.public, Role.READER)
    assert not _state(space.creds).key_in_force().stale  # a role change is not a removal
    space.remove(cast.a, cast.editor.public)
    assert _state(space.creds).key_in_force().stale
    assert needs_rotation(_state(space.creds))
    space.swarm_key(cast.b, 3, C2)
    state = _state(space.creds)
    assert (state.key_in_force().epoch, state.key_in_force().stale) == (3, False)
    assert not needs_rotation(state)
    space.remove(cast.b, cast.b.public)  # leaving
    assert needs_rotation(_state(space.creds))


def test_concurrent_rotations_settle_on_one_and_one_that_missed_a_removal_is_redone(
        cast: Cast) -> None:
    space, editor = cast.space, cast.editor
    fork = cast.fork()
    # B removes the editor and rotates; A, apart, rotates sealing to the editor.
    removal = space.remove(cast.b, editor.public, parents=fork)
    b_key = space.swarm_key(cast.b, 2, C1, parents=[removal.id])
    a_key = space.swarm_key(cast.a, 2, C2, [Grant(editor.public, editor.device.device_public,
                                                  editor.device.static_public, bytes(80))],
                            parents=fork)
    r = resolve(space.creds)
    applied = [c for c in (a_key, b_key) if r.status(c.id).rule is None]
    rejected = [c for c in (a_key, b_key) if r.status(c.id).rule == "stale_epoch"]
    assert len(applied) == len(rejected) == 1  # one epoch 2: the log's order picks it
    # Every order of arrival says the same.
    for arrival in ([*space.creds][::-1], sorted(space.creds, key=lambda c: c.id)):
        rr = Resolver()
        rr.offer([fact_of(c) for c in arrival])
        assert rr.state.key_in_force().entries[0].id == applied[0].id
    # If A's key won, it was sealed to the removed editor: rotate again.
    assert needs_rotation(r.state) is (applied[0] is a_key)


def test_device_revocation_rules_in_an_identity_log() -> None:
    ident = IdentityBuilder.create("alice", seed=b"revoke")
    d1 = ident.device
    d2 = ident.add_device(d1)
    d3 = ident.add_device(d2)  # authorized by d2
    revoke = ident.revoke(d1, d2.device_public)
    again = ident.revoke(d1, d2.device_public)
    by_revoked = ident.add_device(d2)  # d2 signs after its revocation
    ident.add_device(d1, new=d2)  # d2's key again
    r = resolve(ident.creds)
    assert r.status(revoke.id).rule is None
    assert r.status(again.id).rule == "not_device"
    assert r.status(ident.creds[-2].id).rule == "unauthorized_device"
    assert r.status(ident.creds[-1].id).rule == "already_device"  # never authorized again
    assert by_revoked.device_public not in r.state.devices()
    state = r.state
    assert state.devices() == [d1.device_public, d3.device_public]  # d3 keeps its chain
    assert state.revoked_devices() == [d2.device_public]
    assert not state.is_device(d2.device_public)
    assert state.was_device(d2.device_public)
    assert len(state.device_chain(d3.device_public)) == 3
    assert state.key_in_force().stale
    assert needs_rotation(state)
    # d3 revokes d1; then nobody can revoke the last one; a revoked device
    # cannot revoke at all.
    ident.revoke(d3, d1.device_public)
    last = ident.revoke(d3, d3.device_public)
    r = resolve(ident.creds)
    assert r.status(last.id).rule == "last_device"
    assert r.state.devices() == [d3.device_public]
    # The snapshot keeps revocations and the key in force.
    ident.swarm_key(d3, 2, C1)
    r = resolve(ident.creds)
    back_r = Resolver.restore(r.snapshot(), kind=LogKind.IDENTITY)
    facts = {c.id: fact_of(c) for c in ident.creds}
    back_r.dag.set_loader(lambda ps: [facts[back_r.dag.ids[i]] for i in ps])
    assert back_r.state.revoked_devices() == r.state.revoked_devices()
    assert back_r.state.key_in_force().epoch == 2
    assert not back_r.state.key_in_force().stale


# -- sealing to the remaining devices ---------------------------------------------------------


def test_a_rotation_seals_to_current_members_only_and_opens_only_for_them(cast: Cast) -> None:
    space = cast.space
    log = space.public
    space.remove(cast.owner, cast.editor.public)
    state = _state(space.creds)
    assert needs_rotation(state)
    secret = new_secret(state, log)
    assert secret.epoch == 2
    people = (cast.owner, cast.a, cast.b, cast.editor)
    recipients = [Recipient(p.public, p.device.device_public, p.device.static_public)
                  for p in people]
    grants = grants_for(secret, state, recipients + recipients[:1], limit=MAX_GRANTS)
    assert [g.member for g in grants] == [p.public for p in people[:3]]  # not the editor
    assert len(grants_for(secret, state, recipients, limit=2)) == 2
    space.swarm_key(cast.owner, secret.epoch, secret.check, grants)
    state = _state(space.creds)
    assert not needs_rotation(state)
    assert set(grantees(state.key_in_force())) == {p.device.device_public for p in people[:3]}
    for p in people[:3]:
        got = open_grant(state, log, p.device.device_public, p.device.static_private)
        assert got == secret
    ed = cast.editor.device
    assert open_grant(state, log, ed.device_public, ed.static_private) is None


def test_a_grant_whose_secret_does_not_match_the_check_is_not_taken(cast: Cast) -> None:
    space, log = cast.space, cast.space.public
    me = cast.editor.device
    secret = SwarmSecret(log, 2, os.urandom(32))
    liar = SwarmSecret(log, 2, os.urandom(32))
    bad = grants_for(liar, _state(space.creds), [Recipient(cast.editor.public,
                                                           me.device_public, me.static_public)],
                     limit=1)
    space.swarm_key(cast.owner, 2, secret.check, bad)  # sealed: another secret than checked
    state = _state(space.creds)
    assert open_grant(state, log, me.device_public, me.static_private) is None
    # A member holding the secret in force grants the real one: now it opens.
    good = grants_for(secret, state, [Recipient(cast.editor.public, me.device_public,
                                                me.static_public)], limit=1)
    space.swarm_key(cast.a, 2, secret.check, good)
    assert open_grant(_state(space.creds), log, me.device_public, me.static_private) == secret


# -- the secrets a device holds ---------------------------------------------------------------


def test_put_keeps_the_replaced_secrets_and_version_1_files_still_read(tmp_path: Path) -> None:
    log = b"\x01" * 32
    store = SwarmSecrets.open(tmp_path)
    first = store.create(log)
    two_a, two_b = SwarmSecret(log, 2, b"a" * 32), SwarmSecret(log, 2, b"b" * 32)
    assert store.put(two_a) is True
    assert store.put(two_a) is False
    assert store.put(two_b) is True  # the same epoch: the log's order chose the other one
    assert [p.secret for p in store.previous(log)] == [two_a.secret, first.secret]
    last = MAX_PREVIOUS + 2
    for e in range(3, last + 1):
        store.put(SwarmSecret(log, e, bytes([e]) * 32))
    again = SwarmSecrets.open(tmp_path)
    assert again.get(log) == SwarmSecret(log, last, bytes([last]) * 32)
    # Newest first, at most MAX_PREVIOUS: the oldest ones were dropped.
    assert [p.epoch for p in again.previous(log)] == list(range(last - 1, 1, -1))
    assert [p.secret for p in again.previous(log)][-1] == two_b.secret
    assert first not in again.previous(log)
    # A version 1 file (before rotations): one secret, no previous ones.
    path = tmp_path / "swarm" / f"{log.hex()}.swarm"
    path.write_bytes(pack({"v": 1, "log": log, "epoch": 1, "secret": b"s" * 32}))
    old = SwarmSecrets.open(tmp_path)
    assert old.get(log) == SwarmSecret(log, 1, b"s" * 32)
    assert old.previous(log) == ()
    path.write_bytes(pack({"v": 2, "log": log, "epoch": 1, "secret": b"s" * 32,
                           "previous": [[1, b"short"]]}))
    with pytest.raises(StorageError):
        SwarmSecrets.open(tmp_path)


def test_the_largest_rotation_fits_a_log_entry_and_an_admission_chunk() -> None:
    from p2pinvite.halo.credentials import MAX_CHAIN_DEPTH, MAX_CREDENTIAL_SIZE, MAX_PARENTS
    from p2pinvite.invitations.protocol import MAX_ENTRY

    # The deepest chain, the most parents and the most grants at once.
    ident = IdentityBuilder.create("deep", seed=b"deep")
    for _ in range(MAX_CHAIN_DEPTH - 1):
        ident.add_device()
    grants = [Grant(bytes([i]) * 32, bytes([i]) * 32, bytes([i]) * 32, bytes(80))
              for i in range(MAX_GRANTS)]
    parents = [bytes([i]) * 32 for i in range(MAX_PARENTS)]
    cred = issue_swarm_key(ident.devices[-1], issuer=ident.public, log=ident.public, epoch=2,
                           check=C1, grants=grants, parents=parents,
                           chain=ident.chain_of(ident.devices[-1]))
    assert len(cred.chain) == MAX_CHAIN_DEPTH
    assert len(cred.encode()) <= min(MAX_CREDENTIAL_SIZE, MAX_ENTRY)
    assert decode_credential(cred.encode()) == cred
