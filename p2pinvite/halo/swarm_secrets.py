"""Swarm secrets: the key material that lets a log's members find and reach each other.

Every log this device holds (its identity's HALO, each space) has a *swarm
secret*: 32 random bytes made with the log by its creator and handed to every
member device it admits, sealed to that device's Noise static key
(:func:`seal_for_device`, docs/PROTOCOL.md Part 12). The member topic's id and
PSK derive from it (:meth:`~p2pinvite.net.topics.Topic.for_swarm`), so only
members can find the swarm on mDNS or finish its handshake. A secret has an
*epoch* (1 for the first); a rotation (a removal) makes a higher one, written
to the log as a ``swarm_key`` entry that commits to it with a *check*
(:func:`key_check`) and seals it to member devices (halo/swarm_keys.py).

On disk: ``<home>/swarm/`` (0700), one file per log, ``<log key hex>.swarm``
(0600), written atomically: the canonical msgpack map
``{"v": 2, "log": <32-byte key>, "epoch": <uint>, "secret": <32 bytes>,
"previous": [[epoch, secret], ...]}``: the secret in force and, newest first,
at most :data:`MAX_PREVIOUS` it replaced (a member still on one of those can
reach us to catch up). Version 1 files (no ``previous``) are read too.
The secrets never appear in a repr or a log line.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..crypto.seal import open_sealed, seal
from ..errors import DecodeError, LocalProtocolError, StorageError
from ..fsutil import atomic_write, ensure_private_dir, read_private
from ..wire import expect_bytes, expect_int, expect_map, pack, unpack

__all__ = [
    "CHECK_CONTEXT",
    "HANDOVER_CONTEXT",
    "MAX_PREVIOUS",
    "SWARM_DIR",
    "SwarmSecret",
    "SwarmSecrets",
    "key_check",
    "open_handover",
    "seal_for_device",
]

#: Directory of the swarm secrets, inside the home.
SWARM_DIR: Final = "swarm"
#: Prefix of the sealed-box context of a handed-over secret (log key and epoch follow).
HANDOVER_CONTEXT: Final = b"p2pinvite/swarm-secret/v1\x00"
#: BLAKE2b personalisation-free key of the check: ``BLAKE2b-128(key=secret, CHECK_CONTEXT)``.
CHECK_CONTEXT: Final = b"p2pinvite/swarm-key-check/v1"
#: Most replaced secrets kept per log: a member off through this many
#: rotations still meets the others on an old topic (docs/PROTOCOL.md Part 12
#: §7.4). Each costs one accept-only topic, and knowing one gains a removed
#: device a Noise handshake that the member check then ends, as for the newest.
MAX_PREVIOUS: Final = 16
_VERSION: Final = 2
_KEY: Final = 32
_MAX_EPOCH: Final = 2**32 - 1
_NAME_RE: Final = re.compile(r"([0-9a-f]{64})\.swarm")


@dataclass(frozen=True, slots=True)
class SwarmSecret:
    """The swarm secret of the log *log* (an identity or space key), at *epoch*."""

    log: bytes
    epoch: int
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.log) != _KEY or len(self.secret) != _KEY:
            raise LocalProtocolError("a log key and a swarm secret are 32 bytes")
        if not 1 <= self.epoch <= _MAX_EPOCH:
            raise LocalProtocolError(f"a swarm epoch is 1..{_MAX_EPOCH}")

    @property
    def check(self) -> bytes:
        """The commitment a ``swarm_key`` entry carries for this secret (:func:`key_check`)."""
        return key_check(self.secret)


def key_check(secret: bytes) -> bytes:
    """``BLAKE2b-128(key=secret, data=CHECK_CONTEXT)``: names a secret without revealing it.

    A device that opens a grant compares what it opened with the check the
    entry carries, so a member cannot hand out a wrong secret for the one in force.
    """
    return hashlib.blake2b(CHECK_CONTEXT, key=secret, digest_size=16).digest()


def _context(log: bytes, epoch: int) -> bytes:
    return HANDOVER_CONTEXT + log + epoch.to_bytes(4, "big")


def seal_for_device(secret: SwarmSecret, device_static: bytes) -> bytes:
    """*secret* sealed to a member device's X25519 static public key (for its admission)."""
    return seal(device_static, secret.secret, context=_context(secret.log, secret.epoch))


def open_handover(static_private: bytes, log: bytes, epoch: int, box: bytes) -> SwarmSecret:
    """Open a secret sealed to us by :func:`seal_for_device`; BadTag if it is not ours."""
    if not 1 <= epoch <= _MAX_EPOCH or len(log) != _KEY:
        raise DecodeError("a handed-over swarm secret names a bad log or epoch")
    plain = open_sealed(static_private, box, context=_context(log, epoch))
    if len(plain) != _KEY:
        raise DecodeError("a handed-over swarm secret is 32 bytes")
    return SwarmSecret(log, epoch, plain)


