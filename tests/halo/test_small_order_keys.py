"""The security review's forgery, refused wherever halo checks a signature.

With public key = R = the identity point and S = 0 (``FORGED``), plain
Ed25519 verification (OpenSSL) accepts the signature for every message. These
tests build that forgery into each place a signature is checked -- a
credential, a static-key binding proof, a device chain, an admission-key
proof -- and expect the strict rules (p2pinvite/crypto/ed25519.py) to refuse
it with a typed error whose cause says why.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from p2pinvite.crypto.ed25519 import SMALL_ORDER_POINTS
from p2pinvite.errors import CredentialError, HandshakeError, SignatureError, WeakPublicKey
from p2pinvite.halo.credentials import (
    Credential,
    CredentialVerifier,
    IdentityGenesis,
    Role,
    issue_authorized_device,
    issue_space_member,
)
from p2pinvite.halo.keys import DeviceKeys, verify_binding_proof, verify_ed25519
from p2pinvite.halo.log import InvalidEntries, SpaceLog
from p2pinvite.wire import pack

from ..crypto import ed25519_ref as ref
from .strategies import T0, IdentityBuilder

IDENTITY_POINT = bytes.fromhex("01" + "00" * 31)
FORGED = IDENTITY_POINT + bytes(32)


class Forger:
    """A "signer" with the identity point as public key: it needs no secret."""

    public_key = IDENTITY_POINT

    def sign(self, message: bytes) -> bytes:
        """The same 64 bytes for every message."""
        return FORGED


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException:
    """The first exception of type *kind* along *exc*'s ``__cause__`` chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__
    raise AssertionError(f"no {kind.__name__} in the cause chain of {exc!r}")


def test_credential_signed_by_a_small_order_key_is_refused(tmp_path: Path) -> None:
    # An identity genesis "signed" by the identity point: anyone could write it.
    cred = Credential(
        issuer=IDENTITY_POINT, subject=IDENTITY_POINT, assertion=IdentityGenesis(name="m"),
        issued_at=T0, parents=(), signer=IDENTITY_POINT, chain=(), signature=FORGED,
    )
    with pytest.raises(CredentialError) as info:
        CredentialVerifier().verify(cred)
    assert info.value.rule == "bad_signature"
    weak = _cause(info.value, WeakPublicKey)
    assert isinstance(weak, WeakPublicKey)
    assert weak.reason == "small_order"
    # The log refuses it too, before any membership rule.
    with pytest.raises(InvalidEntries) as bad:
        SpaceLog.create(tmp_path / "forged.log", [cred.encode()])
    assert isinstance(bad.value.__cause__, CredentialError)
    assert bad.value.__cause__.rule == "bad_signature"
    assert not (tmp_path / "forged.log").exists()


def test_binding_proof_under_a_small_order_device_key_is_refused() -> None:
    # One proof would "bind" every static key to the identity-point device key.
    for static in (DeviceKeys.generate().static_public, DeviceKeys.generate().static_public):
        proof = pack({"device_key": IDENTITY_POINT, "static_key": static, "sig": FORGED})
        with pytest.raises(HandshakeError, match="not bound") as info:
            verify_binding_proof(proof, static)
        assert _cause(info.value, WeakPublicKey)


async def test_chain_naming_a_small_order_device_is_refused(tmp_path: Path) -> None:
    # Alice's device authorizes a device key that is the identity point (say a
    # guest paired with the forged binding proof above). Its log accepts the
    # authorization (a key that can sign nothing harms no one), but nothing
    # "signed" by it may verify: not a credential, and not a chain element.
    alice = IdentityBuilder.create("alice")
    weak = alice.add(issue_authorized_device(
        alice.device, identity=alice.public, device=IDENTITY_POINT,
        parents=sorted(alice.heads), chain=alice.chain_of(alice.device), issued_at=T0,
    ))
    log = SpaceLog.create(tmp_path / "identity.log", alice.entries)
    assert log.state.is_device(IDENTITY_POINT)
    weak_chain = [weak.core, *alice.chain_of(alice.device)]

    # 1. The weak "device" signs for Alice directly.
    member = issue_space_member(
        Forger(), issuer=alice.public, space=os.urandom(32), member=os.urandom(32),
        role=Role.ADMIN, name="mallory", parents=[os.urandom(32)], chain=weak_chain,
        issued_at=T0,
    )
    with pytest.raises(CredentialError) as info:
        CredentialVerifier().verify(member)
    assert info.value.rule == "bad_signature"
    assert _cause(info.value, WeakPublicKey)

    # 2. It authorizes a real device of the attacker's, in Alice's log.
    mallory = DeviceKeys.generate()
    authorize = issue_authorized_device(
        Forger(), identity=alice.public, device=mallory.device_public,
        parents=log.append_parents(), chain=weak_chain, issued_at=T0,
    )
    with pytest.raises(CredentialError) as info:
        await log.append(authorize.encode())
    assert info.value.rule == "bad_signature"
    result = await log.ingest([authorize.encode()])  # from a peer: refused all the same
    assert [r.rule for r in result.refused] == ["bad_signature"]
    assert log.count == len(alice.entries)
    log.close()

    # 3. The attacker's real device signs, with a chain through the weak one.
    chain = [authorize.core, *weak_chain]
    via = issue_space_member(
        mallory, issuer=alice.public, space=os.urandom(32), member=os.urandom(32),
        role=Role.ADMIN, name="mallory", parents=[os.urandom(32)], chain=chain, issued_at=T0,
    )
    with pytest.raises(CredentialError) as info:
        CredentialVerifier().verify(via)
    assert info.value.rule == "bad_chain"
    assert _cause(info.value, WeakPublicKey)


def test_admission_key_proof_under_a_small_order_key_is_refused() -> None:
    # invitations/protocol.py checks a key proof with verify_ed25519 over the
    # handshake hash; the forgery would pass for any hash.
    for _ in range(2):
        assert not verify_ed25519(IDENTITY_POINT, FORGED, os.urandom(64))


@pytest.mark.parametrize(
    "key", sorted(SMALL_ORDER_POINTS), ids=lambda k: f"{k[:2].hex()}_{k[31]:02x}"
)
def test_no_small_order_key_signs_a_credential(key: bytes) -> None:
    # R = identity and S = 0 verify under a small-order A when k = 0 mod 8
    # (then [k]A is the identity); pick issued_at until the payload gives that.
    for issued_at in range(T0, T0 + 1000):
        cred = Credential(
            issuer=key, subject=key, assertion=IdentityGenesis(name="m"), issued_at=issued_at,
            parents=(), signer=key, chain=(), signature=FORGED,
        )
        if ref.challenge(IDENTITY_POINT, key, cred.payload) % 8 == 0:
            break
    # A real forgery: the library alone accepts it.
    Ed25519PublicKey.from_public_bytes(key).verify(cred.signature, cred.payload)
    with pytest.raises(CredentialError) as info:
        CredentialVerifier().verify(cred)
    assert info.value.rule == "bad_signature"
    assert isinstance(_cause(info.value, SignatureError), WeakPublicKey)
