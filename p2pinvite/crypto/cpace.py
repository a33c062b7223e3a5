"""CPace, cipher suite CPACE-X25519-SHA512 (draft-irtf-cfrg-cpace-21), sans-IO.

CPace is a balanced PAKE: two parties that share a low-entropy password (a
6-digit PIN, the secret part of a short code) derive a strong shared key, and
an attacker gets one password guess per interaction, never an offline
dictionary attack. p2pinvite runs it inside an already established Noise
channel; docs/PROTOCOL.md Part 6 says exactly how (inputs, encodings, labels).

Theory of operation
-------------------
Each party builds a *secret* generator ``g`` from the password, the channel
identifier CI and the session id sid (:func:`calculate_generator`), picks a
random scalar ``y`` and sends ``Y = X25519(y, g)`` with its associated data
AD, encoded ``lv_cat(Y, AD)``. On the peer's message it computes
``K = X25519(y, Y_peer)``, refuses the neutral element (a low-order share),
and derives ``ISK = SHA-512(lv_cat("CPace255_ISK", sid, K) || transcript)``.
The transcript is ``transcript_ir`` (initiator's message first) when roles
exist and ``transcript_oc`` (ordered concatenation) in the symmetric mode.

Key confirmation (draft section 10.4, the option the draft describes):
``mac_key = SHA-512("CPaceMac" || sid || ISK)``; each party sends
``HMAC-SHA512(mac_key, lv_cat(Y, AD))`` over *its own* message and checks the
peer's tag over the peer's message.

The :class:`CPace` object is a four-state machine, written as data in
``_TRANSITIONS`` / ``_ALLOWED`` below::

    WAITING --receive ok--> ESTABLISHED --verify ok--> CONFIRMED
       |                        |
       +--receive fails--+      +--verify fails--+
                         v                       v
                       FAILED <------------------+

``message()`` is available until the run fails (a responder may send after
receiving, an initiator before). Every result (ISK, tags, sid output) exists
only from ESTABLISHED on, and FAILED forgets all of them, so a caller that
ignores an exception still cannot use a key from a broken run.

Beyond the draft (documented in docs/PROTOCOL.md Part 6):

* a peer share must be a *canonical* u-coordinate (``< 2**255 - 19``, so bit
  255 clear). X25519 outputs always are; only a forged message is not.
* a peer share equal to our own is refused: it is our message reflected back,
  which would otherwise confirm a session with ourselves.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from ..errors import (
    DecodeError,
    FrameTooLarge,
    HandshakeError,
    InvalidKey,
    InvalidPoint,
    LocalProtocolError,
)
from .elligator import P, decode_u_coordinate, encode_u_coordinate, map_to_curve_elligator2

__all__ = [
    "DSI",
    "FIELD_BYTES",
    "ISK_BYTES",
    "MAX_AD",
    "MAX_CI",
    "MAX_MESSAGE",
    "MAX_PASSWORD",
    "MAX_SID",
    "NEUTRAL",
    "SUITE",
    "TAG_BYTES",
    "CPace",
    "CPaceRole",
    "calculate_generator",
    "confirmation_mac_key",
    "confirmation_tag",
    "decode_message",
    "derive_isk",
    "generator_string",
    "lexicographically_larger",
    "lv_cat",
    "o_cat",
    "prepend_len",
    "sample_scalar",
    "scalar_mult",
    "scalar_mult_vfy",
    "sid_output",
    "transcript_ir",
    "transcript_oc",
]

#: Cipher suite name, as the draft spells it.
SUITE: Final = "CPACE-X25519-SHA512"
#: G_X25519.DSI, the domain-separation identifier of the group.
DSI: Final = b"CPace255"
#: G_X25519.field_size_bytes: length of a scalar, a share and K.
FIELD_BYTES: Final = 32
#: G_X25519.I, the neutral element; scalar_mult_vfy returns it for bad points.
NEUTRAL: Final = bytes(FIELD_BYTES)
#: Output sizes of SHA-512 (ISK, sid_output) and HMAC-SHA512 (tags).
ISK_BYTES: Final = 64
TAG_BYTES: Final = 64

# H.s_in_bytes of SHA-512: the generator string pads DSI+PRS to one block.
_S_IN_BYTES: Final = 128
_ISK_LABEL: Final = DSI + b"_ISK"
_MAC_LABEL: Final = b"CPaceMac"
_SID_OUTPUT_LABEL: Final = b"CPaceSidOutput"
_OC_PREFIX: Final = b"oc"

#: Local limits (our own misuse -> LocalProtocolError). The PIN is 6 digits and
#: a short code's secret is shorter than this; CI holds two 32-byte keys; sid is
#: a 64-byte Noise handshake hash. The limits leave ample room for all of them.
MAX_PASSWORD: Final = 1024
MAX_CI: Final = 1024
MAX_SID: Final = 1024
#: Largest associated data in a message, ours or the peer's (-> DecodeError).
MAX_AD: Final = 1024
#: Largest encoded message: lv_cat(Y, AD) with the longest AD.
MAX_MESSAGE: Final = 1 + FIELD_BYTES + 2 + MAX_AD  # 1024 needs a 2-byte LEB128 prefix
# Longest LEB128 length prefix we parse (2**21 > MAX_MESSAGE).
_MAX_LEB128_BYTES: Final = 3


# --------------------------------------------------------------------------
# String utilities (draft appendix A)
# --------------------------------------------------------------------------


def prepend_len(data: bytes) -> bytes:
    """``data`` prefixed with its length as unsigned LEB128 (draft A.1.1)."""
    n = len(data)
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out) + data


def lv_cat(*parts: bytes) -> bytes:
    """Length-value concatenation: ``prepend_len(a0) || prepend_len(a1) || ...``."""
    return b"".join(prepend_len(p) for p in parts)


def lexicographically_larger(a: bytes, b: bytes) -> bool:
    """True if *a* sorts after *b* (the draft's ``lexiographically_larger``).

    Byte-wise comparison, a longer string beating its own prefix; this is
    exactly Python's ``bytes`` ordering.
    """
    return a > b


def o_cat(a: bytes, b: bytes) -> bytes:
    """Ordered concatenation: ``b"oc" || larger || smaller`` (draft A.3.2)."""
    if lexicographically_larger(a, b):
        return _OC_PREFIX + a + b
    return _OC_PREFIX + b + a


def transcript_ir(ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """Initiator-responder transcript: ``lv_cat(Ya, ADa) || lv_cat(Yb, ADb)``."""
    return lv_cat(ya, ada) + lv_cat(yb, adb)


def transcript_oc(ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """Symmetric-mode transcript: ``o_cat(lv_cat(Ya, ADa), lv_cat(Yb, ADb))``."""
    return o_cat(lv_cat(ya, ada), lv_cat(yb, adb))


def _read_leb128(data: bytes, pos: int) -> tuple[int, int]:
    """Parse one minimal LEB128 length at *pos*; return ``(value, new_pos)``."""
    value = 0
    for i in range(_MAX_LEB128_BYTES):
        if pos + i >= len(data):
            raise DecodeError("CPace message: truncated length prefix")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            # A trailing zero group would give one length two encodings, and
            # the transcript must be the same bytes on both sides.
            if i > 0 and byte == 0:
                raise DecodeError("CPace message: non-minimal length prefix")
            return value, pos + i + 1
    raise DecodeError("CPace message: length prefix too long")


def decode_message(data: bytes) -> tuple[bytes, bytes]:
    """Split a CPace message ``lv_cat(Y, AD)`` into ``(Y, AD)``.

    Strict: Y must be 32 bytes, AD at most :data:`MAX_AD` bytes, lengths
    minimally encoded, and nothing may follow AD. Raises :class:`DecodeError`
    (:class:`FrameTooLarge` above :data:`MAX_MESSAGE`). The point itself is
    not checked here.
    """
    if len(data) > MAX_MESSAGE:
        raise FrameTooLarge(f"CPace message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    fields: list[bytes] = []
    pos = 0
    for limit in (FIELD_BYTES, MAX_AD):
        n, pos = _read_leb128(data, pos)
        if n > limit:
            raise DecodeError("CPace message: field longer than allowed")
        if pos + n > len(data):
            raise DecodeError("CPace message: field runs past the end")
        fields.append(data[pos : pos + n])
        pos += n
    if pos != len(data):
        raise DecodeError("CPace message: trailing bytes")
    y, ad = fields
    if len(y) != FIELD_BYTES:
        raise DecodeError(f"CPace message: share must be {FIELD_BYTES} bytes")
    return y, ad


# --------------------------------------------------------------------------
# Group G_X25519 (draft section 8.2)
# --------------------------------------------------------------------------


def generator_string(dsi: bytes, prs: bytes, ci: bytes, sid: bytes,
                     s_in_bytes: int = _S_IN_BYTES) -> bytes:
    """``lv_cat(DSI, PRS, zero_bytes(len_zpad), CI, sid)`` (draft 8.1).

    The zero padding makes DSI and PRS fill the hash's first input block, so
    the amount hashed does not depend on the password's length.
    """
    len_zpad = max(0, s_in_bytes - 1 - len(prepend_len(prs)) - len(prepend_len(dsi)))
    return lv_cat(dsi, prs, bytes(len_zpad), ci, sid)


def calculate_generator(password: bytes, ci: bytes, sid: bytes) -> bytes:
    """G_X25519.calculate_generator with H = SHA-512: the secret generator ``g``.

    ``SHA-512(generator_string)[:32]`` is read with RFC 7748's
    decodeUCoordinate (bit 255 cleared) and mapped with Elligator 2; the
    u-coordinate is returned as 32 little-endian bytes.
    """
    gen_hash = hashlib.sha512(generator_string(DSI, password, ci, sid)).digest()[:FIELD_BYTES]
    u, _v = map_to_curve_elligator2(decode_u_coordinate(gen_hash))
    return encode_u_coordinate(u)


def sample_scalar() -> bytes:
    """G_X25519.sample_scalar: 32 bytes from the OS CSPRNG (X25519 clamps them)."""
    return secrets.token_bytes(FIELD_BYTES)


def scalar_mult_vfy(scalar: bytes, point: bytes) -> bytes:
    """G_X25519.scalar_mult_vfy: ``X25519(scalar, point)``, :data:`NEUTRAL` if invalid.

    X25519 clamps the scalar and masks bit 255 of the point (RFC 7748), so
    every c low-order point of the curve or the twist gives the all-zero
    output, which is returned as the neutral element G.I (the caller aborts).
    """
    if len(scalar) != FIELD_BYTES or len(point) != FIELD_BYTES:
        raise LocalProtocolError("scalar and point must be 32 bytes")
    return _exchange(X25519PrivateKey.from_private_bytes(scalar), point)


def _exchange(private: X25519PrivateKey, point: bytes) -> bytes:
    """:func:`scalar_mult_vfy` with the scalar already loaded (loading costs a base mult)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(point))
    except ValueError:
        # cryptography refuses the all-zero shared secret; that *is* G.I.
        return NEUTRAL


