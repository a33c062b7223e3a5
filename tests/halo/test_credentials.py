"""halo.credentials: canonical encoding, signatures, ids, chains."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import CredentialError, DecodeError
from p2pinvite.halo.credentials import (
    MAX_CHAIN_DEPTH,
    MAX_CREDENTIAL_SIZE,
    SIGNATURE_CONTEXT,
    AuthorizedDevice,
    Credential,
    CredentialVerifier,
    IdentityGenesis,
    MalformedCredential,
    Role,
    SpaceGenesis,
    SpaceMember,
    decode_credential,
    issue_authorized_device,
    issue_identity_genesis,
    issue_member_removal,
    issue_space_genesis,
    issue_space_member,
    verify_credential,
)
from p2pinvite.halo.keys import DeviceKeys, SigningKey, verify_ed25519
from p2pinvite.wire import pack, unpack

from .strategies import T0, IdentityBuilder, SpaceBuilder, corruptions, identities

ID_SEED = b"\x11" * 32
SPACE_SEED = b"\x22" * 32
DEV = DeviceKeys.from_private(b"\x33" * 32, b"\x44" * 32)


def _all_types() -> list[Credential]:
    ik = SigningKey.from_seed(ID_SEED)
    sk = SigningKey.from_seed(SPACE_SEED)
    genesis = issue_identity_genesis(ik, name="Alice", issued_at=T0)
    ad = issue_authorized_device(ik, identity=ik.public_key, device=DEV.device_public,
                                 parents=[genesis.id], issued_at=T0)
    space = issue_space_genesis(sk, owner=ik.public_key, name="Garden", issued_at=T0)
    owner = issue_space_member(sk, issuer=sk.public_key, space=sk.public_key,
                               member=ik.public_key, role=Role.OWNER, name="Alice",
                               parents=[space.id], issued_at=T0)
    editor = issue_space_member(DEV, issuer=ik.public_key, space=sk.public_key,
                                member=b"\x55" * 32, role=Role.EDITOR, name="Bob",
                                parents=[owner.id], chain=[ad.encode()],
                                invitation=b"\x66" * 16, issued_at=T0)
    # Two parents (a merge), given in the wrong order: issuing sorts them.
    removal = issue_member_removal(DEV, issuer=ik.public_key, space=sk.public_key,
                                   member=b"\x55" * 32, parents=[editor.id, owner.id],
                                   chain=[ad.encode()], issued_at=T0)
    return [genesis, ad, space, owner, editor, removal]


@pytest.mark.parametrize("cred", _all_types(), ids=lambda c: f"{c.type_name}")
def test_round_trip_and_canonical(cred: Credential) -> None:
    data = cred.encode()
    assert data == pack(cred.to_map())  # the generic canonical encoder agrees
    back = decode_credential(data)
    assert back == cred
    assert back.id == cred.id
    assert back.encode() == data
    verify_credential(data)


def test_signature_and_id_definitions() -> None:
    for cred in _all_types():
        m = cred.to_map()
        signed = {k: v for k, v in m.items() if k not in ("sig", "chain")}
        assert cred.payload == SIGNATURE_CONTEXT + pack(signed)
        assert verify_ed25519(cred.signer, cred.signature, SIGNATURE_CONTEXT + pack(signed))
        assert cred.id == hashlib.blake2b(pack({**m, "chain": []}), digest_size=32).digest()


def test_wire_field_names() -> None:
    owner, member = _all_types()[3], _all_types()[4]
    assert set(unpack(member.encode())) == {
        "v", "type", "issuer", "subject", "issued_at", "parents", "signer", "chain", "sig",
        "space", "role", "profile", "invitation",
    }
    m = unpack(member.encode())
    assert m["type"] == "space_member"
    assert m["role"] == "EDITOR"
    assert m["profile"] == {"name": "Bob"}
    assert m["v"] == 2
    assert m["parents"] == [owner.id]
    assert unpack(owner.encode())["invitation"] is None
    assert unpack(_all_types()[0].encode())["parents"] == []


def test_canonical_bytes_are_stable() -> None:
    # Ed25519 is deterministic and the keys are fixed, so the bytes are too;
    # this pins the encoding (a change here is a protocol change).
    digest = hashlib.sha256(b"".join(c.encode() for c in _all_types())).hexdigest()
    assert digest == _STABLE_DIGEST


_STABLE_DIGEST = "fff729c06e06bb2393cf0bcc065cb337499ae59eaab70b838c01528efc632f97"


def test_id_ignores_chain_but_not_signature() -> None:
    member = _all_types()[4]
    assert member.stripped().id == member.id
    assert member.stripped().encode() != member.encode()
    assert replace(member, signature=b"\x00" * 64).id != member.id


def _resign(cred: Credential, key: Any, **changes: Any) -> Credential:
    draft = replace(cred, **changes)
    return replace(draft, signature=key.sign(draft.payload))


def test_tampered_field_refused() -> None:
    member = _all_types()[4]
    assert isinstance(member.assertion, SpaceMember)
    for changed in (
        replace(member, subject=b"\x77" * 32),
        replace(member, issued_at=member.issued_at + 1),
        replace(member, assertion=replace(member.assertion, role=Role.ADMIN)),
        replace(member, assertion=replace(member.assertion, invitation=None)),
        # Parents are signed: nobody can re-parent an entry.
        replace(member, parents=(b"\x01" * 32,)),
        replace(member, parents=tuple(sorted((*member.parents, b"\xff" * 32)))),
    ):
        with pytest.raises(CredentialError) as info:
            verify_credential(changed.encode())
        assert info.value.rule == "bad_signature"


def test_tampered_signature_refused() -> None:
    for cred in _all_types():
        sig = bytearray(cred.signature)
        sig[5] ^= 0x10
        with pytest.raises(CredentialError) as info:
            CredentialVerifier().verify(replace(cred, signature=bytes(sig)))
        assert info.value.rule == "bad_signature"


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_corruption_refused(data: st.DataObject) -> None:
    member = _all_types()[4].encode()
    bad = data.draw(corruptions(member))
    with pytest.raises(CredentialError) as info:
        verify_credential(bad)
    assert info.value.rule in {"malformed", "bad_signature", "bad_chain"}


def test_malformed_is_both_credential_and_decode_error() -> None:
    with pytest.raises(MalformedCredential) as info:
        decode_credential(b"\x93\x01\x02\x03")
    assert isinstance(info.value, DecodeError)
    assert isinstance(info.value, CredentialError)
    assert info.value.rule == "malformed"


def _mutated(**changes: Any) -> bytes:
    m = _all_types()[4].to_map()
    m.update(changes)
    return pack({k: v for k, v in m.items() if v is not _DROP})


_DROP = object()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_mutated(extra=1), id="extra-field"),
        pytest.param(_mutated(role=_DROP), id="missing-field"),
        pytest.param(_mutated(type="space_owner"), id="unknown-type"),
        pytest.param(_mutated(type=3), id="type-not-str"),
        pytest.param(_mutated(v=1), id="version-1"),
        pytest.param(_mutated(v=3), id="version-3"),
        pytest.param(_mutated(parents=[]), id="no-parents"),
        pytest.param(_mutated(parents=[b"\x02" * 32, b"\x01" * 32]), id="parents-descending"),
        pytest.param(_mutated(parents=[b"\x01" * 32] * 2), id="parents-duplicate"),
        pytest.param(_mutated(parents=[bytes([i]) * 32 for i in range(65)]),
                     id="parents-too-many"),
        pytest.param(_mutated(parents=[b"\x01" * 31]), id="parent-short"),
        pytest.param(_mutated(parents=b"\x01" * 32), id="parents-not-list"),
        pytest.param(_mutated(parents=["x" * 32]), id="parent-str"),
        pytest.param(_mutated(parents=_DROP), id="parents-missing"),
        pytest.param(_mutated(role="KING"), id="role"),
        pytest.param(_mutated(issuer=b"\x01" * 31), id="short-key"),
        pytest.param(_mutated(issuer="a" * 32), id="key-as-str"),
        pytest.param(_mutated(sig=b"\x01" * 63), id="short-sig"),
        pytest.param(_mutated(issued_at=-1), id="negative-time"),
        pytest.param(_mutated(issued_at=1.5), id="float-time"),
        pytest.param(_mutated(issued_at=True), id="bool-time"),
        pytest.param(_mutated(profile={"name": "x", "age": 3}), id="profile-extra"),
        pytest.param(_mutated(profile={"name": b"x"}), id="profile-bytes"),
        pytest.param(_mutated(profile="x"), id="profile-not-map"),
        pytest.param(_mutated(invitation=b""), id="empty-invitation"),
        pytest.param(_mutated(invitation=b"x" * 65), id="long-invitation"),
        pytest.param(_mutated(invitation="abc"), id="invitation-str"),
        pytest.param(_mutated(chain=[b"x"] * (MAX_CHAIN_DEPTH + 1)), id="chain-too-long"),
        pytest.param(_mutated(chain=["x"]), id="chain-of-str"),
        pytest.param(_mutated(chain=b"x"), id="chain-not-list"),
        pytest.param(_mutated(profile={"name": "x" * 129}), id="long-name"),
        pytest.param(pack([1]), id="not-a-map"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="bad-msgpack"),
        pytest.param(b"\x80" * (MAX_CREDENTIAL_SIZE + 1), id="too-large"),
        pytest.param(_all_types()[4].encode() + b"\x00", id="trailing"),
    ],
)
def test_malformed_inputs_refused(data: bytes) -> None:
    with pytest.raises(MalformedCredential):
        decode_credential(data)


def test_parents_one_encoding_and_bounds() -> None:
    genesis, ad, _, owner, _, removal = _all_types()
    assert list(removal.parents) == sorted(removal.parents)
    assert len(removal.parents) == 2
    # A genesis has no parents, everything else at least one, at most 64.
    with_parents = {**genesis.to_map(), "parents": [owner.id]}
    with pytest.raises(MalformedCredential, match="genesis has no parents"):
        decode_credential(pack(with_parents))
    many = sorted(hashlib.blake2b(bytes([i]), digest_size=32).digest() for i in range(64))
    cred = issue_authorized_device(SigningKey.from_seed(ID_SEED), identity=ad.issuer,
                                   device=ad.subject, parents=[*many, *many[:3]], issued_at=T0)
    assert cred.parents == tuple(many)  # sorted, duplicates dropped
    assert decode_credential(cred.encode()) == cred
    verify_credential(cred.encode())
    with pytest.raises(MalformedCredential):
        issue_authorized_device(SigningKey.from_seed(ID_SEED), identity=ad.issuer,
                                device=ad.subject, parents=[], issued_at=T0)


def test_non_canonical_encoding_refused() -> None:
    import msgpack

    cred = _all_types()[4]
    m = cred.to_map()
    # Same map, keys in insertion (not canonical) order.
    reordered = msgpack.packb(dict(sorted(m.items(), reverse=True)), use_bin_type=True)
    assert unpack(reordered) == m
    with pytest.raises(MalformedCredential, match="canonical"):
        decode_credential(reordered)
    # Same value, a needlessly long integer encoding.
    long_int = cred.encode().replace(b"\xa1v\x02", b"\xa1v\xcd\x00\x02", 1)
    assert unpack(long_int) == m
    with pytest.raises(MalformedCredential, match="canonical"):
        decode_credential(long_int)


def test_chain_via_second_and_third_device() -> None:
    ident = IdentityBuilder.create()
    second = ident.add_device()
    third = ident.add_device(second)
    space = SpaceBuilder.create(ident)
    for dev, depth in ((ident.device, 1), (second, 2), (third, 3)):
        cred = space.admit(ident, b"\x99" * 32, device=dev)
        decoded = verify_credential(cred)
        assert len(decoded.chain) == depth
        assert decoded.signer == dev.device_public


def test_chain_refusals() -> None:
    ident = IdentityBuilder.create()
    second = ident.add_device()
    other = IdentityBuilder.create("mallory")
    sk = SigningKey.generate()

    def member_cred(signer: Any, chain: list[bytes], issuer: bytes | None = None) -> Credential:
        return issue_space_member(signer, issuer=issuer or ident.public, space=sk.public_key,
                                  member=b"\x01" * 32, role=Role.READER, name="r",
                                  parents=[b"\x07" * 32], chain=chain)

    chain2 = ident.chain_of(second)
    cases = {
        # A device signing for its identity without a chain.
        "no-chain": member_cred(second, []),
        # The issuer key signing with a chain attached.
        "issuer-with-chain": member_cred(ident.key, ident.chain_of(ident.device)),
        # Another identity's device chain.
        "foreign-chain": member_cred(second, other.chain_of(other.device)),
        # Chain incomplete: does not reach the identity key.
        "truncated": member_cred(second, chain2[:1]),
        # Chain out of order.
        "reordered": member_cred(second, chain2[::-1]),
        # Chain element with its own signature broken.
        "bad-element-sig": member_cred(
            second, [replace(decode_credential(chain2[0]), signature=b"\x00" * 64).encode(),
                     chain2[1]]),
        # Element that is not an AuthorizedDevice.
        "wrong-type": member_cred(second, [ident.entries[0]]),
        # Element that still carries its own chain (must be stripped).
        "unstripped": member_cred(second, [ident.entries[2], chain2[1]]),
        # Garbage element.
        "garbage": member_cred(second, [b"\x01\x02"]),
        # Valid chain but claiming another issuer.
        "issuer-mismatch": member_cred(second, chain2, issuer=other.public),
    }
    for name, cred in cases.items():
        with pytest.raises(CredentialError) as info:
            CredentialVerifier().verify(decode_credential(cred.encode()))
        assert info.value.rule == "bad_chain", name


def test_verifier_caches_chain_elements() -> None:
    ident = IdentityBuilder.create()
    second = ident.add_device()
    space = SpaceBuilder.create(ident)
    creds = [decode_credential(space.admit(ident, bytes([i]) * 32, device=second).encode())
             for i in range(3)]
    checked: list[bytes] = []

    class Counting(CredentialVerifier):
        def check_signature(self, cred: Credential) -> None:
            checked.append(cred.id)
            super().check_signature(cred)

    verifier = Counting()
    for c in creds:
        verifier.verify(c)
    # 3 top-level signatures + 2 chain elements, each verified once.
    assert len(checked) == 5
    assert len(set(checked)) == 5


def test_assertion_classes_by_type() -> None:
    kinds = [type(c.assertion) for c in _all_types()]
    assert kinds == [IdentityGenesis, AuthorizedDevice, SpaceGenesis, SpaceMember,
                     SpaceMember, SpaceMember]
    assert _all_types()[5].assertion == SpaceMember(
        space=SigningKey.from_seed(SPACE_SEED).public_key, role=Role.REMOVED, name=""
    )


def test_constructor_validates() -> None:
    good = _all_types()[1]
    with pytest.raises(MalformedCredential):
        replace(good, issuer=b"\x00")
    with pytest.raises(MalformedCredential):
        replace(good, chain=(b"x",) * (MAX_CHAIN_DEPTH + 1))
    with pytest.raises(MalformedCredential):
        replace(good, assertion=SpaceMember(space=b"\x00" * 32, role="OWNER",  # type: ignore[arg-type]
                                            name="x"))
    with pytest.raises(MalformedCredential):
        issue_space_genesis(SigningKey.generate(), owner=b"\x00" * 32, name="n" * 200)


@settings(max_examples=15, deadline=None)
@given(identities(max_devices=4))
def test_every_device_chain_verifies(ident: IdentityBuilder) -> None:
    sk = SigningKey.generate()
    verifier = CredentialVerifier()
    for dev in ident.devices:
        cred = issue_space_member(dev, issuer=ident.public, space=sk.public_key,
                                  member=b"\x01" * 32, role=Role.READER, name="",
                                  parents=[b"\x07" * 32], chain=ident.chain_of(dev))
        verifier.decode_and_verify(cred.encode())


def test_documented_vectors() -> None:
    # The vectors printed in docs/PROTOCOL.md Part 8, section 5.
    genesis, device, *_, removal = _all_types()
    assert genesis.issuer.hex() == (
        "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737")
    assert DEV.device_public.hex() == (
        "17cb79fb2b4120f2b1ec65e4198d6e08b28e813feb01e4a400839b85e18080ce")
    assert SigningKey.from_seed(SPACE_SEED).public_key.hex() == (
        "a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0")
    assert genesis.encode().hex() == (
        "8aa17602a3736967c4409531c9645b7dc039f0b9c8bdd3eaec8b4f0cceaca434"
        "991ce279653b79aa288bef138b2adc44e9ef3ada90af16de19d103f4346623e4"
        "d8e061b6eb2fb1d38c07a474797065b06964656e746974795f67656e65736973"
        "a5636861696e90a6697373756572c420d04ab232742bb4ab3a1368bd4615e4e6"
        "d0224ab71a016baf8520a332c9778737a67369676e6572c420d04ab232742bb4"
        "ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737a7706172656e74"
        "7390a770726f66696c6581a46e616d65a5416c696365a77375626a656374c420"
        "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
        "a96973737565645f6174cf0000018cc251f400")
    assert genesis.id.hex() == "a16caa5c67fb06fa2c34a2f46c284ee467b0cf6bea5607d507a615e8c5272503"
    # The authorized_device names the genesis as its one parent.
    assert device.parents == (genesis.id,)
    assert device.encode().hex() == (
        "8aa17602a3736967c440bf81de5bc728e794b75c6ddd738c5a654431a7d4e180"
        "71122b701f5ec2f86e7b49a29ed7c5141797de40e383d4e8c92adb3da7e48f8f"
        "82183a82f33d5e243a09a474797065b1617574686f72697a65645f6465766963"
        "65a5636861696e90a6697373756572c420d04ab232742bb4ab3a1368bd4615e4"
        "e6d0224ab71a016baf8520a332c9778737a67369676e6572c420d04ab232742b"
        "b4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737a7706172656e"
        "747391c420a16caa5c67fb06fa2c34a2f46c284ee467b0cf6bea5607d507a615"
        "e8c5272503a77375626a656374c42017cb79fb2b4120f2b1ec65e4198d6e08b2"
        "8e813feb01e4a400839b85e18080cea96973737565645f6174cf0000018cc251"
        "f400aa696e7669746174696f6ec0")
    assert device.payload.hex() == (
        "703270696e766974652f63726564656e7469616c2f76310088a17602a4747970"
        "65b1617574686f72697a65645f646576696365a6697373756572c420d04ab232"
        "742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737a6736967"
        "6e6572c420d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a3"
        "32c9778737a7706172656e747391c420a16caa5c67fb06fa2c34a2f46c284ee4"
        "67b0cf6bea5607d507a615e8c5272503a77375626a656374c42017cb79fb2b41"
        "20f2b1ec65e4198d6e08b28e813feb01e4a400839b85e18080cea96973737565"
        "645f6174cf0000018cc251f400aa696e7669746174696f6ec0")
    assert device.signature.hex() == (
        "bf81de5bc728e794b75c6ddd738c5a654431a7d4e18071122b701f5ec2f86e7b"
        "49a29ed7c5141797de40e383d4e8c92adb3da7e48f8f82183a82f33d5e243a09")
    assert device.id.hex() == "f43e641e5bb0222d3579b70223f1b9f8ff70c100851015a5a638cd4948038f13"
    # A removal with two parents (sorted), signed by the device with its chain.
    assert [p.hex() for p in removal.parents] == [
        "16613d88960be2ad65a0776b431835b0a27dc77c0568bfa16c9095e8d82db02e",
        "24c8a7d3ff1de8a5e2175604be778a0882255eb6b8fffc18853dee4e31c5c3b5",
    ]
    assert removal.signature.hex() == (
        "84c2b5d2ca0b5ea416bc59aa71e5584e5820d05f4683e8f950d4f95f13a70372"
        "856fd575288f0fc087c178bb5f57c91a25f17626eb55a13609cca7f51846f70f")
    assert removal.id.hex() == "4164a16d6fd51c6813c238b2f1c8cd1c5cdc52f3363fe5150bf77b5d0fc4c4dc"
