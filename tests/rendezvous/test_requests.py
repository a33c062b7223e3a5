"""Sealed relay requests: round trip, the binding of key and side, per-attempt tokens."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import BadTag, DecodeError, LocalProtocolError
from p2pinvite.rendezvous.names import SIDES, for_invitation
from p2pinvite.rendezvous.requests import (
    RelayRequest,
    attempt_token,
    open_relay_request,
    seal_relay_request,
)
from p2pinvite.wire import pack

from ..soak import examples

NAMES = for_invitation(bytes(range(32)))
KEY = NAMES.sealing_key
S0, S1 = SIDES


def test_a_request_round_trips_and_opens_only_with_its_key_and_side() -> None:
    request = RelayRequest.new(1_800_000_000.7)
    assert request.at == 1_800_000_000
    assert len(request.nonce) == 16
    box = seal_relay_request(KEY, request, sender_side=S1)
    assert open_relay_request(KEY, box, sender_side=S1) == request
    assert request.nonce not in box  # sealed, not merely framed
    with pytest.raises(BadTag):
        open_relay_request(KEY, box, sender_side=S0)  # reflected to its sender
    with pytest.raises(BadTag):
        open_relay_request(for_invitation(bytes(32)).sealing_key, box, sender_side=S1)
    flipped = box[:-1] + bytes([box[-1] ^ 1])
    with pytest.raises(BadTag):
        open_relay_request(KEY, flipped, sender_side=S1)
    # Two requests never share a box, even for the same content (random nonces).
    assert seal_relay_request(KEY, request, sender_side=S1) != box


def test_each_attempt_has_its_own_token_derived_from_the_rendezvous() -> None:
    a, b = RelayRequest.new(0), RelayRequest.new(0)
    ta, tb = attempt_token(NAMES.relay_token, a.nonce), attempt_token(NAMES.relay_token, b.nonce)
    assert len(ta) == 32
    assert ta != tb
    assert ta not in (NAMES.relay_token, KEY)
    assert attempt_token(NAMES.relay_token, a.nonce) == ta
    other = for_invitation(bytes(32)).relay_token
    assert attempt_token(other, a.nonce) != ta
    with pytest.raises(LocalProtocolError):
        attempt_token(NAMES.relay_token, b"short")


@pytest.mark.parametrize("plain", [
    pack({"v": 2, "nonce": b"n" * 16, "at": 1}),
    pack({"v": 1, "nonce": b"n" * 15, "at": 1}),
    pack({"v": 1, "nonce": b"n" * 16}),
    pack({"v": 1, "nonce": b"n" * 16, "at": -1}),
    pack({"v": 1, "nonce": b"n" * 16, "at": 1, "x": 0}),
    pack([1, 2, 3]),
    b"\xc1",
])
def test_authentic_but_malformed_requests_are_decode_errors(plain: bytes) -> None:
    nonce = bytes(12)
    ad = b"p2pinvite/rendezvous/v1/relay-request\x00" + S1.encode()
    box = nonce + ChaCha20Poly1305(KEY).encrypt(nonce, plain, ad)
    with pytest.raises(DecodeError):
        open_relay_request(KEY, box, sender_side=S1)


@given(st.binary(max_size=200))
@settings(max_examples=examples(500, 5000))
def test_arbitrary_boxes_give_only_typed_errors(box: bytes) -> None:
    with pytest.raises((DecodeError, BadTag)):
        open_relay_request(KEY, box, sender_side=S1)
