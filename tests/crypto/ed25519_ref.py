"""A slow, pure-Python Ed25519 for tests: RFC 8032 section 5.1, written from its formulas.

Never used by the package. It lets the tests check the strict rules of
``p2pinvite/crypto/ed25519.py`` against first principles instead of against
constants copied from somewhere: which encodings are canonical, which points
have small order, and whether a signature's equation really holds.

Two decoders, because the edge cases are about exactly their difference:

* :func:`decode` is RFC 8032 5.1.3 as written: ``y >= p`` fails, and so does
  ``x = 0`` with the sign bit set.
* :func:`decode_lax` is what ref10-derived code (OpenSSL among it) does:
  ``y`` is taken modulo ``p`` and a set sign bit on ``x = 0`` is ignored. It
  tells what point a non-canonical encoding stands for, so a test can say
  "the equation holds, only the encoding is wrong".

Points are extended homogeneous coordinates ``(X, Y, Z, T)`` with ``x = X/Z``,
``y = Y/Z``, ``x*y = T/Z`` (RFC 8032 5.1.4). Speed: a few ms per scalar
multiplication, fine for tests and for generating vectors.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "IDENTITY",
    "STRICT_RULES",
    "B",
    "D",
    "L",
    "P",
    "Point",
    "add",
    "canonical",
    "challenge",
    "decode",
    "decode_lax",
    "encode",
    "equal",
    "mul",
    "neg",
    "order_divides",
    "recover_x",
    "small_order",
    "strict_rule",
    "torsion",
    "verify_cofactorless",
]

#: The field prime 2^255 - 19.
P = 2**255 - 19
#: The prime order of the base point (RFC 8032 5.1).
L = 2**252 + 27742317777372353535851937790883648493
#: The curve constant d = -121665/121666 of -x^2 + y^2 = 1 + d x^2 y^2.
D = -121665 * pow(121666, P - 2, P) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]

IDENTITY: Point = (0, 1, 1, 0)


def add(p1: Point, p2: Point) -> Point:
    """p1 + p2 (RFC 8032 5.1.4; complete on this curve, so it also doubles)."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * D % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def neg(p1: Point) -> Point:
    """-p1: (x, y) -> (-x, y)."""
    x, y, z, t = p1
    return (-x % P, y, z, -t % P)


def mul(s: int, p1: Point) -> Point:
    """[s]p1 by double-and-add (s >= 0)."""
    acc = IDENTITY
    while s > 0:
        if s & 1:
            acc = add(acc, p1)
        p1 = add(p1, p1)
        s >>= 1
    return acc


def equal(p1: Point, p2: Point) -> bool:
    """The same affine point (projective coordinates compared crosswise)."""
    x1, y1, z1, _ = p1
    x2, y2, z2, _ = p2
    return (x1 * z2 - x2 * z1) % P == 0 and (y1 * z2 - y2 * z1) % P == 0


def order_divides(n: int, p1: Point) -> bool:
    """True iff [n]p1 is the identity."""
    return equal(mul(n, p1), IDENTITY)


def recover_x(y: int, sign: int) -> int | None:
    """The x with parity *sign* on the curve at *y* (0 <= y < p), or None (RFC 8032 5.1.3)."""
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * _SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return P - x if (x & 1) != sign else x


def decode(enc: bytes) -> Point | None:
    """RFC 8032 5.1.3 decoding: None for non-canonical encodings and non-points."""
    if len(enc) != 32:
        return None
    n = int.from_bytes(enc, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= P:
        return None
    x = recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


def decode_lax(enc: bytes) -> Point | None:
    """ref10-style decoding: y reduced mod p, the sign of x = 0 ignored; None for non-points."""
    n = int.from_bytes(enc, "little")
    y, sign = (n & ((1 << 255) - 1)) % P, n >> 255
    x = recover_x(y, sign)
    if x is None and sign:
        x = recover_x(y, 0)
        if x != 0:
            return None
    return None if x is None else (x, y, 1, x * y % P)


def encode(p1: Point) -> bytes:
    """The canonical 32-byte encoding (RFC 8032 5.1.2)."""
    x, y, z, _ = p1
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


_B = decode(bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666"))
assert _B is not None
#: The base point (y = 4/5, x even).
B: Point = _B


def challenge(r: bytes, a: bytes, message: bytes) -> int:
    """k = SHA-512(R || A || M) mod L, over the encodings exactly as given."""
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def verify_cofactorless(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether [S]B = R + [k]A holds, decoding A and R laxly and not bounding S.

    This is only the group equation: it deliberately skips every encoding and
    range rule, so a test can tell "refused by a rule" from "does not verify".
    """
    a = decode_lax(public_key)
    r = decode_lax(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    k = challenge(signature[:32], public_key, message)
    return equal(mul(s, B), add(r, mul(k, a)))


# -- the strict rules, from first principles ------------------------------------------

#: The order in which p2pinvite's strict verifier applies its rules; a
#: signature that breaks several is refused by the first.
STRICT_RULES = (
    "A_non_canonical", "A_small_order", "R_non_canonical", "R_small_order",
    "S_out_of_range", "equation",
)


def canonical(enc: bytes) -> bool:
    """RFC 8032 5.1.2's encoding of *some* y: y < p, and no sign bit on x = 0.

    Says nothing about whether y is on the curve (a non-point fails later,
    at the equation).
    """
    n = int.from_bytes(enc, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    return y < P and not (sign and recover_x(y, 0) == 0)


def small_order(enc: bytes) -> bool:
    """A canonical encoding of a point Q with [8]Q = identity."""
    q = decode(enc)
    return q is not None and order_divides(8, q)


def torsion() -> list[Point]:
    """The points of order dividing 8, as [i]T (i = 0..7) for a T of order 8.

    Found, not listed: take curve points at y = 2, 3, ...; [L]Q removes Q's
    order-L part and leaves its torsion part, which has order 8 for some Q.
    The curve has 8 L points with L prime, so the points killed by 8 form a
    subgroup of order 8, and [i]T for i = 0..7 is all of it.
    """
    for y in range(2, 1000):
        q = decode(y.to_bytes(32, "little"))
        if q is None:
            continue
        t = mul(L, q)
        if not order_divides(4, t):
            assert order_divides(8, t)
            return [mul(i, t) for i in range(8)]
    raise AssertionError("no point of order 8L found")


def strict_rule(public_key: bytes, signature: bytes, message: bytes) -> str | None:
    """The first of :data:`STRICT_RULES` that refuses the signature, or None if valid."""
    r = signature[:32]
    if not canonical(public_key):
        return "A_non_canonical"
    if small_order(public_key):
        return "A_small_order"
    if not canonical(r):
        return "R_non_canonical"
    if small_order(r):
        return "R_small_order"
    if int.from_bytes(signature[32:], "little") >= L:
        return "S_out_of_range"
    if not verify_cofactorless(public_key, signature, message):
        return "equation"
    return None
