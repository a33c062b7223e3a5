"""The Noise Protocol Framework (revision 34), sans-IO, on ``cryptography``.

Theory of operation
-------------------
A handshake is a fixed list of *message patterns*, each a list of *tokens*
(``e``, ``s``, ``ee``, ``es``, ``se``, ``ss``, ``psk``), sent alternately by
the initiator and the responder, optionally preceded by *pre-messages* (public
keys each side already knows). The patterns below are data: :data:`PATTERNS`
maps a name such as ``"XX"`` to its pre-messages and messages, exactly as the
Noise specification writes them (sections 7.4, 7.5 and 18). ``psk``
modifiers (``psk0``, ``psk1``, ...; joined with ``+``) are applied to any
pattern at construction time (section 9).

:class:`HandshakeState` walks those tokens. Bytes go in through
:meth:`HandshakeState.read_message`, bytes come out of
:meth:`HandshakeState.write_message`; nothing here does I/O or knows about
trio. After the last message :meth:`HandshakeState.split` yields the two
transport :class:`CipherState` objects and :meth:`HandshakeState.transport`
wraps the pair for this side as a :class:`NoiseTransport`.

The handshake state machine is strict: calls out of turn raise
:class:`~p2pinvite.errors.LocalProtocolError`, and any error during a read or
write *kills* the handshake (every later call raises LocalProtocolError), so
a half-applied message can never be continued or split into keys.

Supported names: ``Noise_<pattern>[<modifiers>]_25519_<cipher>_<hash>`` with
cipher ``ChaChaPoly`` or ``AESGCM`` and hash ``BLAKE2b``, ``BLAKE2s``,
``SHA256`` or ``SHA512``. Anything else raises :class:`UnsupportedProtocol`.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..errors import (
    BadTag,
    DecodeError,
    FrameTooLarge,
    HandshakeError,
    InvalidKey,
    InvalidPoint,
    LocalProtocolError,
    NonceExhausted,
)

__all__ = [
    "DHLEN",
    "MAX_MESSAGE",
    "MAX_PLAINTEXT",
    "PATTERNS",
    "TAG",
    "BytesLike",
    "CipherState",
    "HandshakeAuthFailed",
    "HandshakePattern",
    "HandshakeState",
    "NoiseTransport",
    "ProtocolName",
    "SymmetricState",
    "UnsupportedProtocol",
    "generate_private_key",
    "parse_protocol_name",
    "public_key",
]

#: Largest Noise message (handshake or transport), in bytes (spec section 3).
MAX_MESSAGE: Final = 65535
#: Bytes of authentication tag added by every encryption with a key.
TAG: Final = 16
#: Largest plaintext that fits one transport message.
MAX_PLAINTEXT: Final = MAX_MESSAGE - TAG
#: Length of an X25519 public key, private key and shared secret.
DHLEN: Final = 32
#: Nonce 2**64-1 is reserved (spec section 5.1); reaching it ends the session.
_MAX_NONCE: Final = 2**64 - 1
_ZEROS32: Final = bytes(32)


class UnsupportedProtocol(LocalProtocolError):
    """A protocol name this engine does not implement (or that is malformed)."""


class HandshakeAuthFailed(HandshakeError, BadTag):
    """A handshake message failed authentication.

    Typical causes: a wrong pre-shared key, a responder static key that is not
    the one the initiator expected, or tampering. It is both a
    :class:`~p2pinvite.errors.HandshakeError` and a
    :class:`~p2pinvite.errors.BadTag`, so either may be caught.
    """


# --------------------------------------------------------------------------
# Handshake patterns (data)
# --------------------------------------------------------------------------

_Tokens = tuple[str, ...]
#: What the encryption functions accept as data.
BytesLike = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """A handshake pattern: pre-message tokens per side and the message list.

    ``messages[i]`` is sent by the initiator when ``i`` is even and by the
    responder when it is odd (Noise patterns always alternate).
    """

    name: str
    initiator_pre: _Tokens
    responder_pre: _Tokens
    messages: tuple[_Tokens, ...]

    @property
    def one_way(self) -> bool:
        """True for the one-way patterns (a single initiator message)."""
        return len(self.messages) == 1


def _p(spec: str) -> tuple[_Tokens, _Tokens, tuple[_Tokens, ...]]:
    """Parse the spec's notation: ``"-> s <- s ... -> e, es; <- e, ee"``.

    Pre-messages come before ``...``; messages are separated by ``;``.
    """
    pre, _, body = spec.rpartition("...")
    ipre: _Tokens = ()
    rpre: _Tokens = ()
    for part in pre.split(";"):
        part = part.strip()
        if not part:
            continue
        arrow, toks = part[:2], tuple(t.strip() for t in part[2:].split(","))
        if arrow == "->":
            ipre = toks
        else:
            rpre = toks
    msgs: list[_Tokens] = []
    for i, part in enumerate(body.split(";")):
        part = part.strip()
        arrow = part[:2]
        assert arrow == ("->" if i % 2 == 0 else "<-"), spec  # patterns alternate
        msgs.append(tuple(t.strip() for t in part[2:].split(",")))
    return ipre, rpre, tuple(msgs)


# Copied token for token from the Noise spec, rev. 34: one-way (7.4),
# fundamental interactive (7.5) and deferred (18.1) patterns.
_PATTERN_TEXT: Final[dict[str, str]] = {
    # one-way
    "N": "<- s ... -> e, es",
    "K": "-> s; <- s ... -> e, es, ss",
    "X": "<- s ... -> e, es, s, ss",
    # fundamental interactive
    "NN": "... -> e; <- e, ee",
    "NK": "<- s ... -> e, es; <- e, ee",
    "NX": "... -> e; <- e, ee, s, es",
    "XN": "... -> e; <- e, ee; -> s, se",
    "XK": "<- s ... -> e, es; <- e, ee; -> s, se",
    "XX": "... -> e; <- e, ee, s, es; -> s, se",
    "KN": "-> s ... -> e; <- e, ee, se",
    "KK": "-> s; <- s ... -> e, es, ss; <- e, ee, se",
    "KX": "-> s ... -> e; <- e, ee, se, s, es",
    "IN": "... -> e, s; <- e, ee, se",
    "IK": "<- s ... -> e, es, s, ss; <- e, ee, se",
    "IX": "... -> e, s; <- e, ee, se, s, es",
    # deferred
    "NK1": "<- s ... -> e; <- e, ee, es",
    "NX1": "... -> e; <- e, ee, s; -> es",
    "X1N": "... -> e; <- e, ee; -> s; <- se",
    "X1K": "<- s ... -> e, es; <- e, ee; -> s; <- se",
    "XK1": "<- s ... -> e; <- e, ee, es; -> s, se",
    "X1K1": "<- s ... -> e; <- e, ee, es; -> s; <- se",
    "X1X": "... -> e; <- e, ee, s, es; -> s; <- se",
    "XX1": "... -> e; <- e, ee, s; -> es, s, se",
    "X1X1": "... -> e; <- e, ee, s; -> es, s; <- se",
    "K1N": "-> s ... -> e; <- e, ee; -> se",
    "K1K": "-> s; <- s ... -> e, es; <- e, ee; -> se",
    "KK1": "-> s; <- s ... -> e; <- e, ee, se, es",
    "K1K1": "-> s; <- s ... -> e; <- e, ee, es; -> se",
    "K1X": "-> s ... -> e; <- e, ee, s, es; -> se",
    "KX1": "-> s ... -> e; <- e, ee, se, s; -> es",
    "K1X1": "-> s ... -> e; <- e, ee, s; -> se, es",
    "I1N": "... -> e, s; <- e, ee; -> se",
    "I1K": "<- s ... -> e, es, s; <- e, ee; -> se",
    "IK1": "<- s ... -> e, s; <- e, ee, se, es",
    "I1K1": "<- s ... -> e, s; <- e, ee, es; -> se",
    "I1X": "... -> e, s; <- e, ee, s, es; -> se",
    "IX1": "... -> e, s; <- e, ee, se, s; -> es",
    "I1X1": "... -> e, s; <- e, ee, s; -> se, es",
}

#: Every base pattern this engine knows, by name.
PATTERNS: Final[dict[str, HandshakePattern]] = {
    name: HandshakePattern(name, *_p(text)) for name, text in _PATTERN_TEXT.items()
}


def _apply_psk(pattern: HandshakePattern, positions: Sequence[int]) -> HandshakePattern:
    """Insert ``psk`` tokens (spec 9.2): psk0 starts message 1, pskN ends message N."""
    msgs = [list(m) for m in pattern.messages]
    for pos in positions:
        if pos == 0:
            msgs[0].insert(0, "psk")
        elif pos <= len(msgs):
            msgs[pos - 1].append("psk")
        else:
            raise UnsupportedProtocol(
                f"psk{pos} does not fit pattern {pattern.name} ({len(msgs)} messages)"
            )
    mods = "+".join(f"psk{p}" for p in positions)
    return HandshakePattern(
        pattern.name + mods, pattern.initiator_pre, pattern.responder_pre,
        tuple(tuple(m) for m in msgs),
    )


# --------------------------------------------------------------------------
# Crypto functions (spec section 4)
# --------------------------------------------------------------------------

_AeadFactory = Callable[[bytes], ChaCha20Poly1305 | AESGCM]


def _chacha_nonce(n: int) -> bytes:
    return struct.pack("<4xQ", n)


def _aesgcm_nonce(n: int) -> bytes:
    return struct.pack(">4xQ", n)


@dataclass(frozen=True, slots=True)
class _Cipher:
    name: str
    factory: _AeadFactory
    nonce: Callable[[int], bytes]


class _Digest(Protocol):
    def digest(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _Hash:
    name: str
    new: Callable[[bytes], _Digest]
    hashlen: int
    blocklen: int


_CIPHERS: Final = {
    "ChaChaPoly": _Cipher("ChaChaPoly", ChaCha20Poly1305, _chacha_nonce),
    "AESGCM": _Cipher("AESGCM", AESGCM, _aesgcm_nonce),
}
_HASHES: Final = {
    "BLAKE2b": _Hash("BLAKE2b", hashlib.blake2b, 64, 128),
    "BLAKE2s": _Hash("BLAKE2s", hashlib.blake2s, 32, 64),
    "SHA256": _Hash("SHA256", hashlib.sha256, 32, 64),
    "SHA512": _Hash("SHA512", hashlib.sha512, 64, 128),
}

# HMAC (RFC 2104) written out: for the short inputs of a handshake this is
# measurably faster than the hmac module's object dance, and it makes the
# BLOCKLEN of spec section 4.3 explicit.
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


def _hmac(h: _Hash, key: bytes, data: bytes) -> bytes:
    if len(key) > h.blocklen:  # never happens with Noise inputs; kept for correctness
        key = h.new(key).digest()
    key = key.ljust(h.blocklen, b"\x00")
    inner = h.new(key.translate(_IPAD) + data).digest()
    return h.new(key.translate(_OPAD) + inner).digest()


def _hkdf(h: _Hash, ck: bytes, ikm: bytes, n: int) -> tuple[bytes, ...]:
    """HKDF of spec section 4.3 with *n* (2 or 3) outputs of HASHLEN bytes."""
    temp = _hmac(h, ck, ikm)
    o1 = _hmac(h, temp, b"\x01")
    o2 = _hmac(h, temp, o1 + b"\x02")
    if n == 2:
        return o1, o2
    return o1, o2, _hmac(h, temp, o2 + b"\x03")


@dataclass(frozen=True, slots=True)
class ProtocolName:
    """A parsed protocol name such as ``Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b``."""

    name: str
    pattern: HandshakePattern
    psk_positions: tuple[int, ...]
    cipher: str
    hash: str


_NAME_RE: Final = re.compile(
    r"Noise_(?P<base>[A-Z][A-Z0-9]*)(?P<mods>[a-z][a-z0-9+]*)?"
    r"_(?P<dh>[^_]+)_(?P<cipher>[^_]+)_(?P<hash>[^_]+)"
)
_PSK_RE: Final = re.compile(r"psk([0-9]{1,2})")


@lru_cache(maxsize=64)
def parse_protocol_name(name: str) -> ProtocolName:
    """Parse and validate a full Noise protocol name.

    Raises :class:`UnsupportedProtocol` for malformed names and for any
    pattern, modifier, DH, cipher or hash this engine does not implement.
    """
    m = _NAME_RE.fullmatch(name)
    if m is None:
        raise UnsupportedProtocol(f"not a Noise protocol name: {name!r}")
    base = PATTERNS.get(m["base"])
    if base is None:
        raise UnsupportedProtocol(f"unsupported handshake pattern {m['base']!r}")
    positions: list[int] = []
    for mod in (m["mods"] or "").split("+") if m["mods"] else ():
        pm = _PSK_RE.fullmatch(mod)
        if pm is None:
            raise UnsupportedProtocol(f"unsupported pattern modifier {mod!r}")
        pos = int(pm[1])
        if pos in positions:
            raise UnsupportedProtocol(f"duplicate modifier {mod!r}")
        positions.append(pos)
    if m["dh"] != "25519":
        raise UnsupportedProtocol(f"unsupported DH function {m['dh']!r}")
    if m["cipher"] not in _CIPHERS:
        raise UnsupportedProtocol(f"unsupported cipher {m['cipher']!r}")
    if m["hash"] not in _HASHES:
        raise UnsupportedProtocol(f"unsupported hash {m['hash']!r}")
    pattern = _apply_psk(base, positions) if positions else base
    return ProtocolName(name, pattern, tuple(positions), m["cipher"], m["hash"])


# --------------------------------------------------------------------------
# X25519 helpers
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _KeyPair:
    private: X25519PrivateKey = field(repr=False)
    public: bytes


def _check_key(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != DHLEN:
        raise InvalidKey(f"{what} must be {DHLEN} bytes")
    return bytes(value)


# A device has one static key and uses it for every connection; deriving its
# public half costs a scalar multiplication, so remember the last few. The
# cache holds nothing the caller does not already hold.
@lru_cache(maxsize=16)
def _static_keypair(private: bytes) -> _KeyPair:
    sk = X25519PrivateKey.from_private_bytes(private)
    return _KeyPair(sk, sk.public_key().public_bytes_raw())


def _fresh_keypair() -> _KeyPair:
    sk = X25519PrivateKey.generate()
    return _KeyPair(sk, sk.public_key().public_bytes_raw())


def generate_private_key() -> bytes:
    """A new random X25519 private key (32 raw bytes)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    """The X25519 public key (32 raw bytes) of a 32-byte private key."""
    return _static_keypair(_check_key(private, "private key")).public


