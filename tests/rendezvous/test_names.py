"""Derived names: the vector (recomputed independently), pair order, separation, no leaks."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import LocalProtocolError
from p2pinvite.rendezvous.candidates import (
    Candidates,
    encode_candidates,
    open_candidates,
    seal_candidates,
)
from p2pinvite.rendezvous.mailbox_wire import encode_add
from p2pinvite.rendezvous.names import (
    APPID,
    LABEL_MAILBOX,
    LABEL_RELAY_TOKEN,
    LABEL_SEAL,
    SIDES,
    derive,
    for_invitation,
    for_member_pair,
    pair_side,
)
from p2pinvite.rendezvous.transit import relay_line

from . import make_vectors

VECTOR = json.loads((Path(__file__).parents[1] / "vectors" / "rendezvous.json").read_text())
_keys = st.binary(min_size=32, max_size=32)


def _hkdf_sha256(ikm: bytes, info: bytes) -> bytes:
    """RFC 5869 with no salt and L = 32, from hmac alone (independent of cryptography's)."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _expected(secret: bytes, context: bytes) -> dict[str, str]:
    return {
        "mailbox_id": _hkdf_sha256(secret, b"p2pinvite/rendezvous/v1/mailbox\x00" + context).hex(),
        "sealing_key": _hkdf_sha256(secret, b"p2pinvite/rendezvous/v1/seal\x00" + context).hex(),
        "relay_token": _hkdf_sha256(secret,
                                    b"p2pinvite/rendezvous/v1/relay-token\x00" + context).hex(),
    }


def test_the_labels_are_the_documented_ones() -> None:
    assert LABEL_MAILBOX == b"p2pinvite/rendezvous/v1/mailbox"
    assert LABEL_SEAL == b"p2pinvite/rendezvous/v1/seal"
    assert LABEL_RELAY_TOKEN == b"p2pinvite/rendezvous/v1/relay-token"
    assert VECTOR["appid"] == APPID == "p2pinvite/rendezvous/v1"
    assert SIDES == ("p2pinvite_side_0", "p2pinvite_side_1")


def test_the_vector_names_are_hkdf_of_the_documented_info() -> None:
    secret = bytes.fromhex(VECTOR["secret"])
    inv, pair = VECTOR["invitation"], VECTOR["member_pair"]
    assert bytes.fromhex(inv["context"]) == b"invitation"
    a, b = bytes.fromhex(pair["device_a"]), bytes.fromhex(pair["device_b"])
    assert bytes.fromhex(pair["context"]) == b"member-pair" + min(a, b) + max(a, b)
    for entry in (inv, pair):
        expected = _expected(secret, bytes.fromhex(entry["context"]))
        assert {k: entry[k] for k in expected} == expected
        assert entry["sides"] == list(SIDES)


def test_the_code_reproduces_the_vector() -> None:
    secret = bytes.fromhex(VECTOR["secret"])
    inv = for_invitation(secret)
    a, b = (bytes.fromhex(VECTOR["member_pair"][k]) for k in ("device_a", "device_b"))
    pair = for_member_pair(secret, a, b)
    for names, entry in ((inv, VECTOR["invitation"]), (pair, VECTOR["member_pair"])):
        assert names.mailbox_id == entry["mailbox_id"]
        assert names.sealing_key.hex() == entry["sealing_key"]
        assert names.relay_token.hex() == entry["relay_token"]
    assert relay_line(inv.relay_token, inv.side(1)).decode() == VECTOR["relay_line"]
    assert VECTOR["relay_line"] == f"please relay {inv.relay_token.hex()} for side {SIDES[1]}\n"
    # The generator is deterministic and agrees with the file.
    assert make_vectors.build() == VECTOR


def test_the_vector_box_is_the_documented_construction() -> None:
    c = VECTOR["candidates"]
    key, nonce = bytes.fromhex(c["sealing_key"]), bytes.fromhex(c["nonce"])
    plaintext = bytes.fromhex(c["plaintext"])
    # The plaintext is canonical msgpack: keys in order v, addrs, relay (by encoded bytes).
    decoded = msgpack.unpackb(plaintext, raw=False)
    assert list(decoded) == ["v", "addrs", "relay"]
    assert decoded == {"v": 1, "addrs": c["addrs"], "relay": c["relay"]}
    ad = b"p2pinvite/rendezvous/v1/candidates\x00" + c["sender_side"].encode()
    assert bytes.fromhex(c["ad"]) == ad
    box = nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)
    assert box.hex() == c["box"]
    cands = Candidates(tuple((h, p) for h, p in c["addrs"]), (c["relay"][0], c["relay"][1]))
    assert encode_candidates(cands) == plaintext
    assert seal_candidates(key, cands, sender_side=c["sender_side"], nonce=nonce) == box
    assert open_candidates(key, box, sender_side=c["sender_side"]) == cands
    frame = json.loads(VECTOR["add_frame"])
    assert frame == {"type": "add", "phase": "candidates", "body": c["box"],
                     "id": "0001020304050607"}
    assert encode_add("candidates", box, "0001020304050607") == VECTOR["add_frame"]


