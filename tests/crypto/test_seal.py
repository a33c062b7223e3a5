"""Sealed boxes: the vector, recomputed from the primitives; round trips; refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.crypto.seal import BOX_OVERHEAD, SEAL_INFO, open_sealed, seal
from p2pinvite.errors import BadTag, DecodeError, InvalidKey, InvalidPoint

VECTOR = json.loads((Path(__file__).parent.parent / "vectors" / "seal-x25519.json").read_text())


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 from hmac alone: an implementation independent of cryptography's HKDF."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
    return out[:length]


def _keys() -> tuple[bytes, bytes]:
    k = X25519PrivateKey.generate()
    return k.private_bytes_raw(), k.public_key().public_bytes_raw()


def test_the_vector_is_the_documented_construction() -> None:
    v = {k: bytes.fromhex(x) for k, x in VECTOR.items() if k != "description"}
    e = X25519PrivateKey.from_private_bytes(v["ephemeral_private"])
    e_pub = e.public_key().public_bytes_raw()
    shared = e.exchange(X25519PublicKey.from_public_bytes(v["recipient_public"]))
    key = _hkdf_sha256(shared, e_pub + v["recipient_public"], SEAL_INFO + v["context"], 32)
    expected = e_pub + ChaCha20Poly1305(key).encrypt(bytes(12), v["plaintext"], v["context"])
    assert v["box"] == expected
    assert seal(v["recipient_public"], v["plaintext"], context=v["context"],
                ephemeral=v["ephemeral_private"]) == v["box"]
    assert open_sealed(v["recipient_private"], v["box"], context=v["context"]) == v["plaintext"]
    assert SEAL_INFO == b"p2pinvite/seal/v1\x00"


@settings(max_examples=50)
@given(st.binary(max_size=256), st.binary(max_size=64))
def test_round_trip_and_fresh_ephemerals(plaintext: bytes, context: bytes) -> None:
    priv, pub = _keys()
    a, b = seal(pub, plaintext, context=context), seal(pub, plaintext, context=context)
    assert a != b  # a fresh ephemeral key each time
    assert len(a) == len(plaintext) + BOX_OVERHEAD
    assert open_sealed(priv, a, context=context) == plaintext == open_sealed(priv, b,
                                                                            context=context)


def test_only_the_recipient_with_the_same_context_opens_it() -> None:
    priv, pub = _keys()
    other, _ = _keys()
    box = seal(pub, b"swarm secret", context=b"space A, epoch 1")
    with pytest.raises(BadTag):
        open_sealed(other, box, context=b"space A, epoch 1")
    with pytest.raises(BadTag):
        open_sealed(priv, box, context=b"space B, epoch 1")
    for i in (0, 32, len(box) - 1):  # the ephemeral key, the ciphertext, the tag
        bad = bytearray(box)
        bad[i] ^= 1
        with pytest.raises((BadTag, InvalidPoint)):
            open_sealed(priv, bytes(bad), context=b"space A, epoch 1")


def test_bad_inputs_are_typed_errors() -> None:
    priv, pub = _keys()
    with pytest.raises(InvalidKey):
        seal(pub[:31], b"x", context=b"")
    with pytest.raises(InvalidKey):
        open_sealed(priv[:31], seal(pub, b"x", context=b""), context=b"")
    with pytest.raises(DecodeError):
        open_sealed(priv, os.urandom(BOX_OVERHEAD - 1), context=b"")
    with pytest.raises(InvalidPoint):  # a low-order recipient would make the key public
        seal(bytes(32), b"x", context=b"")
    with pytest.raises(InvalidPoint):
        open_sealed(priv, bytes(32) + os.urandom(16), context=b"")
