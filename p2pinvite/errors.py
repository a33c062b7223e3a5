"""The exception hierarchy of p2pinvite.

Every error the package raises on purpose derives from :class:`P2PInviteError`,
so an application can catch one type. Below it the tree is organised by
*meaning*, not by module:

* :class:`LocalProtocolError` -- this side misused an API (the h11 split):
  a bug in the caller, never caused by a peer.
* :class:`RemoteProtocolError` -- the peer broke the protocol: bad framing,
  bad msgpack, a failed MAC, an invalid point. The connection that produced it
  is dropped; nothing else is affected. ``refusal`` carries what, if anything,
  may be sent back to the peer, so an I/O layer can answer without protocol
  knowledge.
* :class:`CryptoError` -- a cryptographic check failed or a key is unusable;
  :class:`SignatureError` is its Ed25519 branch (:class:`BadSignature`,
  :class:`WeakPublicKey`).
* :class:`ConnectionClosed` / :class:`HandshakeTimeout` -- the transport ended.
* :class:`StorageError` -- something on disk is wrong (keys, logs, records).
* :class:`CredentialError` -- a credential is invalid or not allowed.
* :class:`InvitationError` -- an invitation was refused, with a precise reason
  for the local owner and one uniform reason for remote peers.
* :class:`CodeError` -- text that is not a valid invitation code.
* :class:`IPCError` -- daemon/client transport and request errors.

Error messages never contain secrets (PINs, code secrets, private keys).
"""

from __future__ import annotations

__all__ = [
    "UNIFORM_REFUSAL",
    "BadSignature",
    "BadTag",
    "CodeError",
    "ConnectionClosed",
    "CredentialError",
    "CryptoError",
    "DaemonNotRunning",
    "DecodeError",
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeTimeout",
    "IPCError",
    "InvalidKey",
    "InvalidPoint",
    "InvitationError",
    "KeyFileError",
    "LocalProtocolError",
    "LogCorrupted",
    "MailboxCrowded",
    "MailboxServerError",
    "NonceExhausted",
    "P2PInviteError",
    "RelayRefused",
    "RemoteProtocolError",
    "RendezvousAddressError",
    "RendezvousError",
    "RendezvousProtocolError",
    "RendezvousTimeout",
    "RendezvousUnreachable",
    "SignatureError",
    "StorageError",
    "WeakPublicKey",
]

#: The single reason a remote peer is ever given when an invitation cannot be
#: used. Remote peers must not be able to tell "expired" from "revoked" from
#: "never existed": that would let them probe the host.
UNIFORM_REFUSAL = "invitation not available"


class P2PInviteError(Exception):
    """Base class of every error raised on purpose by p2pinvite."""


class LocalProtocolError(P2PInviteError):
    """This side used an API in a way the protocol does not allow (a bug here)."""


