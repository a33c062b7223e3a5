"""Sealing a secret to a device's X25519 static key (docs/PROTOCOL.md Part 12 §2).

A *sealed box* carries a secret (a space's swarm secret) to exactly one device:
anyone may seal to a device's Noise static public key, only the holder of its
private key can open it. The construction is the usual ephemeral-static ECIES:

1. the sealer draws an ephemeral X25519 key pair ``(e, E)``;
2. ``shared = X25519(e, R)`` for the recipient's static public key ``R``; an
   all-zero result (a low-order ``R``) is refused;
3. ``key = HKDF-SHA256(ikm=shared, salt=E || R, info=SEAL_INFO || context)``,
   32 bytes: the salt binds both public keys, the info binds what the box is
   for (the caller's *context*: e.g. the space id and the secret's epoch), so a
   box cannot be replayed into another space or epoch;
4. ``box = E || ChaCha20-Poly1305(key, nonce = 12 zero bytes, plaintext,
   associated data = context)``. Every key seals exactly one message (it
   depends on a fresh ``E``), so the fixed nonce is safe.

Pure functions; no I/O. Errors: :class:`~p2pinvite.errors.InvalidKey` for a
key of the wrong size (a caller's mistake), :class:`~p2pinvite.errors.BadTag`
when a box does not open (wrong recipient, wrong context, tampering),
:class:`~p2pinvite.errors.InvalidPoint` for a low-order key, and
:class:`~p2pinvite.errors.DecodeError` for a box too short to be one.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import BadTag, DecodeError, InvalidKey, InvalidPoint

__all__ = ["BOX_OVERHEAD", "SEAL_INFO", "open_sealed", "seal"]

#: Fixed part of the HKDF info (the caller's context follows it).
SEAL_INFO: Final = b"p2pinvite/seal/v1\x00"
#: Bytes a box adds to its plaintext: the ephemeral public key and the AEAD tag.
BOX_OVERHEAD: Final = 32 + 16
_NONCE: Final = bytes(12)
_KEY: Final = 32


def _key(shared: bytes, ephemeral_public: bytes, recipient: bytes, context: bytes) -> bytes:
    if shared == bytes(32):
        raise InvalidPoint("the recipient key is a low-order point")
    return HKDF(hashes.SHA256(), _KEY, salt=ephemeral_public + recipient,
                info=SEAL_INFO + context).derive(shared)


def _exchange(private: X25519PrivateKey, peer: X25519PublicKey) -> bytes:
    try:
        return private.exchange(peer)
    except ValueError:  # OpenSSL refuses an all-zero result itself
        raise InvalidPoint("the other key is a low-order point") from None


def _public(key: bytes, what: str) -> X25519PublicKey:
    if not isinstance(key, bytes) or len(key) != _KEY:
        raise InvalidKey(f"{what} must be {_KEY} bytes")
    return X25519PublicKey.from_public_bytes(key)


def seal(recipient: bytes, plaintext: bytes, *, context: bytes,
         ephemeral: bytes | None = None) -> bytes:
    """Seal *plaintext* to the X25519 public key *recipient*, bound to *context*.

    *ephemeral* fixes the ephemeral private key (test vectors only; never
    reuse one): by default a fresh one is drawn from the OS CSPRNG.
    """
    peer = _public(recipient, "recipient key")
    e = X25519PrivateKey.generate() if ephemeral is None else \
        X25519PrivateKey.from_private_bytes(ephemeral)
    e_pub = e.public_key().public_bytes_raw()
    key = _key(_exchange(e, peer), e_pub, recipient, context)
    return e_pub + ChaCha20Poly1305(key).encrypt(_NONCE, plaintext, context)


def open_sealed(private_key: bytes, box: bytes, *, context: bytes) -> bytes:
    """Open *box* with our X25519 *private_key*; the same *context* it was sealed with."""
    if not isinstance(private_key, bytes) or len(private_key) != _KEY:
        raise InvalidKey(f"private key must be {_KEY} bytes")
    if len(box) < BOX_OVERHEAD:
        raise DecodeError("a sealed box is at least 48 bytes")
    me = X25519PrivateKey.from_private_bytes(private_key)
    e_pub = box[:32]
    key = _key(_exchange(me, _public(e_pub, "ephemeral key")), e_pub,
               me.public_key().public_bytes_raw(), context)
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE, box[32:], context)
    except InvalidTag:
        raise BadTag("the sealed box does not open: not ours, another context, or tampered"
                     ) from None
