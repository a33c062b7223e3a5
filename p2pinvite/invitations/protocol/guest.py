"""The guest's machine (Noise initiator): it uses an invitation code.

Rules of this file
------------------
The guest's rules are ``_GUEST_TRANSITIONS`` below, the complete table
``{step: {input: step}}`` (plus ``_ANY_LIVE`` of ``_machine.py``, allowed in
every live step). :class:`GuestProtocol` checks what it receives and builds
what it sends; it moves only along that table.

Theory of operation
-------------------
The guest knows from its code what to expect (:class:`GuestRequest`): the
host's device (link codes), the method, the password or admission key. It
sends its request (with a PAKE, its CPace share too) right after the
handshake, lets the driver check the host's chain (:class:`HostChallenged`
-> :meth:`GuestProtocol.host_verified`), proves itself and asks to be
admitted. With a PAKE it trusts nothing of the admission before the host's
tag verified (:class:`Authenticated`). A log sent in chunks is gathered
until the announced ``count`` arrived, then handed over whole
(:class:`AdmissionReceived`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Final

from ...crypto.cpace import CPace, CPaceRole
from ...errors import CryptoError, DecodeError, HandshakeError, InvitationError, LocalProtocolError
from ...halo.keys import Signer
from ._machine import ProtocolViolation, Session, _In, _Machine, _Step
from .events import AdmissionReceived, Authenticated, Event, HostChallenged, Refused
from .messages import (
    _KINDS,
    _METHODS,
    _PAKE_METHODS,
    MAX_LOG_BYTES,
    MAX_NAME,
    AdmitMsg,
    AdmittedMsg,
    ChallengeMsg,
    ConfirmMsg,
    EntriesMsg,
    KeyProofMsg,
    Kind,
    Message,
    Method,
    PakeMsg,
    RefusedMsg,
    RequestMsg,
    SwarmGrant,
    admission_key_message,
    cpace_channel_id,
    seal_admit,
)

_S = _Step  # short, for the table

#: The guest machine: {step: {input: next step}}.
_GUEST_TRANSITIONS: Final[dict[_Step, dict[_In, _Step]]] = {
    _S.INIT: {_In.START_CONNECTING: _S.CONNECTING, _In.CONNECTED: _S.AWAIT_CHALLENGE},
    _S.CONNECTING: {_In.CONNECTED: _S.AWAIT_CHALLENGE},
    _S.AWAIT_CHALLENGE: {
        _In.CHALLENGE: _S.VERIFY_HOST,
        _In.REFUSED: _S.ERROR,
    },
    _S.VERIFY_HOST: {
        _In.HOST_OK_NONE: _S.AWAIT_ADMITTED,
        _In.HOST_OK_PAKE: _S.AWAIT_PAKE,
        _In.HOST_OK_KEY: _S.AWAIT_ADMITTED,
        # The host may give up (revoked, shutting down) while we look at it.
        _In.REFUSED: _S.ERROR,
    },
    _S.AWAIT_PAKE: {_In.PAKE: _S.AWAIT_CONFIRM, _In.REFUSED: _S.ERROR},
    _S.AWAIT_CONFIRM: {
        _In.CONFIRM: _S.AWAIT_ADMITTED,
        _In.REFUSED: _S.ERROR,
        _In.REFUSED_LOCKED: _S.LOCKED,
    },
    _S.AWAIT_ADMITTED: {
        _In.ADMITTED: _S.VERIFY_ADMISSION,
        _In.ADMITTED_PARTIAL: _S.AWAIT_ENTRIES,
        _In.REFUSED: _S.ERROR,
        _In.REFUSED_LOCKED: _S.LOCKED,
    },
    # Once admitted, the host only sends the rest of the log (no refusal).
    _S.AWAIT_ENTRIES: {
        _In.ENTRIES: _S.AWAIT_ENTRIES,
        _In.ENTRIES_LAST: _S.VERIFY_ADMISSION,
    },
    _S.VERIFY_ADMISSION: {_In.ADMISSION_OK: _S.SUCCESS},
}


class PeerRefused(InvitationError):
    """The host answered with a refusal (guest side); ``reason`` is the wire reason."""


@dataclass(frozen=True, slots=True)
class GuestRequest:
    """What the guest knows from its code and about itself.

    ``host_device``: the host device key a link code names (``None`` for short
    codes). ``password``: PIN or short-code secret (secret, never in repr);
    ``admission_key``: the signer whose public half the invitation names.
    ``identity``/``chain``: the guest identity and its device chain (space
    invitations only).
    """

    kind: Kind
    method: Method
    device: bytes
    invitation_id: bytes | None = None
    host_device: bytes | None = None
    password: bytes | None = field(default=None, repr=False)
    admission_key: Signer | None = field(default=None, repr=False)
    identity: bytes | None = None
    chain: tuple[bytes, ...] = ()
    name: str = ""


class GuestProtocol(_Machine):
    """The guest's side of one invitation handshake (Noise initiator)."""

    _transitions = _GUEST_TRANSITIONS
    _role = "guest"

    def __init__(self, request: GuestRequest) -> None:
        super().__init__()
        if request.method not in _METHODS or request.kind not in _KINDS:
            raise LocalProtocolError("unknown method or kind")
        if request.method in _PAKE_METHODS and not request.password:
            raise LocalProtocolError(f"method {request.method} needs a password")
        if request.method == "key" and request.admission_key is None:
            raise LocalProtocolError("method key needs an admission key")
        if (request.identity is not None) != (request.kind == "space"):
            raise LocalProtocolError("an identity is sent with space invitations only")
        if len(request.name) > MAX_NAME:
            raise LocalProtocolError("profile name too long")
        self._request = request
        self.refused: Refused | None = None
        # The log being received in chunks: the credential, the entries so far,
        # how many are still announced, and their bytes so far.
        self._credential = b""
        self._swarm: SwarmGrant | None = None
        self._log: list[bytes] = []
        self._remaining = 0
        self._log_bytes = 0

    def _refine(self, msg: Message, inp: _In) -> _In:
        if isinstance(msg, AdmittedMsg) and msg.count is not None:
            return _In.ADMITTED_PARTIAL
        if isinstance(msg, EntriesMsg) and len(msg.entries) >= self._remaining:
            return _In.ENTRIES_LAST
        return super()._refine(msg, inp)

    def connecting(self) -> list[Event]:
        """The driver started looking for the host."""
        self._require(_In.START_CONNECTING)
        self._go(_In.START_CONNECTING)
        return []

    def connected(self, session: Session) -> list[Event]:
        """The Noise handshake completed: check the host's device, send the request."""
        self._require(_In.CONNECTED)
        self._go(_In.CONNECTED)
        self._verify_peer(session)
        want = self._request.host_device
        assert self._peer_device is not None
        if want is not None and not hmac.compare_digest(want, self._peer_device):
            raise self._violation(HandshakeError("the host is not the device the code names"))
        r = self._request
        out: list[Event] = [self._send(RequestMsg(r.invitation_id, r.kind))]
        if r.method in _PAKE_METHODS:
            # Pipelined with the request: our CPace share depends only on the
            # session and the password, and reveals nothing about the password
            # (CPace). What does -- our tag -- waits until the challenge was
            # checked and the host's share arrived, as before.
            assert r.password is not None
            self._cpace = CPace(r.password, role=CPaceRole.INITIATOR,
                                sid=session.handshake_hash,
                                ci=cpace_channel_id(session.local_static, session.remote_static))
            out.append(self._send(PakeMsg(self._cpace.message())))
        return out

    def receive_message(self, data: bytes) -> list[Event]:
        """Feed one application message from the host."""
        msg, inp = self._decode(data)
        if isinstance(msg, RefusedMsg):
            self._go(inp)
            self.reason = msg.reason
            self.refused = Refused(msg.reason, msg.attempts_left)
            return [self.refused]
        if isinstance(msg, ChallengeMsg):
            if msg.method != self._request.method:
                raise self._violation(ProtocolViolation(
                    "challenge: the host asks for another method than the code names",
                    refusal=None))
            assert self._peer_device is not None
            if not hmac.compare_digest(msg.host.device, self._peer_device):
                raise self._violation(HandshakeError(
                    "challenge: host device differs from the one proved in the handshake"))
            self._go(inp)
            return [HostChallenged(msg.method, msg.host)]
        if isinstance(msg, PakeMsg):
            assert self._cpace is not None
            try:
                self._cpace.receive(msg.msg)
            except (DecodeError, CryptoError) as exc:
                raise self._violation(ProtocolViolation(f"pake: {exc}", refusal=None)) from None
            self._go(inp)
            # The admit goes sealed right behind our tag (see the notes of messages.py).
            return [self._send(ConfirmMsg(self._cpace.confirmation_tag())),
                    self._send(seal_admit(self._cpace.isk, self._admit_message()))]
        if isinstance(msg, ConfirmMsg):
            assert self._cpace is not None
            try:
                self._cpace.verify_confirmation_tag(msg.tag)
            except HandshakeError:
                raise self._violation(HandshakeError(
                    "the host could not confirm the PIN: it is not the host that holds it")
                ) from None
            self._go(inp)
            return [Authenticated()]
        if isinstance(msg, AdmittedMsg):
            if msg.count is None:
                self._go(inp)
                return [AdmissionReceived(msg.credential, msg.entries, msg.swarm)]
            self._credential, self._log = msg.credential, list(msg.entries)
            self._swarm = msg.swarm
            self._remaining = msg.count - len(msg.entries)
            self._log_bytes = sum(map(len, msg.entries))
            self._go(inp)
            return []
        if isinstance(msg, EntriesMsg):
            return self._receive_chunk(msg, inp)
        raise self._violation(ProtocolViolation(f"guest: unexpected {msg.T!r} message"))

    def _receive_chunk(self, msg: EntriesMsg, inp: _In) -> list[Event]:
        if len(msg.entries) > self._remaining:
            raise self._violation(ProtocolViolation(
                "entries: more entries than the admitted count announced", refusal=None))
        self._log_bytes += sum(map(len, msg.entries))
        if self._log_bytes > MAX_LOG_BYTES:
            raise self._violation(ProtocolViolation(
                f"entries: the log exceeds {MAX_LOG_BYTES} bytes", refusal=None))
        self._log += msg.entries
        self._remaining -= len(msg.entries)
        self._go(inp)
        if self._remaining:
            return []
        log, self._log = tuple(self._log), []
        assert self._swarm is not None
        return [AdmissionReceived(self._credential, log, self._swarm)]

    def _admit_message(self) -> AdmitMsg:
        r = self._request
        return AdmitMsg(r.device, r.identity, r.chain if r.identity is not None else (), r.name)

    def host_verified(self) -> list[Event]:
        """The driver accepted the host's chain: authenticate (and, if possible, ask to admit)."""
        method = self._request.method
        inp = {"none": _In.HOST_OK_NONE, "key": _In.HOST_OK_KEY}.get(method, _In.HOST_OK_PAKE)
        self._require(inp)
        session = self._session
        assert session is not None
        out: list[Event] = []
        if method not in _PAKE_METHODS:  # a PAKE share went with the request
            if method == "key":
                signer = self._request.admission_key
                assert signer is not None
                sig = signer.sign(admission_key_message(session.handshake_hash))
                out.append(self._send(KeyProofMsg(signer.public_key, sig)))
            # Nothing to wait for: the host answers the admit message with
            # either the admission or a refusal.
            out.append(self._send(self._admit_message()))
        self._go(inp)
        return out

    def admission_verified(self) -> list[Event]:
        """The driver verified and stored what the host sent: done."""
        self._require(_In.ADMISSION_OK)
        self._go(_In.ADMISSION_OK)
        return []

    def cancel(self) -> list[Event]:
        """The user gave up (the driver closes the connection)."""
        self._require(_In.CANCEL)
        self.reason = "cancelled"
        self._go(_In.CANCEL)
        return []

