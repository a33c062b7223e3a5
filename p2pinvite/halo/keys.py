"""Device keys on disk, one-use signing keys, and the device/static key binding.

Every device has two long-lived keys:

* an Ed25519 **device key**: it names the device in credentials and signs
  everything the device issues on behalf of its identity;
* an X25519 **Noise static key**: the key the device proves in Noise
  handshakes.

The device key signs the static public key (the *binding*, as libp2p binds
its peer key to its transport keys), so a peer that completed a Noise
handshake with static key ``s`` learns which device key stands behind ``s``
from the handshake payload (:meth:`DeviceKeys.binding_proof`,
:func:`verify_binding_proof`). Because the binding signature is deterministic
(Ed25519), it is recomputed on load rather than stored.

Both private keys live in one file, ``<home>/keys/device.key`` (directory
0700, file 0600, replaced atomically), so a crash can never leave one key
without the other. Layout, 144 bytes::

    magic "p2pinvite/keys/1" (16) || ed25519 seed (32) || x25519 private (32)
    || ed25519 public (32) || x25519 public (32)

The public halves are redundant on purpose: on load they must match the ones
derived from the private halves, which catches a truncated, bit-flipped or
foreign file before it signs anything.

Identity keys and space keys are :class:`SigningKey` objects that are never
stored: they sign once and are dropped (docs/PROTOCOL.md Part 8).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..crypto import ed25519
from ..errors import (
    DecodeError,
    HandshakeError,
    InvalidKey,
    KeyFileError,
    SignatureError,
    StorageError,
)
from ..fsutil import atomic_write, ensure_private_dir, read_private
from ..wire import expect_bytes, expect_map, pack, unpack

__all__ = [
    "BINDING_CONTEXT",
    "KEY_FILE_NAME",
    "KEY_FILE_SIZE",
    "DeviceKeys",
    "Signer",
    "SigningKey",
    "load_or_create_device_keys",
    "verify_binding_proof",
    "verify_ed25519",
    "verify_static_binding",
]

#: Domain separation for the device key's signature over the static key.
BINDING_CONTEXT: Final = b"p2pinvite/static-binding/v1\x00"
#: File holding both device private keys, inside ``<home>/keys/``.
KEY_FILE_NAME: Final = "device.key"
_MAGIC: Final = b"p2pinvite/keys/1"
KEY_FILE_SIZE: Final = len(_MAGIC) + 4 * 32
_MAX_PROOF: Final = 256


class Signer(Protocol):
    """Anything that can sign a credential: a one-use key or a device."""

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key that verifies :meth:`sign`."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of *message*."""
        ...