@given(st.binary(min_size=32, max_size=32), _keys, _keys)
def test_pair_names_do_not_depend_on_the_order(secret: bytes, a: bytes, b: bytes) -> None:
    if a == b:
        with pytest.raises(LocalProtocolError):
            for_member_pair(secret, a, b)
        return
    ab, ba = for_member_pair(secret, a, b), for_member_pair(secret, b, a)
    assert ab == ba
    assert {pair_side(a, b), pair_side(b, a)} == {0, 1}
    assert pair_side(a, b) == (0 if a < b else 1)


@settings(max_examples=50)
@given(st.binary(min_size=32, max_size=32), _keys, _keys)
def test_invitation_and_pair_names_never_meet(secret: bytes, a: bytes, b: bytes) -> None:
    if a == b:
        return
    inv, pair = for_invitation(secret), for_member_pair(secret, a, b)
    values = [inv.mailbox_id, inv.sealing_key.hex(), inv.relay_token.hex(),
              pair.mailbox_id, pair.sealing_key.hex(), pair.relay_token.hex()]
    assert len(set(values)) == 6  # no two outputs equal, within or across uses
    assert secret.hex() not in values
    assert len(inv.mailbox_id) == 64
    assert set(inv.mailbox_id) <= set("0123456789abcdef")


def test_other_pairs_and_secrets_get_other_names() -> None:
    s1, s2 = b"\x01" * 32, b"\x02" * 32
    a, b, c = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
    ids = {for_member_pair(s1, a, b).mailbox_id, for_member_pair(s1, a, c).mailbox_id,
           for_member_pair(s2, a, b).mailbox_id, for_invitation(s1).mailbox_id,
           for_invitation(s2).mailbox_id}
    assert len(ids) == 5


def test_secrets_and_capabilities_stay_out_of_repr() -> None:
    names = for_invitation(bytes(range(32)))
    text = repr(names) + str(names)
    for value in (names.mailbox_id, names.sealing_key.hex(), names.relay_token.hex(),
                  repr(names.sealing_key), repr(names.relay_token)):
        assert value not in text
    assert "invitation" in text


def test_sides_by_role() -> None:
    names = for_invitation(bytes(32))
    assert (names.side(0), names.side(1)) == SIDES
    assert names.other_side(SIDES[0]) == SIDES[1]
    assert names.other_side(SIDES[1]) == SIDES[0]
    with pytest.raises(LocalProtocolError):
        names.side(2)
    with pytest.raises(LocalProtocolError):
        names.other_side("someone")


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "0" * 32, None])
def test_bad_inputs_are_refused(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        for_invitation(bad)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        for_member_pair(bytes(32), bad, b"\x01" * 32)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        for_member_pair(bad, b"\x01" * 32, b"\x02" * 32)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        derive(bad, b"invitation", kind="invitation")  # type: ignore[arg-type]


def test_a_context_is_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        derive(bytes(32), "invitation", kind="invitation")  # type: ignore[arg-type]