def scalar_mult(scalar: bytes, point: bytes) -> bytes:
    """G_X25519.scalar_mult, identical to :func:`scalar_mult_vfy` for X25519."""
    return scalar_mult_vfy(scalar, point)


# --------------------------------------------------------------------------
# Outputs: ISK, sid_output, key confirmation
# --------------------------------------------------------------------------


def derive_isk(sid: bytes, k: bytes, transcript: bytes) -> bytes:
    """``ISK = SHA-512(lv_cat(DSI || "_ISK", sid, K) || transcript)``."""
    return hashlib.sha512(lv_cat(_ISK_LABEL, sid, k) + transcript).digest()


def sid_output(transcript: bytes) -> bytes:
    """Optional session id output: ``SHA-512("CPaceSidOutput" || transcript)``."""
    return hashlib.sha512(_SID_OUTPUT_LABEL + transcript).digest()


def confirmation_mac_key(sid: bytes, isk: bytes) -> bytes:
    """``mac_key = SHA-512("CPaceMac" || sid || ISK)`` (draft 10.4)."""
    return hashlib.sha512(_MAC_LABEL + sid + isk).digest()


def confirmation_tag(mac_key: bytes, y: bytes, ad: bytes) -> bytes:
    """Tag of the party that sent ``(y, ad)``: ``HMAC-SHA512(mac_key, lv_cat(y, ad))``."""
    return hmac.new(mac_key, lv_cat(y, ad), hashlib.sha512).digest()