def _ed25519_from_seed(seed: bytes) -> Ed25519PrivateKey:
    if len(seed) != 32:
        raise InvalidKey("an Ed25519 seed is 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def verify_ed25519(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True iff *signature* is a valid Ed25519 signature of *message* by *public_key*.

    Valid under the strict rules of :mod:`p2pinvite.crypto.ed25519` (no
    small-order or non-canonical key or ``R``, ``S`` below L). Never raises
    for bad input: a malformed or refused key or signature is simply invalid.
    """
    try:
        ed25519.verify(public_key, signature, message)
    except SignatureError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 key held only in memory: an identity key or a space key.

    These keys sign once (a genesis and the first credential after it) and are
    then dropped; they are never written to disk.
    """

    public_key: bytes
    _key: Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key from the OS CSPRNG."""
        key = Ed25519PrivateKey.generate()
        return cls(key.public_key().public_bytes_raw(), key)

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key with the given 32-byte seed (vectors, tests, and admission keys a user holds)."""
        key = _ed25519_from_seed(seed)
        return cls(key.public_key().public_bytes_raw(), key)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of *message*."""
        return self._key.sign(message)


def _clamp_x25519(scalar: bytes) -> bytes:
    """The RFC 7748 clamped form of a 32-byte X25519 private key."""
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return bytes(k)


def _binding_message(static_public: bytes) -> bytes:
    return BINDING_CONTEXT + static_public


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    """This device's Ed25519 device key and X25519 Noise static key.

    Build with :meth:`generate`, :meth:`from_private` or
    :func:`load_or_create_device_keys`; the public halves and the binding
    signature are derived, never supplied.
    """

    device_seed: bytes = field(repr=False)
    static_private: bytes = field(repr=False)
    device_public: bytes = field(init=False)
    static_public: bytes = field(init=False)
    static_binding: bytes = field(init=False, repr=False)
    _signer: Ed25519PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.static_private) != 32:
            raise InvalidKey("an X25519 private key is 32 bytes")
        # Keep the static key clamped (RFC 7748): X25519 ignores the clamped bits,
        # so storing them canonical is what lets a flip of one of them be noticed.
        object.__setattr__(self, "static_private", _clamp_x25519(self.static_private))
        signer = _ed25519_from_seed(self.device_seed)
        static = X25519PrivateKey.from_private_bytes(self.static_private)
        static_public = static.public_key().public_bytes_raw()
        object.__setattr__(self, "_signer", signer)
        object.__setattr__(self, "device_public", signer.public_key().public_bytes_raw())
        object.__setattr__(self, "static_public", static_public)
        object.__setattr__(self, "static_binding", signer.sign(_binding_message(static_public)))

    @classmethod
    def generate(cls) -> DeviceKeys:
        """Fresh device and static keys from the OS CSPRNG."""
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        static = X25519PrivateKey.generate().private_bytes_raw()
        return cls(seed, static)

    @classmethod
    def from_private(cls, device_seed: bytes, static_private: bytes) -> DeviceKeys:
        """Keys from their raw 32-byte private halves."""
        return cls(device_seed, static_private)

    @property
    def public_key(self) -> bytes:
        """The device public key (so a device is a :class:`Signer`)."""
        return self.device_public

    def sign(self, message: bytes) -> bytes:
        """Sign *message* with the device key (64 bytes)."""
        return self._signer.sign(message)

    def binding_proof(self) -> bytes:
        """The proof sent in the Noise handshake payload.

        Canonical msgpack map ``{"device_key": bin 32, "static_key": bin 32,
        "sig": bin 64}``; ``sig`` is the device key's signature over
        ``BINDING_CONTEXT || static_key``.
        """
        return pack(
            {
                "device_key": self.device_public,
                "static_key": self.static_public,
                "sig": self.static_binding,
            }
        )

    # -- storage ----------------------------------------------------------------

    def to_file_bytes(self) -> bytes:
        """The 144-byte key file content (secret: never log it)."""
        return (
            _MAGIC
            + self.device_seed
            + self.static_private
            + self.device_public
            + self.static_public
        )

    @classmethod
    def from_file_bytes(cls, data: bytes, *, where: str = "key file") -> DeviceKeys:
        """Parse a key file, checking its size, magic and public halves."""
        if len(data) != KEY_FILE_SIZE:
            raise KeyFileError(f"{where}: expected {KEY_FILE_SIZE} bytes, found {len(data)}")
        if data[: len(_MAGIC)] != _MAGIC:
            raise KeyFileError(f"{where}: not a p2pinvite device key file (bad magic)")
        off = len(_MAGIC)
        seed, static, dev_pub, st_pub = (data[off + 32 * i : off + 32 * (i + 1)] for i in range(4))
        if static != _clamp_x25519(static):
            raise KeyFileError(f"{where}: static key is not in clamped form (corrupted)")
        try:
            keys = cls(seed, static)
        except (InvalidKey, ValueError):
            raise KeyFileError(f"{where}: unusable private key") from None
        if not hmac.compare_digest(keys.device_public, dev_pub) or not hmac.compare_digest(
            keys.static_public, st_pub
        ):
            raise KeyFileError(f"{where}: public keys do not match the private keys (corrupted)")
        return keys

    def save(self, home: Path) -> Path:
        """Write the keys to ``<home>/keys/device.key`` atomically; return the path."""
        keys_dir = _keys_dir(home)
        path = keys_dir / KEY_FILE_NAME
        atomic_write(path, self.to_file_bytes())
        return path

    @classmethod
    def load(cls, home: Path) -> DeviceKeys:
        """Load ``<home>/keys/device.key``; :class:`KeyFileError` if missing or bad."""
        path = _keys_dir(home) / KEY_FILE_NAME
        try:
            data = read_private(path, max_size=KEY_FILE_SIZE)
        except KeyFileError:
            raise
        except StorageError as exc:
            raise KeyFileError(str(exc)) from None
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from None
        return cls.from_file_bytes(data, where=str(path))


def _keys_dir(home: Path) -> Path:
    try:
        ensure_private_dir(home)
        return ensure_private_dir(home / "keys")
    except KeyFileError:
        raise
    except StorageError as exc:
        raise KeyFileError(str(exc)) from None


def load_or_create_device_keys(home: Path) -> DeviceKeys:
    """This device's keys from *home*, generating and saving them on first use.

    A file that exists but is wrong (permissions, size, content) raises
    :class:`KeyFileError`; it is never silently replaced, since replacing it
    would orphan every credential naming the old device key.
    """
    path = _keys_dir(home) / KEY_FILE_NAME
    if not path.exists() and not path.is_symlink():
        keys = DeviceKeys.generate()
        keys.save(home)
        return keys
    return DeviceKeys.load(home)


def verify_static_binding(device_public: bytes, static_public: bytes, signature: bytes) -> None:
    """Check that *device_public* signed *static_public*; :class:`HandshakeError` if not.

    The signature is checked strictly (:func:`p2pinvite.crypto.ed25519.verify`),
    so a small-order or non-canonical device key is refused: under one, a
    single signature would bind every static key. The refusal's cause is the
    :class:`~p2pinvite.errors.SignatureError` saying why.
    """
    if len(static_public) != 32:
        raise HandshakeError("static key is not bound to the claimed device key")
    try:
        ed25519.verify(device_public, signature, _binding_message(static_public))
    except SignatureError as exc:
        raise HandshakeError(
            f"static key is not bound to the claimed device key ({exc})"
        ) from exc


def verify_binding_proof(data: bytes, remote_static: bytes) -> bytes:
    """Check a peer's :meth:`DeviceKeys.binding_proof` against its Noise static key.

    *remote_static* is the static key the handshake authenticated. Returns the
    peer's 32-byte device key; raises :class:`HandshakeError` when the proof is
    malformed, names another static key, or its signature is wrong or made
    under a refused (small-order, non-canonical) device key.
    """
    try:
        m = expect_map(unpack(data, max_size=_MAX_PROOF, max_items=8), "binding proof")
        device = expect_bytes(m, "device_key", size=32)
        static = expect_bytes(m, "static_key", size=32)
        sig = expect_bytes(m, "sig", size=64)
    except DecodeError as exc:
        raise HandshakeError(f"malformed binding proof: {exc}") from None
    if len(m) != 3:
        raise HandshakeError("binding proof has unexpected fields")
    if not hmac.compare_digest(static, remote_static):
        raise HandshakeError("binding proof is for another static key")
    verify_static_binding(device, static, sig)
    return device