def _dh(kp: _KeyPair, public: bytes) -> bytes:
    try:
        return kp.private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # OpenSSL refuses an all-zero shared secret: the peer sent a
        # low-order point, which would make the "secret" public.
        raise InvalidPoint("peer public key is a low-order point") from None


# --------------------------------------------------------------------------
# CipherState, SymmetricState (spec sections 5.1, 5.2)
# --------------------------------------------------------------------------


class CipherState:
    """A key (or none) and a 64-bit nonce counter; one AEAD object per key."""

    __slots__ = ("_aead", "_cipher", "_k", "n")

    def __init__(self, cipher: str = "ChaChaPoly", k: bytes | None = None) -> None:
        c = _CIPHERS.get(cipher)
        if c is None:
            raise UnsupportedProtocol(f"unsupported cipher {cipher!r}")
        self._cipher = c
        self._k: bytes | None = None
        self._aead: ChaCha20Poly1305 | AESGCM | None = None
        self.n = 0
        if k is not None:
            self.initialize_key(k)

    def __repr__(self) -> str:
        return f"CipherState({self._cipher.name}, has_key={self.has_key}, n={self.n})"

    def initialize_key(self, k: bytes | None) -> None:
        """Set a new key (or none) and reset the nonce to zero."""
        if k is not None and len(k) != 32:
            raise InvalidKey("cipher key must be 32 bytes")
        self._k = k
        self._aead = None if k is None else self._cipher.factory(k)
        self.n = 0

    @property
    def has_key(self) -> bool:
        """Whether a key is set (without one, encryption is the identity)."""
        return self._k is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: BytesLike) -> bytes:
        """Encrypt *plaintext* with associated data *ad*, then advance the nonce."""
        aead = self._aead
        if aead is None:
            return bytes(plaintext)
        n = self.n
        if n >= _MAX_NONCE:
            raise NonceExhausted("cipher nonce exhausted; the session must end")
        out = aead.encrypt(self._cipher.nonce(n), plaintext, ad)
        self.n = n + 1
        return out

    def encrypt_with_ad_into(self, ad: bytes, plaintext: BytesLike, out: memoryview) -> int:
        """Like :meth:`encrypt_with_ad`, writing into *out* (exactly len + 16 bytes).

        Saves an allocation and a copy when the caller assembles frames
        itself. Needs a key.
        """
        aead = self._aead
        if aead is None:
            raise LocalProtocolError("encrypt_with_ad_into needs a key")
        n = self.n
        if n >= _MAX_NONCE:
            raise NonceExhausted("cipher nonce exhausted; the session must end")
        written = aead.encrypt_into(self._cipher.nonce(n), plaintext, ad, out)
        self.n = n + 1
        return written

    def decrypt_with_ad(self, ad: bytes, ciphertext: BytesLike) -> bytes:
        """Authenticate and decrypt; the nonce advances only on success."""
        aead = self._aead
        if aead is None:
            return bytes(ciphertext)
        n = self.n
        if n >= _MAX_NONCE:
            raise NonceExhausted("cipher nonce exhausted; the session must end")
        if len(ciphertext) < TAG:
            raise DecodeError("ciphertext shorter than its authentication tag")
        try:
            out = aead.decrypt(self._cipher.nonce(n), ciphertext, ad)
        except InvalidTag:
            raise BadTag("message failed authentication") from None
        self.n = n + 1
        return out

    def rekey(self) -> None:
        """Replace the key with ENCRYPT(k, maxnonce, "", zeros) (spec 4.2, 11.3)."""
        if self._aead is None:
            raise LocalProtocolError("cannot rekey a cipher state without a key")
        k = self._aead.encrypt(self._cipher.nonce(_MAX_NONCE), _ZEROS32, b"")[:32]
        n = self.n
        self.initialize_key(k)
        self.n = n