# --------------------------------------------------------------------------
# The protocol object
# --------------------------------------------------------------------------


class CPaceRole(enum.Enum):
    """Which transcript a party uses.

    INITIATOR (party A) and RESPONDER (party B) use ``transcript_ir`` with A's
    message first; SYMMETRIC uses ``transcript_oc`` and needs no agreed order.
    Both sides of one run must agree on the mode.
    """

    INITIATOR = "initiator"
    RESPONDER = "responder"
    SYMMETRIC = "symmetric"


class _State(enum.Enum):
    WAITING = "waiting for the peer's message"
    ESTABLISHED = "ISK derived, peer not yet confirmed"
    CONFIRMED = "peer's confirmation tag verified"
    FAILED = "failed"


_ALL_RESULTS: Final = frozenset({_State.ESTABLISHED, _State.CONFIRMED})

#: Which operation is allowed in which state (anything else: LocalProtocolError).
_ALLOWED: Final[dict[str, frozenset[_State]]] = {
    "message": frozenset({_State.WAITING, _State.ESTABLISHED, _State.CONFIRMED}),
    "receive": frozenset({_State.WAITING}),
    "isk": _ALL_RESULTS,
    "peer_ad": _ALL_RESULTS,
    "confirmation_tag": _ALL_RESULTS,
    "verify_confirmation_tag": frozenset({_State.ESTABLISHED}),
    "sid_output": _ALL_RESULTS,
}

