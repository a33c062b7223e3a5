"""Credentials: the entries of every log, as a peer or a damaged file presents them.

Proves: :func:`decode_credential` raises only
:class:`~p2pinvite.halo.credentials.MalformedCredential` (a ``CredentialError``
and a ``DecodeError``), and :meth:`CredentialVerifier.decode_and_verify` only
``CredentialError``, for random bytes, random msgpack, and mutations of real
credentials of every type (``revoked_device`` and ``swarm_key`` with grants
included). Structural edits keep the canonical key order where they can, so
they get past the canonical-encoding check into the field checks; and
whatever still decodes encodes back to the very same bytes.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings

from p2pinvite.errors import CredentialError
from p2pinvite.halo.credentials import (
    CredentialVerifier,
    Grant,
    MalformedCredential,
    Role,
    decode_credential,
)
from tests.halo.strategies import IdentityBuilder, SpaceBuilder

from .strategies import CHEAP, fuzz_inputs

#: Each target runs for seconds at CI size (thousands of examples).
pytestmark = pytest.mark.slow


def _every_type() -> list[bytes]:
    alice = IdentityBuilder.create("alice", seed=b"fuzz-alice")
    second = alice.add_device(invitation=b"\x07" * 16)
    alice.revoke(alice.device, second.device_public)
    grant = Grant(alice.public, alice.device.device_public, b"\x05" * 32, b"\x06" * 80)
    alice.swarm_key(alice.device, 2, b"\x09" * 16, [grant])
    bob = IdentityBuilder.create("bob", seed=b"fuzz-bob")
    space = SpaceBuilder.create(alice, "Team", seed=b"fuzz")
    space.admit(alice, bob.public, Role.EDITOR, name="Bob", invitation=b"\x01" * 16)
    space.change(alice, bob.public, Role.ADMIN)
    space.swarm_key(alice, 2, b"\x08" * 16, [grant, Grant(bob.public, bob.device.device_public,
                                                          b"\x04" * 32, b"\x03" * 80)])
    space.remove(alice, bob.public)
    return alice.entries + space.entries


CREDENTIALS = _every_type()


def test_the_corpus_holds_every_credential_type() -> None:
    assert {decode_credential(c).type_name for c in CREDENTIALS} == {
        "identity_genesis", "authorized_device", "revoked_device", "swarm_key",
        "space_genesis", "space_member"}


@settings(max_examples=CHEAP)
@given(fuzz_inputs(CREDENTIALS, max_size=600))
def test_decode_raises_only_malformed_credential(data: bytes) -> None:
    try:
        cred = decode_credential(data)
    except MalformedCredential:
        return
    assert cred.encode() == data  # strict: one encoding per credential


@settings(max_examples=CHEAP)
@given(fuzz_inputs(CREDENTIALS, max_size=600))
def test_decode_and_verify_raises_only_credential_error(data: bytes) -> None:
    with contextlib.suppress(CredentialError):
        CredentialVerifier().decode_and_verify(data)
