"""Names and keys derived for a rendezvous (docs/RENDEZVOUS.md §2).

Two parties that share a 256-bit secret meet at a magic-wormhole mailbox and,
if need be, a transit relay. Neither service may learn the secret, so all
they see is derived from it with HKDF-SHA256 (RFC 5869)::

    out = HKDF-SHA256(ikm = secret, salt = none, info = LABEL || 0x00 || context, L = 32)

with one label per output (all under ``p2pinvite/rendezvous/v1/``):

``mailbox``
    the mailbox id, as 64 lowercase hex characters (public to the mailbox,
    but a capability: whoever knows it can open, and so crowd, the mailbox);
``seal``
    the ChaCha20-Poly1305 key of the candidates messages (secret);
``relay-token``
    the transit relay token, 64 hex characters on the wire (a capability:
    whoever knows it can take our place at the relay).

HKDF is a PRF keyed by the secret, so no output reveals the secret or
another output. The *context* separates the two uses:

* an invitation: ``b"invitation"``, the secret being the link code's;
* a pair of member devices: ``b"member-pair" || lo || hi``, the secret being
  the log's swarm secret and ``lo < hi`` the two 32-byte device keys, sorted
  bytewise so that both devices derive the same names.

The *sides* the two parties bind with are fixed per role (not random, as
magic-wormhole's own clients use): the mailbox server counts every side
that ever opened a mailbox and refuses the third for good (docs/RENDEZVOUS.md
§6), so a party that reconnects must come back as the same side. Side 0 is
the invitation's host, or the member device with the smaller key; side 1 the
guest, or the larger key.

Pure functions, no I/O. Secrets and keys never appear in a ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import LocalProtocolError

__all__ = [
    "APPID",
    "CONTEXT_INVITATION",
    "CONTEXT_MEMBER_PAIR",
    "LABEL_MAILBOX",
    "LABEL_PREFIX",
    "LABEL_RELAY_TOKEN",
    "LABEL_SEAL",
    "SECRET_SIZE",
    "SIDES",
    "RendezvousKind",
    "RendezvousNames",
    "derive",
    "for_invitation",
    "for_member_pair",
    "pair_side",
]

#: Size of the secrets names are derived from (a link code's, a swarm secret), in bytes.
SECRET_SIZE: Final = 32
#: Size of a device key in a member pair's context, in bytes.
DEVICE_KEY_SIZE: Final = 32
#: The magic-wormhole "application id" every p2pinvite client binds with. Constant and
#: public: the mailbox keeps one namespace per appid, so ours never meet other apps' mailboxes.
APPID: Final = "p2pinvite/rendezvous/v1"

LABEL_PREFIX: Final = b"p2pinvite/rendezvous/v1/"
LABEL_MAILBOX: Final = LABEL_PREFIX + b"mailbox"
LABEL_SEAL: Final = LABEL_PREFIX + b"seal"
LABEL_RELAY_TOKEN: Final = LABEL_PREFIX + b"relay-token"

CONTEXT_INVITATION: Final = b"invitation"
CONTEXT_MEMBER_PAIR: Final = b"member-pair"

#: The two sides, by role. 16 characters of ``[A-Za-z0-9_]``, as the transit relay requires.
SIDES: Final = ("p2pinvite_side_0", "p2pinvite_side_1")

RendezvousKind = Literal["invitation", "member-pair"]

_OUT: Final = 32


def _hkdf(secret: bytes, label: bytes, context: bytes) -> bytes:
    return HKDF(hashes.SHA256(), _OUT, salt=None, info=label + b"\x00" + context).derive(secret)


def _check_secret(secret: bytes, what: str) -> None:
    if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
        raise LocalProtocolError(f"{what} must be {SECRET_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class RendezvousNames:
    """Everything two parties need to meet, derived from their shared secret.

    Build with :func:`for_invitation` or :func:`for_member_pair`. Only
    ``kind`` and ``sides`` show in ``repr``: the mailbox id and relay token
    are capabilities, the sealing key a secret.
    """

    kind: RendezvousKind
    #: The mailbox to open: 64 lowercase hex characters (256 bits).
    mailbox_id: str = field(repr=False)
    #: ChaCha20-Poly1305 key of the candidates messages (:mod:`.candidates`).
    sealing_key: bytes = field(repr=False)
    #: The transit relay token (32 bytes; ``relay_token.hex()`` on the wire).
    relay_token: bytes = field(repr=False)
    #: Side 0 and side 1 (see the module docstring for who is which).
    sides: tuple[str, str] = SIDES

    def side(self, index: int) -> str:
        """The side string of role *index* (0 or 1)."""
        if index not in (0, 1):
            raise LocalProtocolError("a rendezvous side index is 0 or 1")
        return self.sides[index]

    def other_side(self, side: str) -> str:
        """The side of the other party, given ours."""
        if side not in self.sides:
            raise LocalProtocolError("not one of this rendezvous' sides")
        return self.sides[1 - self.sides.index(side)]


def derive(secret: bytes, context: bytes, *, kind: RendezvousKind) -> RendezvousNames:
    """The names of the rendezvous of *secret* in *context* (the general form).

    Prefer :func:`for_invitation` and :func:`for_member_pair`, which build the
    context; this one is public for test vectors and other implementations.
    """
    _check_secret(secret, "a rendezvous secret")
    if not isinstance(context, bytes):
        raise LocalProtocolError("a rendezvous context is bytes")
    return RendezvousNames(
        kind=kind,
        mailbox_id=_hkdf(secret, LABEL_MAILBOX, context).hex(),
        sealing_key=_hkdf(secret, LABEL_SEAL, context),
        relay_token=_hkdf(secret, LABEL_RELAY_TOKEN, context),
    )


def for_invitation(code_secret: bytes) -> RendezvousNames:
    """The rendezvous of an invitation, from its link code's 32-byte secret.

    The host is side 0, the guest side 1.
    """
    _check_secret(code_secret, "a link code secret")
    return derive(code_secret, CONTEXT_INVITATION, kind="invitation")


def _check_device(key: bytes, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != DEVICE_KEY_SIZE:
        raise LocalProtocolError(f"{what} must be a {DEVICE_KEY_SIZE}-byte device key")


def for_member_pair(swarm_secret: bytes, device_a: bytes, device_b: bytes) -> RendezvousNames:
    """The rendezvous of two member devices of a log, in either order.

    *swarm_secret* is the log's swarm secret in force; *device_a* and
    *device_b* the two devices' 32-byte keys. The device with the smaller key
    (bytewise) is side 0: see :func:`pair_side`.
    """
    _check_secret(swarm_secret, "a swarm secret")
    _check_device(device_a, "device_a")
    _check_device(device_b, "device_b")
    if device_a == device_b:
        raise LocalProtocolError("a member pair needs two different devices")
    lo, hi = sorted((device_a, device_b))
    return derive(swarm_secret, CONTEXT_MEMBER_PAIR + lo + hi, kind="member-pair")


def pair_side(me: bytes, peer: bytes) -> Literal[0, 1]:
    """Our side index in the member pair of device keys *me* and *peer*."""
    _check_device(me, "me")
    _check_device(peer, "peer")
    if me == peer:
        raise LocalProtocolError("a member pair needs two different devices")
    return 0 if me < peer else 1