class SwarmSecrets:
    """The swarm secrets this device holds, one per log. Use :meth:`open`."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._lock = threading.Lock()
        self._cache: dict[bytes, SwarmSecret] = {}
        self._previous: dict[bytes, tuple[SwarmSecret, ...]] = {}

    @classmethod
    def open(cls, home: Path) -> SwarmSecrets:
        """The store under *home* (its directory is made private if needed)."""
        directory = ensure_private_dir(home / SWARM_DIR)
        store = cls(directory)
        for name in os.listdir(directory):
            m = _NAME_RE.fullmatch(name)
            if m is not None:
                current, previous = store._read(directory / name)
                store._cache[current.log] = current
                store._previous[current.log] = previous
        return store

    def _read(self, path: Path) -> tuple[SwarmSecret, tuple[SwarmSecret, ...]]:
        try:
            # The largest container is `previous`; the map has 5 fields.
            m = expect_map(unpack(read_private(path, max_size=2048),
                                  max_items=max(MAX_PREVIOUS, 8)),
                           "swarm secret")
            version = expect_int(m, "v")
            fields = {"v", "log", "epoch", "secret"} | ({"previous"} if version == 2 else set())
            if version not in (1, 2) or set(m) != fields:
                raise DecodeError("unknown swarm secret format")
            log = expect_bytes(m, "log", size=_KEY)
            current = SwarmSecret(log, expect_int(m, "epoch"),
                                  expect_bytes(m, "secret", size=_KEY))
            raw = m.get("previous", [])
            if not isinstance(raw, list) or len(raw) > MAX_PREVIOUS or not all(
                    isinstance(p, list) and len(p) == 2 and isinstance(p[0], int)
                    and isinstance(p[1], bytes) for p in raw):
                raise DecodeError("previous secrets are [[epoch, secret], ...]")
            return current, tuple(SwarmSecret(log, e, sec) for e, sec in raw)
        except (DecodeError, LocalProtocolError) as exc:
            raise StorageError(f"{path.name}: not a swarm secret: {exc}") from None

    def get(self, log: bytes) -> SwarmSecret | None:
        """The current secret of *log*, or None if this device holds none."""
        return self._cache.get(log)

    def all(self) -> list[SwarmSecret]:
        """Every secret held (the one in force of each log)."""
        return list(self._cache.values())

    def previous(self, log: bytes) -> tuple[SwarmSecret, ...]:
        """The secrets of *log* the one in force replaced, newest first."""
        return self._previous.get(log, ())

    def create(self, log: bytes) -> SwarmSecret:
        """Make the first secret (epoch 1) of a log this device creates; durable on return."""
        if log in self._cache:
            raise LocalProtocolError("this log has a swarm secret already")
        return self._store(SwarmSecret(log, 1, secrets.token_bytes(_KEY)))

    def install(self, secret: SwarmSecret) -> bool:
        """Keep *secret* if it is newer than what we hold; durable on return. True if kept.

        The same epoch with another secret is refused (``StorageError``):
        one epoch has one secret.
        """
        held = self._cache.get(secret.log)
        if held is not None:
            if held.epoch > secret.epoch:
                return False
            if held.epoch == secret.epoch:
                if held.secret != secret.secret:
                    raise StorageError("a second swarm secret for the same epoch")
                return False
        self._store(secret)
        return True

    def put(self, secret: SwarmSecret) -> bool:
        """Make *secret* the one in force for its log (the log says it is); durable on return.

        Unlike :meth:`install`, an equal or lower epoch is taken too: two
        concurrent rotations share an epoch, and the log's order, not the
        number, says which is in force. True if it changed anything.
        """
        held = self._cache.get(secret.log)
        if held is not None and held.secret == secret.secret:
            return False
        self._store(secret)
        return True

    def _store(self, secret: SwarmSecret) -> SwarmSecret:
        with self._lock:
            held = self._cache.get(secret.log)
            previous = self._previous.get(secret.log, ())
            if held is not None:
                previous = (held, *[p for p in previous if p.secret not in
                                    (held.secret, secret.secret)])[:MAX_PREVIOUS]
            data = pack({"v": _VERSION, "log": secret.log, "epoch": secret.epoch,
                         "secret": secret.secret,
                         "previous": [[p.epoch, p.secret] for p in previous]})
            atomic_write(self._dir / f"{secret.log.hex()}.swarm", data)
            self._cache[secret.log] = secret
            self._previous[secret.log] = previous
        return secret