#: (state, event) -> next state. Events: an operation and whether it succeeded.
_TRANSITIONS: Final[dict[tuple[_State, str], _State]] = {
    (_State.WAITING, "receive_ok"): _State.ESTABLISHED,
    (_State.WAITING, "receive_failed"): _State.FAILED,
    (_State.ESTABLISHED, "verify_ok"): _State.CONFIRMED,
    (_State.ESTABLISHED, "verify_failed"): _State.FAILED,
}


def _check_input(name: str, value: object, limit: int) -> bytes:
    if not isinstance(value, bytes):
        raise LocalProtocolError(f"CPace {name} must be bytes")
    if len(value) > limit:
        raise LocalProtocolError(f"CPace {name} longer than {limit} bytes")
    return value


class CPace:
    """One party of a CPace run (CPACE-X25519-SHA512). Sans-IO.

    ``password`` is the PRS (secret: it is used once, to build the generator,
    and not kept). ``sid`` and ``ci`` must be equal on both sides; ``ad`` is
    sent in clear and authenticated. ``scalar`` fixes the ephemeral scalar for
    test vectors only; production code leaves it ``None`` (CSPRNG).

    Typical use::

        me = CPace(pin, role=CPaceRole.INITIATOR, sid=h, ci=ci)
        send(me.message())
        isk = me.receive(peer_message)          # InvalidPoint / DecodeError
        send(me.confirmation_tag())
        me.verify_confirmation_tag(peer_tag)   # HandshakeError
    """

    __slots__ = ("_ad", "_isk", "_mac_key", "_peer", "_role", "_scalar", "_share", "_sid",
                 "_state", "_transcript")

    def __init__(self, password: bytes, *, role: CPaceRole, sid: bytes, ci: bytes = b"",
                 ad: bytes = b"", scalar: bytes | None = None) -> None:
        if not isinstance(role, CPaceRole):
            raise LocalProtocolError("CPace role must be a CPaceRole")
        password = _check_input("password", password, MAX_PASSWORD)
        if not password:
            raise LocalProtocolError("CPace password must not be empty")
        self._sid = _check_input("sid", sid, MAX_SID)
        ci = _check_input("ci", ci, MAX_CI)
        self._ad = _check_input("ad", ad, MAX_AD)
        if scalar is None:
            scalar = sample_scalar()
        elif not isinstance(scalar, bytes) or len(scalar) != FIELD_BYTES:
            raise InvalidKey(f"CPace scalar must be {FIELD_BYTES} bytes")
        self._role = role
        self._scalar: X25519PrivateKey | None = X25519PrivateKey.from_private_bytes(scalar)
        # g is as secret as the password (it determines it up to a guess), so
        # it lives only in this frame.
        self._share = _exchange(self._scalar, calculate_generator(password, ci, self._sid))
        self._state = _State.WAITING
        self._peer: tuple[bytes, bytes] | None = None
        self._transcript = b""
        self._isk = b""
        self._mac_key = b""

    def __repr__(self) -> str:
        return f"<CPace {SUITE} role={self._role.name} state={self._state.name}>"

    @property
    def role(self) -> CPaceRole:
        """This party's role."""
        return self._role

    @property
    def share(self) -> bytes:
        """Our public share Y (32 bytes)."""
        return self._share

    def _require(self, operation: str) -> None:
        if self._state not in _ALLOWED[operation]:
            raise LocalProtocolError(
                f"CPace.{operation} not allowed in state {self._state.name}"
            )

    def _advance(self, event: str) -> None:
        self._state = _TRANSITIONS[(self._state, event)]
        if self._state is _State.FAILED:
            self._scalar = None
            self._isk = b""
            self._mac_key = b""

    def message(self) -> bytes:
        """Our network message, ``lv_cat(Y, AD)``."""
        self._require("message")
        return lv_cat(self._share, self._ad)

    def receive(self, peer_message: bytes) -> bytes:
        """Process the peer's message and return ISK (64 bytes).

        Raises :class:`DecodeError` for a malformed message and
        :class:`InvalidPoint` for a forbidden share (low-order, non-canonical,
        or our own share reflected); the run is then FAILED.
        """
        self._require("receive")
        if not isinstance(peer_message, bytes):
            raise LocalProtocolError("peer message must be bytes")
        try:
            isk = self._derive(peer_message)
        except Exception:
            self._advance("receive_failed")
            raise
        self._advance("receive_ok")
        return isk

    def _derive(self, peer_message: bytes) -> bytes:
        peer_y, peer_ad = decode_message(peer_message)
        if int.from_bytes(peer_y, "little") >= P:
            raise InvalidPoint("CPace peer share is not a canonical u-coordinate")
        if hmac.compare_digest(peer_y, self._share):
            raise InvalidPoint("CPace peer share equals our own (reflected message)")
        assert self._scalar is not None  # WAITING always holds the scalar
        k = _exchange(self._scalar, peer_y)
        if hmac.compare_digest(k, NEUTRAL):
            raise InvalidPoint("CPace peer share is a low-order point")
        if self._role is CPaceRole.INITIATOR:
            transcript = transcript_ir(self._share, self._ad, peer_y, peer_ad)
        elif self._role is CPaceRole.RESPONDER:
            transcript = transcript_ir(peer_y, peer_ad, self._share, self._ad)
        else:
            transcript = transcript_oc(self._share, self._ad, peer_y, peer_ad)
        self._scalar = None  # ephemeral: never needed again
        self._peer = (peer_y, peer_ad)
        self._transcript = transcript
        self._isk = derive_isk(self._sid, k, transcript)
        self._mac_key = confirmation_mac_key(self._sid, self._isk)
        return self._isk

    @property
    def isk(self) -> bytes:
        """The intermediate session key (after :meth:`receive`).

        Feed it to a KDF before use; confirm the peer first
        (:meth:`verify_confirmation_tag`) when explicit authentication matters.
        """
        self._require("isk")
        return self._isk

    @property
    def peer_ad(self) -> bytes:
        """The associated data the peer sent (after :meth:`receive`).

        Authenticated only once :meth:`verify_confirmation_tag` has passed.
        """
        self._require("peer_ad")
        assert self._peer is not None
        return self._peer[1]

    def confirmation_tag(self) -> bytes:
        """Our key-confirmation tag: ``HMAC-SHA512(mac_key, lv_cat(Y, AD))``."""
        self._require("confirmation_tag")
        return confirmation_tag(self._mac_key, self._share, self._ad)

    def verify_confirmation_tag(self, tag: bytes) -> None:
        """Check the peer's tag in constant time; raise :class:`HandshakeError` if wrong.

        A wrong tag means a wrong password (or a tampered run): the run is
        FAILED and its ISK is forgotten.
        """
        self._require("verify_confirmation_tag")
        if not isinstance(tag, bytes):
            raise LocalProtocolError("confirmation tag must be bytes")
        assert self._peer is not None
        expected = confirmation_tag(self._mac_key, *self._peer)
        if not hmac.compare_digest(expected, tag):
            self._advance("verify_failed")
            raise HandshakeError("CPace key confirmation failed")
        self._advance("verify_ok")

    def sid_output(self) -> bytes:
        """The draft's optional session id: ``SHA-512("CPaceSidOutput" || transcript)``."""
        self._require("sid_output")
        return sid_output(self._transcript)