class RemoteProtocolError(P2PInviteError):
    """The peer violated the protocol; the connection it arrived on must end.

    ``refusal`` is the reason that may be sent back to the peer (or ``None``
    when nothing should be sent), so the I/O layer can answer without knowing
    the protocol.
    """

    def __init__(self, message: str, *, refusal: str | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal


class DecodeError(RemoteProtocolError):
    """Bytes that do not decode: malformed msgpack, wrong types, bad lengths."""


class FrameTooLarge(DecodeError):
    """A length prefix or payload larger than the decoder's limit."""


class CryptoError(P2PInviteError):
    """A cryptographic operation failed or was misused."""


class InvalidKey(CryptoError, LocalProtocolError):
    """A key of the wrong length or form was supplied."""


class BadTag(CryptoError, RemoteProtocolError):
    """Authenticated decryption failed: tampered, replayed or misordered data."""


class NonceExhausted(CryptoError):
    """A cipher state reached the last nonce (2**64-1); the session must end."""


class InvalidPoint(CryptoError, RemoteProtocolError):
    """A peer's public value is a low-order or otherwise forbidden point."""


class SignatureError(CryptoError):
    """An Ed25519 signature check refused its input (``p2pinvite/crypto/ed25519.py``).

    Callers that only need "valid or not" catch this one type. ``reason`` is
    machine-readable: ``length``, ``non_canonical`` or ``small_order`` (the
    public key, or ``R`` with a ``_r`` suffix), ``s_out_of_range``, ``mismatch``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BadSignature(SignatureError):
    """The signature does not verify, or its ``R`` or ``S`` is forbidden."""


class WeakPublicKey(SignatureError, InvalidPoint):
    """An Ed25519 public key that no signature may verify under.

    Not 32 bytes, not a canonical encoding, or one of the 8 points of small
    order: under such a key (the identity point, say) one signature can be
    valid for every message, so the key is refused before any signature is.
    """


class HandshakeError(CryptoError, RemoteProtocolError):
    """A handshake could not complete: wrong PSK, wrong confirmation, bad payload."""


class ConnectionClosed(P2PInviteError):
    """The underlying stream was closed or broken; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandshakeTimeout(ConnectionClosed):
    """The peer did not finish the handshake before its deadline."""


class StorageError(P2PInviteError):
    """State on disk is missing, unreadable or inconsistent."""


class KeyFileError(StorageError):
    """A key file has wrong permissions, wrong length or wrong content."""


class LogCorrupted(StorageError):
    """A space log is damaged before its tail, or has been tampered with.

    ``offset`` is the byte offset of the first bad record, so an operator can
    inspect the file; the log is refused rather than silently truncated.
    """

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset


class CredentialError(P2PInviteError):
    """A credential is malformed, badly signed, or not allowed by the rules.

    ``rule`` names the rule that refused it (for logs and for tests).
    """

    def __init__(self, message: str, *, rule: str = "invalid") -> None:
        super().__init__(message)
        self.rule = rule


class CodeError(P2PInviteError, ValueError):
    """Text that is not a valid invitation code (mistyped, altered, unsupported)."""


class InvitationError(P2PInviteError):
    """An invitation could not be used.

    ``reason`` is precise (``expired``, ``revoked``, ``locked``, ``exhausted``,
    ``wrong_pin``, ...) and is only ever shown to the local owner; remote peers
    are told :data:`UNIFORM_REFUSAL` unless the reason is safe to share (a
    wrong PIN answer with the attempts left, which the guest needs).
    """

    def __init__(self, message: str, *, reason: str, attempts_left: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.attempts_left = attempts_left


class IPCError(P2PInviteError):
    """An IPC request failed; ``code`` is the machine-readable error code."""

    def __init__(self, message: str, *, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class DaemonNotRunning(IPCError):
    """No daemon is listening on the home's socket."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="daemon_not_running")


# --- Rendezvous (issue 20): the magic-wormhole mailbox and transit relay -----------------------
# Appended after the classes above, which stay as they are. ``service`` always names the
# mailbox URL or the relay's ``host:port``, never a derived name, token or key.


class RendezvousAddressError(P2PInviteError, ValueError):
    """A mailbox URL or relay ``HOST:PORT`` that is not usable (a configuration mistake)."""


class RendezvousError(P2PInviteError):
    """A rendezvous service (mailbox or transit relay) could not be used.

    ``service`` names it (the mailbox URL, or the relay as ``host:port``) for
    the owner's logs; it never carries a mailbox name, relay token or key.
    """

    def __init__(self, message: str, *, service: str) -> None:
        super().__init__(message)
        self.service = service


class RendezvousUnreachable(RendezvousError, ConnectionClosed):
    """No connection to the service could be made, or the one we had broke."""


class RendezvousTimeout(RendezvousUnreachable):
    """The service did not answer (or the relay found no partner) before the deadline."""


class RendezvousProtocolError(RendezvousError, DecodeError):
    """The service sent something we do not understand: garbage, oversize, out of order."""


class MailboxCrowded(RendezvousError):
    """The mailbox already has its two sides; the server refused us a third."""


class MailboxServerError(RendezvousError):
    """The mailbox server answered with an ``error`` (or a welcome that refuses service).

    ``error`` is the server's own text, shortened and stripped of control
    characters (it comes from the network).
    """

    def __init__(self, message: str, *, service: str, error: str) -> None:
        super().__init__(message, service=service)
        self.error = error


class RelayRefused(RendezvousError):
    """The transit relay refused our handshake or hung up before pairing us.

    ``answer`` is what it said (``"bad handshake"``, ``"impatient"``), or
    ``""`` when it closed the connection without a word.
    """

    def __init__(self, message: str, *, service: str, answer: str) -> None:
        super().__init__(message, service=service)
        self.answer = answer
