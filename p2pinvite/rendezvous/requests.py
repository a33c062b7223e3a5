"""The sealed relay request: "meet me at the transit relay" (docs/RENDEZVOUS.md §4).

A guest that has not reached the host directly after a head start puts one
of these in the mailbox; the host answers by connecting to the relay it
announced in its candidates. The plaintext is canonical msgpack::

    {"v": 1, "nonce": <16 random bytes>, "at": <unix seconds>}

sealed like the candidates (:mod:`.candidates`) under the rendezvous'
sealing key, with its own associated data::

    box = nonce12 || ChaCha20-Poly1305(key, nonce12, plaintext, ad)
    ad  = "p2pinvite/rendezvous/v1/relay-request" || 0x00 || sender's side

Each request names its own relay token, :func:`attempt_token`: HKDF-SHA256
of the rendezvous' relay token with the request's nonce. Two guests of one
invitation (they share a side) therefore never meet each other's attempt at
the relay, which drops every other waiting connection of a token once a pair
matches. ``at`` lets the host skip requests the mailbox replays from an
earlier session (it stores them): older than :data:`MAX_REQUEST_AGE` seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import BadTag, DecodeError, LocalProtocolError
from ..wire import expect_bytes, expect_int, expect_map, pack, unpack
from .names import LABEL_PREFIX

__all__ = [
    "MAX_REQUEST_AGE",
    "RELAY_PHASE",
    "RelayRequest",
    "attempt_token",
    "open_relay_request",
    "seal_relay_request",
]

#: The mailbox phase of a relay request.
RELAY_PHASE: Final = "relay"
#: A host ignores requests older than this (seconds): replays of a past session.
MAX_REQUEST_AGE: Final = 120
_VERSION: Final = 1
_NONCE: Final = 16
_BOX_NONCE: Final = 12
_TAG: Final = 16
_MAX_BOX: Final = 128
_AD_LABEL: Final = LABEL_PREFIX + b"relay-request"
_TOKEN_LABEL: Final = LABEL_PREFIX + b"relay-attempt"


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """One request: its *nonce* (names the relay attempt) and when it was made."""

    nonce: bytes
    at: int

    @classmethod
    def new(cls, now: float) -> RelayRequest:
        """A fresh request made at *now* (unix seconds)."""
        return cls(os.urandom(_NONCE), int(now))


def attempt_token(relay_token: bytes, nonce: bytes) -> bytes:
    """The relay token of the attempt *nonce* names (32 bytes, hex on the relay's line)."""
    if len(relay_token) != 32 or len(nonce) != _NONCE:
        raise LocalProtocolError("a relay token is 32 bytes and a request nonce 16")
    return HKDF(hashes.SHA256(), 32, salt=None, info=_TOKEN_LABEL + b"\x00" + nonce
                ).derive(relay_token)


def _ad(side: str) -> bytes:
    return _AD_LABEL + b"\x00" + side.encode("ascii")


def seal_relay_request(key: bytes, request: RelayRequest, *, sender_side: str) -> bytes:
    """*request* sealed under the rendezvous' sealing *key*, as written by *sender_side*."""
    if len(key) != 32 or len(request.nonce) != _NONCE or not 0 <= request.at < 2**64:
        raise LocalProtocolError("a relay request needs a 32-byte key and a 16-byte nonce")
    nonce = os.urandom(_BOX_NONCE)
    plain = pack({"v": _VERSION, "nonce": request.nonce, "at": request.at})
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plain, _ad(sender_side))


def open_relay_request(key: bytes, box: bytes, *, sender_side: str) -> RelayRequest:
    """Open a request written by *sender_side* (the side we expect, not the one claimed)."""
    if not isinstance(box, bytes) or not _BOX_NONCE + _TAG <= len(box) <= _MAX_BOX:
        raise DecodeError(f"a sealed relay request is {_BOX_NONCE + _TAG}..{_MAX_BOX} bytes")
    try:
        plain = ChaCha20Poly1305(key).decrypt(box[:_BOX_NONCE], box[_BOX_NONCE:],
                                              _ad(sender_side))
    except InvalidTag:
        raise BadTag("the relay request does not open: another rendezvous or side") from None
    m = expect_map(unpack(plain, max_size=_MAX_BOX, max_items=3), "relay request")
    if set(m) != {"v", "nonce", "at"} or expect_int(m, "v") != _VERSION:
        raise DecodeError("a relay request is {v: 1, nonce, at}")
    return RelayRequest(expect_bytes(m, "nonce", size=_NONCE), expect_int(m, "at"))