class SymmetricState:
    """Chaining key, handshake hash and the handshake's CipherState."""

    __slots__ = ("_hash", "ck", "cs", "h")

    def __init__(self, protocol_name: str, cipher: str, hash_name: str) -> None:
        self._hash = _HASHES[hash_name]
        name = protocol_name.encode("ascii")
        hl = self._hash.hashlen
        self.h = name.ljust(hl, b"\x00") if len(name) <= hl else self._hash.new(name).digest()
        self.ck = self.h
        self.cs = CipherState(cipher)

    def __repr__(self) -> str:
        return f"SymmetricState({self._hash.name}, h={self.h.hex()})"

    @property
    def hashlen(self) -> int:
        """HASHLEN of the chosen hash function."""
        return self._hash.hashlen

    def mix_key(self, ikm: bytes) -> None:
        """MixKey: derive a new chaining key and cipher key from *ikm*."""
        self.ck, temp_k = _hkdf(self._hash, self.ck, ikm, 2)
        self.cs.initialize_key(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        """MixHash: h = HASH(h || data)."""
        self.h = self._hash.new(self.h + data).digest()

    def mix_key_and_hash(self, ikm: bytes) -> None:
        """MixKeyAndHash, used by ``psk`` tokens."""
        self.ck, temp_h, temp_k = _hkdf(self._hash, self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cs.initialize_key(temp_k[:32])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """Encrypt with h as associated data, then mix the ciphertext into h."""
        ct = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Decrypt with h as associated data, then mix the ciphertext into h."""
        pt = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[CipherState, CipherState]:
        """Derive the two transport cipher states (initiator->responder first)."""
        k1, k2 = _hkdf(self._hash, self.ck, b"", 2)
        c = self.cs._cipher.name
        return CipherState(c, k1[:32]), CipherState(c, k2[:32])


# --------------------------------------------------------------------------
# HandshakeState (spec section 5.3)
# --------------------------------------------------------------------------

_DH_TOKENS: Final = frozenset({"ee", "es", "se", "ss"})


class HandshakeState:
    """One side of a Noise handshake; bytes in, bytes out.

    *s* is our static private key, *e* a fixed ephemeral private key (only
    for test vectors; normally generated), *rs* / *re* the peer's public keys
    known in advance (pre-messages), *psks* one 32-byte key per ``psk``
    modifier in the order the modifiers appear in *protocol_name*.
    """

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        s: bytes | None = None,
        e: bytes | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        psks: Sequence[bytes] = (),
    ) -> None:
        self.protocol = parse_protocol_name(protocol_name)
        self.initiator = initiator
        pattern = self.protocol.pattern
        self._psk_mode = bool(self.protocol.psk_positions)
        if len(psks) != len(self.protocol.psk_positions):
            raise InvalidKey(
                f"{protocol_name} needs {len(self.protocol.psk_positions)} PSK(s), "
                f"got {len(psks)}"
            )
        self._psks = [_check_key(p, "PSK") for p in psks]
        self._s = None if s is None else _static_keypair(_check_key(s, "static key"))
        self._e: _KeyPair | None = None
        if e is not None:
            ek = X25519PrivateKey.from_private_bytes(_check_key(e, "ephemeral key"))
            self._e = _KeyPair(ek, ek.public_key().public_bytes_raw())
        self._rs = None if rs is None else _check_key(rs, "remote static key")
        self._re = None if re is None else _check_key(re, "remote ephemeral key")
        self._check_required_keys()

        self._ss = SymmetricState(protocol_name, self.protocol.cipher, self.protocol.hash)
        self._ss.mix_hash(bytes(prologue))
        # Pre-messages are hashed in pattern order (initiator's first),
        # whichever side we are.
        for pre, local in (
            (pattern.initiator_pre, initiator),
            (pattern.responder_pre, not initiator),
        ):
            for tok in pre:
                key = self._pre_key(tok, local)
                self._ss.mix_hash(key)
                if tok == "e" and self._psk_mode:
                    self._ss.mix_key(key)
        self._index = 0
        self._dead = False
        self._split: tuple[CipherState, CipherState] | None = None

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return (f"HandshakeState({self.protocol.name}, {role}, "
                f"message={self._index}/{len(self.protocol.pattern.messages)})")

    # -- construction helpers ---------------------------------------------

    def _check_required_keys(self) -> None:
        """Refuse early when a key the pattern needs was not supplied."""
        p = self.protocol.pattern
        me = "->" if self.initiator else "<-"
        my_pre = p.initiator_pre if self.initiator else p.responder_pre
        their_pre = p.responder_pre if self.initiator else p.initiator_pre
        sends_s = "s" in my_pre or any(
            "s" in msg for i, msg in enumerate(p.messages) if (i % 2 == 0) == self.initiator
        )
        if sends_s and self._s is None:
            raise InvalidKey(f"{p.name} needs our static key ({me} s)")
        if "s" in their_pre and self._rs is None:
            raise InvalidKey(f"{p.name} needs the remote static key in advance")
        if "e" in my_pre and self._e is None:
            raise InvalidKey(f"{p.name} needs our ephemeral key in advance")
        if "e" in their_pre and self._re is None:
            raise InvalidKey(f"{p.name} needs the remote ephemeral key in advance")

    def _pre_key(self, tok: str, local: bool) -> bytes:
        if tok == "s":
            if local:
                assert self._s is not None
                return self._s.public
            assert self._rs is not None
            return self._rs
        if tok == "e":
            if local:
                assert self._e is not None
                return self._e.public
            assert self._re is not None
            return self._re
        raise UnsupportedProtocol(f"bad pre-message tok {tok!r}")  # pragma: no cover

    # -- state ------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return not self._dead and self._index >= len(self.protocol.pattern.messages)

    @property
    def our_turn(self) -> bool:
        """True when the next call must be :meth:`write_message`."""
        return (self._index % 2 == 0) == self.initiator

    @property
    def message_index(self) -> int:
        """How many handshake messages have been written or read so far."""
        return self._index

    @property
    def message_count(self) -> int:
        """Number of handshake messages in this pattern."""
        return len(self.protocol.pattern.messages)

    @property
    def handshake_hash(self) -> bytes:
        """The handshake hash ``h`` (final once :attr:`complete`): a channel binding."""
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known."""
        return self._rs

    @property
    def remote_ephemeral(self) -> bytes | None:
        """The peer's ephemeral public key, once known."""
        return self._re

    def _begin(self, write: bool) -> tuple[str, ...]:
        if self._dead:
            raise LocalProtocolError("handshake failed earlier and cannot continue")
        if self._index >= len(self.protocol.pattern.messages):
            raise LocalProtocolError("handshake already complete")
        if self.our_turn != write:
            raise LocalProtocolError(
                "it is our turn to write" if self.our_turn else "it is the peer's turn to write"
            )
        return self.protocol.pattern.messages[self._index]

    def _dh_for(self, token: str) -> bytes:
        # es = DH(initiator e, responder s) etc.; each side picks its half.
        first, second = token[0], token[1]
        if not self.initiator:
            first, second = second, first
        local = self._e if first == "e" else self._s
        remote = self._re if second == "e" else self._rs
        if local is None or remote is None:
            raise LocalProtocolError(f"token {token!r} before its keys are known")
        return _dh(local, remote)

    def _write_size(self, tokens: tuple[str, ...], payload_len: int) -> int:
        """The size of the message *tokens* + payload will produce."""
        has_key = self._ss.cs.has_key
        size = 0
        for t in tokens:
            if t == "e":
                size += DHLEN
                has_key = has_key or self._psk_mode
            elif t == "s":
                size += DHLEN + (TAG if has_key else 0)
            else:
                has_key = True
        return size + payload_len + (TAG if has_key else 0)

    # -- messages ---------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message carrying *payload*.

        The payload is encrypted once a key has been mixed in; before that it
        travels in clear (e.g. the first message of ``XX``).
        """
        tokens = self._begin(write=True)
        if self._write_size(tokens, len(payload)) > MAX_MESSAGE:
            raise LocalProtocolError(f"handshake message would exceed {MAX_MESSAGE} bytes")
        ss = self._ss
        try:
            out: list[bytes] = []
            for t in tokens:
                if t == "e":
                    if self._e is None:
                        self._e = _fresh_keypair()
                    out.append(self._e.public)
                    ss.mix_hash(self._e.public)
                    if self._psk_mode:
                        ss.mix_key(self._e.public)
                elif t == "s":
                    assert self._s is not None  # checked at construction
                    out.append(ss.encrypt_and_hash(self._s.public))
                elif t in _DH_TOKENS:
                    ss.mix_key(self._dh_for(t))
                elif t == "psk":
                    ss.mix_key_and_hash(self._psks.pop(0))
            out.append(ss.encrypt_and_hash(bytes(payload)))
        except BaseException:
            self._dead = True
            raise
        self._index += 1
        return b"".join(out)

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message; return its payload.

        Errors: :class:`~p2pinvite.errors.FrameTooLarge` above 65535 bytes,
        :class:`~p2pinvite.errors.DecodeError` when truncated,
        :class:`HandshakeAuthFailed` when authentication fails,
        :class:`~p2pinvite.errors.InvalidPoint` for a low-order key. After any
        error the handshake is dead.
        """
        tokens = self._begin(write=False)
        ss = self._ss
        try:
            if len(message) > MAX_MESSAGE:
                raise FrameTooLarge(f"handshake message of {len(message)} bytes")
            msg = bytes(message)
            pos = 0
            for t in tokens:
                if t == "e":
                    if len(msg) - pos < DHLEN:
                        raise DecodeError("handshake message truncated (ephemeral key)")
                    self._re = msg[pos : pos + DHLEN]
                    pos += DHLEN
                    ss.mix_hash(self._re)
                    if self._psk_mode:
                        ss.mix_key(self._re)
                elif t == "s":
                    n = DHLEN + (TAG if ss.cs.has_key else 0)
                    if len(msg) - pos < n:
                        raise DecodeError("handshake message truncated (static key)")
                    self._rs = self._decrypt(msg[pos : pos + n])
                    pos += n
                elif t in _DH_TOKENS:
                    ss.mix_key(self._dh_for(t))
                elif t == "psk":
                    ss.mix_key_and_hash(self._psks.pop(0))
            payload = self._decrypt(msg[pos:])
        except BaseException:
            self._dead = True
            raise
        self._index += 1
        return payload

    def _decrypt(self, ct: bytes) -> bytes:
        try:
            return self._ss.decrypt_and_hash(ct)
        except BadTag:
            raise HandshakeAuthFailed(
                "handshake message failed authentication (wrong key or PSK, or tampered)"
            ) from None

    # -- after the handshake ----------------------------------------------

    def split(self) -> tuple[CipherState, CipherState]:
        """The transport cipher states ``(initiator->responder, responder->initiator)``.

        Repeated calls return the same two objects (never a second copy of a
        key, which would reuse nonces).
        """
        if not self.complete:
            raise LocalProtocolError("handshake not complete")
        if self._split is None:
            self._split = self._ss.split()
        return self._split

    def transport(self) -> NoiseTransport:
        """This side's send and receive ciphers, once the handshake is complete."""
        c1, c2 = self.split()
        one_way = self.protocol.pattern.one_way
        if self.initiator:
            return NoiseTransport(send=c1, recv=None if one_way else c2)
        return NoiseTransport(send=None if one_way else c2, recv=c1)


class NoiseTransport:
    """The transport phase of one side: encrypt outgoing, decrypt incoming messages.

    One-way patterns have only one direction; using the other raises
    :class:`~p2pinvite.errors.LocalProtocolError`.
    """

    __slots__ = ("recv_cipher", "send_cipher")

    def __init__(self, *, send: CipherState | None, recv: CipherState | None) -> None:
        self.send_cipher = send
        self.recv_cipher = recv

    def __repr__(self) -> str:
        return f"NoiseTransport(send={self.send_cipher!r}, recv={self.recv_cipher!r})"

    def encrypt(self, plaintext: BytesLike) -> bytes:
        """Encrypt one transport message (plaintext at most :data:`MAX_PLAINTEXT`)."""
        cs = self.send_cipher
        if cs is None:
            raise LocalProtocolError("this side of a one-way pattern cannot send")
        if len(plaintext) > MAX_PLAINTEXT:
            raise LocalProtocolError(
                f"plaintext of {len(plaintext)} bytes exceeds one Noise message"
            )
        return cs.encrypt_with_ad(b"", plaintext)

    def encrypt_into(self, plaintext: BytesLike, out: memoryview) -> int:
        """:meth:`encrypt` into *out*, which must be exactly ``len(plaintext) + TAG`` bytes."""
        cs = self.send_cipher
        if cs is None:
            raise LocalProtocolError("this side of a one-way pattern cannot send")
        if len(plaintext) > MAX_PLAINTEXT:
            raise LocalProtocolError(
                f"plaintext of {len(plaintext)} bytes exceeds one Noise message"
            )
        if len(out) != len(plaintext) + TAG:
            raise LocalProtocolError("output buffer must be plaintext length + 16 bytes")
        return cs.encrypt_with_ad_into(b"", plaintext, out)

    def decrypt(self, ciphertext: BytesLike) -> bytes:
        """Authenticate and decrypt one transport message."""
        cs = self.recv_cipher
        if cs is None:
            raise LocalProtocolError("this side of a one-way pattern cannot receive")
        if len(ciphertext) > MAX_MESSAGE:
            raise FrameTooLarge(f"transport message of {len(ciphertext)} bytes")
        return cs.decrypt_with_ad(b"", ciphertext)
