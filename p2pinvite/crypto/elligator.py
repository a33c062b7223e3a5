"""Curve25519 field helpers and the Elligator 2 map (RFC 9380, section 6.7.1).

CPace (draft-irtf-cfrg-cpace, G_X25519) turns a hash of the password into a
*secret* generator: the hash is read as a field element with
:func:`decode_u_coordinate` (RFC 7748) and mapped onto Curve25519 with
:func:`map_to_curve_elligator2`. Only the u-coordinate is used by CPace; the
v-coordinate is computed anyway so tests can check the point really is on the
curve (``v**2 == u**3 + A*u**2 + u``).

Arithmetic is plain Python ``int`` modulo ``P = 2**255 - 19``. Python's big
integers are not constant-time; see docs/PROTOCOL.md Part 6 for what that
means for us (the map runs once per CPace run, on a hash of PIN and
session-bound inputs).
"""

from __future__ import annotations

import secrets
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


# Constants of RFC 9380 appendix G.2.1 (public values, computed once).
_C1: Final = (P + 3) // 8
_C2: Final = pow(2, _C1, P)
_C4: Final = (P - 5) // 8


def map_to_curve_elligator2(u: int) -> tuple[int, int]:
    """Map field element *u* to a point ``(s, t)`` on Curve25519 (RFC 9380 6.7.1).

    Computed with the straight-line method of RFC 9380 appendix G.2.1: one
    exponentiation yields both the square test of g(x1) and the square root,
    and one *blinded* inversion turns the projective ``x = xn / xd`` into the
    affine u-coordinate. The direct transcription of section 6.7.1 needs three
    exponentiations (``inv0``, ``is_square``, ``sqrt``);
    :func:`_map_to_curve_elligator2_reference` keeps it, and the tests check
    both agree. The inversion runs extended Euclid (``pow(x, -1, P)``, about
    7x faster here than a Fermat power) on ``xd * r`` for a fresh random
    ``r``: its running time then depends on a uniformly random value, not on
    the secret ``xd``, and multiplying by ``r`` again gives ``1 / xd``.

    The result is always on the curve (never on the twist); CPace keeps only
    ``s``, the u-coordinate.
    """
    u %= P
    tv1 = 2 * u * u % P                 # Z * u^2
    xd = (tv1 + 1) % P                  # nonzero: -1/Z is not a square mod P
    x1n = -A % P                        # x1 = x1n / xd
    tv2 = xd * xd % P
    gxd = tv2 * xd % P                  # xd^3
    gx1 = (A * tv1 % P) * x1n % P
    gx1 = (gx1 + tv2) * x1n % P         # x1n^3 + A x1n^2 xd + x1n xd^2
    tv3 = gxd * gxd % P
    tv2 = tv3 * tv3 % P                 # gxd^4
    tv3 = tv3 * gxd % P * gx1 % P       # gx1 gxd^3
    tv2 = tv2 * tv3 % P                 # gx1 gxd^7
    y11 = pow(tv2, _C4, P) * tv3 % P    # candidate sqrt(gx1 / gxd)
    y12 = y11 * _SQRT_M1 % P
    e1 = y11 * y11 % P * gxd % P == gx1
    y1 = y11 if e1 else y12
    x2n = x1n * tv1 % P                 # x2 = x2n / xd
    y21 = y11 * u % P * _C2 % P
    y22 = y21 * _SQRT_M1 % P
    gx2 = gx1 * tv1 % P
    e2 = y21 * y21 % P * gxd % P == gx2
    y2 = y21 if e2 else y22
    e3 = y1 * y1 % P * gxd % P == gx1   # g(x1) is square: x = x1
    xn, y = (x1n, y1) if e3 else (x2n, y2)
    if e3 != (_sgn0(y) == 1):
        y = -y % P
    r = 1 + secrets.randbelow(P - 1)    # blinding factor, nonzero
    return xn * (pow(xd * r % P, -1, P) * r % P) % P, y


def _map_to_curve_elligator2_reference(u: int) -> tuple[int, int]:
    """RFC 9380 6.7.1 transcribed step by step (three exponentiations); for tests."""
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
