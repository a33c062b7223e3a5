"""Topics: what peers meet on, and the keys derived for them.

A :class:`Topic` names a rendezvous. Three kinds exist:

``link``
    From a link code's 256-bit secret. Two values are derived with keyed,
    personalised BLAKE2b (the secret is the key, a distinct label the
    personalisation): the public *discovery key* (the topic id, advertised
    over mDNS and sent in the connection preamble) and the Noise *PSK* (kept
    secret; only code holders can finish the ``XXpsk0`` handshake). BLAKE2b is
    a PRF under its key, so neither output reveals the secret or the other
    output. The secret itself is not stored in the :class:`Topic`.
``short``
    From the public discriminator of a short code. The id is a hash of the
    discriminator; there is no PSK (plain ``XX``; the short code's secret part
    is used later, as a CPace password, by the invitation layer).
``swarm``
    Member-to-member traffic of a space (or an identity's devices), from the
    space's 256-bit *swarm secret*, which only members hold. Derived like a
    link topic, under other labels: a public id and a PSK (``XXpsk0``), so
    only members can find the swarm's peers by its id or finish its handshake.

Every derivation is ``BLAKE2b(data, digest_size=32, key=K, person=LABEL)``
with the exact labels below (ASCII, zero-padded to 16 bytes by BLAKE2b);
docs/PROTOCOL.md Part 4 repeats them for other implementations.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from ..errors import LocalProtocolError

__all__ = [
    "LABEL_LINK_PSK",
    "LABEL_LINK_TOPIC",
    "LABEL_SHORT_TOPIC",
    "LABEL_SWARM_PSK",
    "LABEL_SWARM_TOPIC",
    "TOPIC_ID_SIZE",
    "Topic",
    "TopicKind",
    "encode_discovery_key",
]

#: Size of a topic id (the public discovery key), in bytes.
TOPIC_ID_SIZE: Final = 32
#: Size of a link code's secret, in bytes.
SECRET_SIZE: Final = 32

#: BLAKE2b personalisation labels (at most 16 bytes each; all distinct).
LABEL_LINK_TOPIC: Final = b"p2pi/link-topic"
LABEL_LINK_PSK: Final = b"p2pi/link-psk"
LABEL_SHORT_TOPIC: Final = b"p2pi/short-topic"
LABEL_SWARM_TOPIC: Final = b"p2pi/swarm-topic"
LABEL_SWARM_PSK: Final = b"p2pi/swarm-psk"

#: TXT keys: ``k`` carries the discovery key, ``d`` a short code's discriminator.
TXT_KEY: Final = "k"
TXT_DISCRIMINATOR: Final = "d"

# The discriminator travels in a TXT value and in logs: keep it to a small,
# unambiguous alphabet.
_DISCRIMINATOR_RE: Final = re.compile(r"[0-9A-Za-z_-]{1,32}")

TopicKind = Literal["link", "short", "swarm"]


def _derive(data: bytes, *, label: bytes, key: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=TOPIC_ID_SIZE, key=key, person=label).digest()


def encode_discovery_key(topic_id: bytes) -> str:
    """The TXT form of a topic id: lowercase RFC 4648 base32 without padding (52 chars)."""
    return base64.b32encode(topic_id).decode("ascii").rstrip("=").lower()


@dataclass(frozen=True, slots=True)
class Topic:
    """A rendezvous: its public id, its PSK (if any) and what is advertised for it.

    Build topics with :meth:`from_secret`, :meth:`for_discriminator` or
    :meth:`for_swarm`; the constructor only checks consistency.
    """

    kind: TopicKind
    #: Public 32-byte id: sent in the connection preamble, advertised over mDNS.
    id: bytes
    #: Noise PSK (link and swarm topics). Secret: excluded from ``repr``.
    psk: bytes | None = field(default=None, repr=False)
    #: The one TXT entry (besides ``v``) that identifies this topic on the wire.
    txt_key: str = TXT_KEY
    txt_value: str = ""

    def __post_init__(self) -> None:
        if len(self.id) != TOPIC_ID_SIZE:
            raise LocalProtocolError(f"topic id must be {TOPIC_ID_SIZE} bytes")
        if (self.kind in ("link", "swarm")) != (self.psk is not None):
            raise LocalProtocolError("exactly the link and swarm topics carry a psk")
        if self.psk is not None and len(self.psk) != 32:
            raise LocalProtocolError("topic psk must be 32 bytes")
        if self.txt_key not in (TXT_KEY, TXT_DISCRIMINATOR) or not self.txt_value:
            raise LocalProtocolError("topic has no valid TXT entry")

    @classmethod
    def from_secret(cls, secret: bytes) -> Topic:
        """The topic of a link code, from its 256-bit *secret* (XXpsk0)."""
        if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
            raise LocalProtocolError(f"a link secret must be {SECRET_SIZE} bytes")
        topic_id = _derive(b"", key=secret, label=LABEL_LINK_TOPIC)
        psk = _derive(b"", key=secret, label=LABEL_LINK_PSK)
        return cls("link", topic_id, psk, TXT_KEY, encode_discovery_key(topic_id))

    @classmethod
    def for_discriminator(cls, discriminator: str) -> Topic:
        """The topic of a short code, from its public *discriminator* (XX, no psk)."""
        if not isinstance(discriminator, str) or not _DISCRIMINATOR_RE.fullmatch(discriminator):
            raise LocalProtocolError("a discriminator is 1-32 characters of [0-9A-Za-z_-]")
        topic_id = _derive(discriminator.encode("ascii"), label=LABEL_SHORT_TOPIC)
        return cls("short", topic_id, None, TXT_DISCRIMINATOR, discriminator)

    @classmethod
    def for_swarm(cls, secret: bytes) -> Topic:
        """The member topic of a space or identity, from its 256-bit swarm *secret* (XXpsk0)."""
        if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
            raise LocalProtocolError(f"a swarm secret must be {SECRET_SIZE} bytes")
        topic_id = _derive(b"", key=secret, label=LABEL_SWARM_TOPIC)
        psk = _derive(b"", key=secret, label=LABEL_SWARM_PSK)
        return cls("swarm", topic_id, psk, TXT_KEY, encode_discovery_key(topic_id))

    @property
    def txt(self) -> dict[str, str]:
        """The TXT entries that identify this topic (the protocol version is added by discovery)."""
        return {self.txt_key: self.txt_value}

    @property
    def short_id(self) -> str:
        """A short public label for logs (first 8 base32 characters of the id)."""
        return encode_discovery_key(self.id)[:8]
