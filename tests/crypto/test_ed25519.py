"""crypto.ed25519: strict verification against vectors and a first-principles reference.

* ``tests/vectors/ed25519-strict.json`` -- every vector is checked three ways:
  the strict verifier gives ``expected`` (refusing with the error the ``rule``
  names), plain OpenSSL gives ``openssl`` (so the file shows which vectors the
  library alone would accept), and the slow reference (``ed25519_ref``)
  re-derives ``expected`` and ``rule`` from the curve.
* The small-order table hardcoded in the module is derived here from the curve.
* Properties: fresh keys verify; any flipped bit is refused with a typed error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.crypto import ed25519
from p2pinvite.errors import (
    BadSignature,
    CryptoError,
    InvalidPoint,
    SignatureError,
    WeakPublicKey,
)
from p2pinvite.halo.keys import verify_ed25519

from . import ed25519_ref as ref

_FILE = json.loads(
    (Path(__file__).parent.parent / "vectors" / "ed25519-strict.json").read_text()
)
VECTORS: list[dict[str, Any]] = _FILE["vectors"]

#: Vector rule -> (error class, ``reason``) the strict verifier raises.
_ERRORS: dict[str, tuple[type[SignatureError], str]] = {
    "A_non_canonical": (WeakPublicKey, "non_canonical"),
    "A_small_order": (WeakPublicKey, "small_order"),
    "R_non_canonical": (BadSignature, "non_canonical_r"),
    "R_small_order": (BadSignature, "small_order_r"),
    "S_out_of_range": (BadSignature, "s_out_of_range"),
    "equation": (BadSignature, "mismatch"),
}


def _parts(v: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    return (bytes.fromhex(v["public_key"]), bytes.fromhex(v["signature"]),
            bytes.fromhex(v["message"]))


def _plain_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


_by_name = pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])


# -- the vector file ----------------------------------------------------------------


def test_vector_file_is_well_formed() -> None:
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names))
    assert [r.split(":")[0] for r in _FILE["rules"]] == list(ref.STRICT_RULES)
    for v in VECTORS:
        assert set(v) == set(_FILE["fields"]), v["name"]
        assert v["source"] in _FILE["sources"], v["name"]
        assert (v["expected"] == "valid") == (v["rule"] is None), v["name"]
        assert v["rule"] is None or v["rule"] in ref.STRICT_RULES, v["name"]
        assert len(bytes.fromhex(v["public_key"])) == 32
        assert len(bytes.fromhex(v["signature"])) == 64


def test_vector_file_covers_the_review_cases() -> None:
    by_name = {v["name"]: v for v in VECTORS}
    ident = "01" + "00" * 31
    forgeries = [v for v in VECTORS if v["name"].startswith("review_forgery")]
    assert len({v["message"] for v in forgeries}) == 2
    for v in forgeries:
        assert v["public_key"] == ident
        assert v["signature"] == ident + "00" * 32
        assert v["openssl"]
        assert v["expected"] == "invalid"
    small_a = {v["public_key"] for v in VECTORS
               if v["name"].startswith("small_order_A") and v["openssl"]}
    assert small_a == {k.hex() for k in ed25519.SMALL_ORDER_POINTS}
    assert by_name["rfc8032_test1"]["expected"] == by_name["rfc8032_test2"]["expected"] == "valid"
    rules = {v["rule"] for v in VECTORS}
    assert set(ref.STRICT_RULES) <= rules
    # Every constructed small-order A or R, and non-canonical A, is a forgery
    # OpenSSL alone accepts: the strict rules are what refuses it.
    assert all(v["openssl"] for v in VECTORS if v["source"] == "constructed"
               and v["rule"] in ("A_non_canonical", "A_small_order", "R_small_order"))


@_by_name
def test_strict_verify_gives_the_expected_result(v: dict[str, Any]) -> None:
    a, sig, m = _parts(v)
    if v["expected"] == "valid":
        ed25519.verify(a, sig, m)
        assert verify_ed25519(a, sig, m)
        return
    error, reason = _ERRORS[v["rule"]]
    with pytest.raises(error) as info:
        ed25519.verify(a, sig, m)
    assert info.value.reason == reason
    assert not verify_ed25519(a, sig, m)


@_by_name
def test_openssl_alone_gives_the_recorded_answer(v: dict[str, Any]) -> None:
    # If this fails, the library changed its own rules: update the 'openssl'
    # fields (python -m tests.crypto.make_ed25519_vectors); the strict result
    # must not change.
    assert _plain_verify(*_parts(v)) == v["openssl"]


@_by_name
def test_reference_derives_the_expected_result(v: dict[str, Any]) -> None:
    assert ref.strict_rule(*_parts(v)) == v["rule"]


def test_rfc8032_vectors_verify() -> None:
    for name in ("rfc8032_test1", "rfc8032_test2"):
        (v,) = [v for v in VECTORS if v["name"] == name]
        a, sig, m = _parts(v)
        ed25519.verify(a, sig, m)
        assert ref.verify_cofactorless(a, sig, m)


# -- the small-order table ------------------------------------------------------------


def test_small_order_table_is_derived_from_the_curve() -> None:
    points = ref.torsion()
    derived = {ref.encode(q) for q in points}
    assert len(derived) == 8
    assert derived == ed25519.SMALL_ORDER_POINTS
    orders = sorted(next(n for n in (1, 2, 4, 8) if ref.order_divides(n, q)) for q in points)
    assert orders == [1, 2, 4, 4, 8, 8, 8, 8]
    for enc in ed25519.SMALL_ORDER_POINTS:
        q = ref.decode(enc)  # decompress (canonically) ...
        assert q is not None
        assert ref.equal(ref.mul(8, q), ref.IDENTITY)  # ... times 8 is the identity
    # The base point is not in it: it has order L.
    assert not ref.order_divides(8, ref.B)
    assert ref.order_divides(ref.L, ref.B)


def _non_canonical_encodings() -> list[bytes]:
    """Every non-canonical encoding: y in [p, 2^255) with either sign, and x = 0 with sign."""
    out = [(y | sign << 255).to_bytes(32, "little")
           for y in range(ref.P, 2**255) for sign in (0, 1)]
    out += [(y | 1 << 255).to_bytes(32, "little") for y in (1, ref.P - 1)]
    return out


def test_every_non_canonical_encoding_is_refused_as_key_and_as_r() -> None:
    encodings = _non_canonical_encodings()
    assert len(encodings) == 40
    for enc in encodings:
        assert not ref.canonical(enc)
        with pytest.raises(WeakPublicKey) as key_info:
            ed25519.check_public_key(enc)
        assert key_info.value.reason == "non_canonical"
        with pytest.raises(BadSignature) as sig_info:
            ed25519.check_signature(enc + bytes(32))
        assert sig_info.value.reason == "non_canonical_r"


def test_every_small_order_point_is_refused_as_key_and_as_r() -> None:
    for enc in ed25519.SMALL_ORDER_POINTS:
        with pytest.raises(WeakPublicKey, match="small order"):
            ed25519.check_public_key(enc)
        with pytest.raises(BadSignature, match="small order"):
            ed25519.check_signature(enc + bytes(32))


def test_s_bound_is_exactly_l() -> None:
    r = ref.encode(ref.B)
    ed25519.check_signature(r + (ed25519.L - 1).to_bytes(32, "little"))
    with pytest.raises(BadSignature) as info:
        ed25519.check_signature(r + ed25519.L.to_bytes(32, "little"))
    assert info.value.reason == "s_out_of_range"


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_wrong_key_sizes_are_refused(size: int) -> None:
    sig = Ed25519PrivateKey.from_private_bytes(bytes(32)).sign(b"m")
    with pytest.raises(WeakPublicKey) as info:
        ed25519.verify(b"\x09" * size, sig, b"m")
    assert info.value.reason == "length"


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_wrong_signature_sizes_are_refused(size: int) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    sig = (key.sign(b"m") + bytes(1))[:size]
    with pytest.raises(BadSignature) as info:
        ed25519.verify(key.public_key().public_bytes_raw(), sig, b"m")
    assert info.value.reason == "length"


def test_error_types() -> None:
    # One type to catch for "refused"; a weak key is also the crypto layer's
    # InvalidPoint (a forbidden point from a peer), like a low-order CPace share.
    assert issubclass(BadSignature, SignatureError)
    assert issubclass(WeakPublicKey, SignatureError)
    assert issubclass(WeakPublicKey, InvalidPoint)
    assert issubclass(SignatureError, CryptoError)
    err = WeakPublicKey("x", reason="small_order")
    assert err.reason == "small_order"
    assert err.refusal is None


def test_verifying_key_checks_once_and_verifies_many() -> None:
    sk = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    vk = ed25519.VerifyingKey.from_bytes(sk.public_key().public_bytes_raw())
    for m in (b"", b"a", b"b" * 1000):
        vk.verify(sk.sign(m), m)
    with pytest.raises(BadSignature):
        vk.verify(sk.sign(b"a"), b"b")
    with pytest.raises(WeakPublicKey):
        ed25519.VerifyingKey.from_bytes(bytes.fromhex("01" + "00" * 31))


# -- properties -----------------------------------------------------------------------

_special_points = st.sampled_from(
    sorted(ed25519.SMALL_ORDER_POINTS) + _non_canonical_encodings()
    + [(y | s << 255).to_bytes(32, "little") for y in (0, 1, 2, ref.P - 2, ref.P - 1)
       for s in (0, 1)]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_special_points, st.binary(min_size=32, max_size=32)))
def test_key_check_matches_the_reference(enc: bytes) -> None:
    refused = not ref.canonical(enc) or ref.small_order(enc)
    try:
        ed25519.check_public_key(enc)
    except WeakPublicKey:
        assert refused
    else:
        assert not refused


@settings(max_examples=200, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    message=st.binary(min_size=1, max_size=100),
    part=st.sampled_from(["key", "signature", "message"]),
    position=st.integers(min_value=0),
)
def test_fresh_keys_verify_and_every_bit_flip_fails(
    seed: bytes, message: bytes, part: str, position: int
) -> None:
    sk = Ed25519PrivateKey.from_private_bytes(seed)
    key = sk.public_key().public_bytes_raw()
    sig = sk.sign(message)
    ed25519.verify(key, sig, message)
    assert verify_ed25519(key, sig, message)

    def flip(data: bytes) -> bytes:
        bit = position % (8 * len(data))
        out = bytearray(data)
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)

    args = {"key": key, "signature": sig, "message": message}
    args[part] = flip(args[part])
    with pytest.raises(SignatureError):
        ed25519.verify(args["key"], args["signature"], args["message"])
    assert not verify_ed25519(args["key"], args["signature"], args["message"])
