"""Curve25519 field helpers and the Elligator 2 map (RFC 9380, section 6.7.1).

CPace (draft-irtf-cfrg-cpace, G_X25519) turns a hash of the password into a
*secret* generator: the hash is read as a field element with
:func:`decode_u_coordinate` (RFC 7748) and mapped onto Curve25519 with
:func:`map_to_curve_elligator2`. Only the u-coordinate is used by CPace; the
v-coordinate is computed anyway so tests can check the point really is on the
curve (``v**2 == u**3 + A*u**2 + u``).

Arithmetic is plain Python ``int`` modulo ``P = 2**255 - 19``. Python's big
integers are not constant-time; see docs/protocol/cpace.md for what that
means for us (the map runs once per CPace run, on a hash of PIN and
session-bound inputs).
"""

from __future__ import annotations

from typing import Final

from ..errors import LocalProtocolError

__all__ = [
    "A",
    "P",
    "Z",
    "decode_u_coordinate",
    "encode_u_coordinate",
    "is_square",
    "map_to_curve_elligator2",
    "sqrt",
]

#: The field prime of Curve25519.
P: Final = 2**255 - 19
#: Montgomery coefficient A of Curve25519 (``v^2 = u^3 + A u^2 + u``, B = 1).
A: Final = 486662
#: Non-square used by Elligator 2 for Curve25519 (RFC 9380 section 8.5; the
#: CPace draft's ``find_z_ell2`` yields the same value).
Z: Final = 2

# sqrt(-1) mod P, the fix-up constant of the p = 5 (mod 8) square root.
_SQRT_M1: Final = pow(2, (P - 1) // 4, P)
_FIELD_BYTES: Final = 32
_FIELD_BITS: Final = 255


def decode_u_coordinate(data: bytes) -> int:
    """Decode 32 little-endian bytes as RFC 7748 does: clear bit 255, do not reduce.

    The result may be in ``[P, 2**255)``; every function here reduces mod P.
    """
    if len(data) != _FIELD_BYTES:
        raise LocalProtocolError("a u-coordinate is 32 bytes")
    return int.from_bytes(data, "little") & ((1 << _FIELD_BITS) - 1)


def encode_u_coordinate(u: int) -> bytes:
    """Encode a field element as 32 little-endian bytes, reduced mod P."""
    return (u % P).to_bytes(_FIELD_BYTES, "little")


def is_square(x: int) -> bool:
    """RFC 9380 ``is_square``: True for 0 and for quadratic residues mod P."""
    return pow(x % P, (P - 1) // 2, P) in (0, 1)


def sqrt(x: int) -> int:
    """A square root of *x* mod P (RFC 9380 ``sqrt_5mod8``); *x* must be square."""
    x %= P
    candidate = pow(x, (P + 3) // 8, P)
    if candidate * candidate % P != x:
        candidate = candidate * _SQRT_M1 % P
    if candidate * candidate % P != x:
        raise LocalProtocolError("sqrt of a non-square")
    return candidate


def _inv0(x: int) -> int:
    # RFC 9380 inv0: the inverse, with inv0(0) == 0.
    return pow(x % P, P - 2, P)


def _sgn0(x: int) -> int:
    return (x % P) & 1


def map_to_curve_elligator2(u: int) -> tuple[int, int]:
    """Map field element *u* to a point ``(s, t)`` on Curve25519 (RFC 9380 6.7.1).

    Curve25519 is ``K*t^2 = s^3 + J*s^2 + s`` with J = A, K = 1, so the
    generic steps simplify; they are kept in the RFC's order so the code can
    be read against the text. The result is always on the curve (never on the
    twist); CPace keeps only ``s``, the u-coordinate.
    """
    u %= P
    x1 = (-A * _inv0(1 + Z * u * u)) % P
    if x1 == 0:  # cannot happen for Curve25519 (-1/Z is not a square); kept per RFC
        x1 = -A % P
    gx1 = (x1 * x1 * x1 + A * x1 * x1 + x1) % P
    x2 = (-x1 - A) % P
    gx2 = (x2 * x2 * x2 + A * x2 * x2 + x2) % P
    if is_square(gx1):
        x, y = x1, sqrt(gx1)
        if _sgn0(y) != 1:
            y = -y % P
    else:
        x, y = x2, sqrt(gx2)
        if _sgn0(y) != 0:
            y = -y % P
    return x, y
