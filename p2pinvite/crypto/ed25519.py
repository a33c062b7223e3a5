"""Strict Ed25519 verification: the rules every p2pinvite signature check obeys.

RFC 8032 leaves verifiers room, and OpenSSL (under ``cryptography``) uses it:
it accepts a public key or ``R`` that is one of the 8 points of small order,
and a public key whose encoding is not canonical. With the identity point as
public key, ``R`` = identity and ``S`` = 0, one signature then verifies for
*every* message: whoever can get such a key named as a device, a signer or an
admission key can sign anything as it, and nobody can be held to a signature
made under it. So before OpenSSL sees a signature, :func:`verify` refuses:

1. a public key ``A`` or an ``R`` (the first 32 bytes of the signature) that is
   not a canonical encoding: the 255-bit ``y`` must be below p = 2^255 - 19,
   and the sign bit must be clear when x = 0 (``y`` = 1 or ``y`` = p - 1);
2. an ``A`` or ``R`` of small order, by the canonical encodings of those 8
   points (:data:`SMALL_ORDER_POINTS`; the rule above already refuses every
   other encoding of them);
3. ``S`` (the last 32 bytes) not below the group order L (OpenSSL refuses
   this too; one integer compare makes it ours rather than a library detail);

and then asks OpenSSL, whose cofactorless equation ``[S]B = R + [k]A`` and
byte-wise comparison of ``R`` decide the rest. A public key that has a
small-order *component* but is not itself of small order is accepted, as by
ed25519-dalek's ``verify_strict``: refusing it would need a scalar
multiplication per key, and the cofactorless equation already ties such a
signature to one message.

Cost: byte and integer checks only, no point arithmetic (replaying a log is
bound by Ed25519 verification, about 0.2 ms each). :class:`VerifyingKey` holds
a checked key so a caller that verifies many signatures by one key (the
credential verifier) checks the key once.

docs/PROTOCOL.md Part 8 section 1.4 is the normative text;
tests/vectors/ed25519-strict.json holds the vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import BadSignature, WeakPublicKey

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "SMALL_ORDER_POINTS",
    "L",
    "P",
    "VerifyingKey",
    "check_public_key",
    "check_signature",
    "verify",
]

#: The field prime 2^255 - 19.
P: Final = 2**255 - 19
#: The prime order of the base point; ``S`` must be below it.
L: Final = 2**252 + 27742317777372353535851937790883648493
PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64

#: Canonical encodings of the 8 points of order dividing 8 (the torsion
#: subgroup: the curve has 8 * L points and L is prime). Listed rather than
#: computed because computing them needs point arithmetic; the tests derive
#: this set from the curve equation and compare.
SMALL_ORDER_POINTS: Final = frozenset(
    {
        # order 1: the identity (0, 1)
        bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000"),
        # order 2: (0, -1)
        bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        # order 4: (+-sqrt(-1), 0)
        bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000000"),
        bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000080"),
        # order 8
        bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
        bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    }
)

_Y_MASK: Final = (1 << 255) - 1


def _point_fault(encoding: bytes) -> str | None:
    """Why a 32-byte point encoding (a key or an ``R``) is refused, or None."""
    n = int.from_bytes(encoding, "little")
    y = n & _Y_MASK
    # x = 0 exactly when y = +-1, and zero has no sign: a set sign bit there
    # is a second encoding of the same point.
    if y >= P or (n >> 255 and (y == 1 or y == P - 1)):
        return "non_canonical"
    if encoding in SMALL_ORDER_POINTS:
        return "small_order"
    return None


def check_public_key(public_key: bytes) -> None:
    """Raise :class:`WeakPublicKey` unless *public_key* may verify signatures.

    It must be 32 bytes, a canonical encoding, and not a point of small order.
    Whether it is a curve point at all is left to :func:`verify` (a non-point
    verifies nothing), which keeps this check free of field arithmetic.
    """
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise WeakPublicKey(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes", reason="length")
    fault = _point_fault(public_key)
    if fault == "non_canonical":
        raise WeakPublicKey("Ed25519 public key is not canonically encoded", reason=fault)
    if fault == "small_order":
        raise WeakPublicKey("Ed25519 public key is a point of small order", reason=fault)


def check_signature(signature: bytes) -> None:
    """Raise :class:`BadSignature` unless *signature*'s ``R`` and ``S`` are allowed.

    ``R`` must be a canonical encoding and not a point of small order; ``S``
    must be below L. This looks at the signature alone, not at the message.
    """
    if len(signature) != SIGNATURE_SIZE:
        raise BadSignature(f"an Ed25519 signature is {SIGNATURE_SIZE} bytes", reason="length")
    fault = _point_fault(signature[:32])
    if fault == "non_canonical":
        raise BadSignature("signature R is not canonically encoded", reason="non_canonical_r")
    if fault == "small_order":
        raise BadSignature("signature R is a point of small order", reason="small_order_r")
    if int.from_bytes(signature[32:], "little") >= L:
        raise BadSignature("signature S is not below the group order", reason="s_out_of_range")


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """An Ed25519 public key that passed :func:`check_public_key`.

    Build with :meth:`from_bytes`; keep it to verify many signatures by one
    key without checking or parsing the key again.
    """

    public_key: bytes
    _key: Ed25519PublicKey = field(repr=False, compare=False)

    @classmethod
    def from_bytes(cls, public_key: bytes) -> VerifyingKey:
        """Check *public_key* (:class:`WeakPublicKey` if refused) and wrap it."""
        check_public_key(public_key)
        try:
            key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            # Only a wrong length makes the library refuse here, and that was
            # checked above; kept so no library error escapes our tree.
            raise WeakPublicKey("unusable Ed25519 public key", reason="length") from None
        return cls(public_key, key)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise :class:`BadSignature` unless *signature* is this key's signature of *message*."""
        _verify_checked(self._key, signature, message)


def _verify_checked(key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    check_signature(signature)
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise BadSignature("Ed25519 signature does not verify", reason="mismatch") from None


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Strictly verify an Ed25519 signature; return only if it is valid.

    Raises :class:`WeakPublicKey` for a refused key and :class:`BadSignature`
    for a refused or wrong signature (both are
    :class:`~p2pinvite.errors.SignatureError`).
    """
    check_public_key(public_key)
    # Not through VerifyingKey: building the frozen dataclass costs about
    # as much as all the checks together, for a key used once.
    _verify_checked(Ed25519PublicKey.from_public_bytes(public_key), signature, message)
