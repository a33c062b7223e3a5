"""The host's machine (Noise responder): it answers guests on an invitation's topic.

Rules of this file
------------------
The host's rules are ``_HOST_TRANSITIONS`` below, the complete table
``{step: {input: step}}`` (plus ``_ANY_LIVE`` of ``_machine.py``, allowed in
every live step). :class:`HostProtocol` checks what it receives and builds
what it sends; it moves only along that table.

Theory of operation
-------------------
The host knows the invitation from the topic, so it offers it as soon as
the guest proved its device (:class:`GuestConnected` ->
:meth:`HostProtocol.offer`), then lets the driver check the guest's request
(:class:`InvitationRequested`), its proof (:class:`AttemptMade`) and its
admit (:class:`AdmissionRequested`) in turn.

A wrong proof moves the host machine to a step where it says nothing:
:class:`AuthFailed` asks the driver to count the failed attempt and make it
durable, and only :meth:`HostProtocol.attempt_counted` produces the refusal.
So no answer that depends on the password leaves before a failed guess is
on disk, and a right proof costs no write at all.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Final

from ...crypto.cpace import CPace, CPaceRole
from ...errors import (
    UNIFORM_REFUSAL,
    CryptoError,
    DecodeError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from ...halo.keys import verify_ed25519
from ._machine import ProtocolViolation, Session, _In, _Machine, _Step
from .events import (
    AdmissionRequested,
    AttemptMade,
    AuthFailed,
    AuthSucceeded,
    Event,
    GuestConnected,
    InvitationRequested,
)
from .messages import (
    _KEY,
    _PAKE_METHODS,
    MAX_CREDENTIAL,
    MAX_ENTRY,
    MAX_LOG_BYTES,
    MAX_LOG_ENTRIES,
    PROTOCOL_VERSION,
    REASON_WRONG_CODE,
    REASON_WRONG_KEY,
    REASON_WRONG_PIN,
    AdmitMsg,
    AdmittedMsg,
    ChallengeMsg,
    ConfirmMsg,
    EntriesMsg,
    HostInfo,
    KeyProofMsg,
    Kind,
    Method,
    PakeMsg,
    RefusedMsg,
    RequestMsg,
    SealedAdmitMsg,
    SwarmGrant,
    admission_key_message,
    chunk_entries,
    cpace_channel_id,
    open_admit,
    wire_reason,
)

_S = _Step  # short, for the table

#: The host machine: {step: {input: next step}}.
_HOST_TRANSITIONS: Final[dict[_Step, dict[_In, _Step]]] = {
    _S.INIT: {_In.CONNECTED: _S.DECIDE_OFFER},
    _S.DECIDE_OFFER: {
        _In.OFFER_NONE: _S.AWAIT_REQUEST,
        _In.OFFER_PAKE: _S.AWAIT_REQUEST,
        _In.OFFER_KEY: _S.AWAIT_REQUEST,
        _In.REFUSE: _S.ERROR,
        _In.REFUSE_EXPIRED: _S.EXPIRED,
        _In.REFUSE_REVOKED: _S.REVOKED,
        _In.REFUSE_LOCKED: _S.LOCKED,
    },
    _S.AWAIT_REQUEST: {_In.REQUEST: _S.CHECK_REQUEST},
    _S.CHECK_REQUEST: {
        _In.REQUEST_OK_NONE: _S.AWAIT_ADMIT,
        _In.REQUEST_OK_PAKE: _S.AWAIT_PAKE,
        _In.REQUEST_OK_KEY: _S.AWAIT_KEY_PROOF,
        _In.REFUSE: _S.ERROR,
        _In.REFUSE_EXPIRED: _S.EXPIRED,
        _In.REFUSE_REVOKED: _S.REVOKED,
        _In.REFUSE_LOCKED: _S.LOCKED,
    },
    _S.AWAIT_PAKE: {_In.PAKE: _S.AWAIT_CONFIRM},
    _S.AWAIT_CONFIRM: {_In.CONFIRM: _S.CHECK_ATTEMPT},
    _S.AWAIT_KEY_PROOF: {_In.KEY_PROOF: _S.CHECK_ATTEMPT},
    _S.CHECK_ATTEMPT: {
        _In.ATTEMPT_OK: _S.AWAIT_ADMIT,
        _In.ATTEMPT_OK_PAKE: _S.AWAIT_SEALED_ADMIT,
        _In.ATTEMPT_FAILED: _S.RECORD_FAILURE,
        # The invitation may have become unusable meanwhile (locked by another
        # guest's failure, expired, revoked): the proof is then never looked at.
        _In.REFUSE: _S.ERROR,
        _In.REFUSE_EXPIRED: _S.EXPIRED,
        _In.REFUSE_REVOKED: _S.REVOKED,
        _In.REFUSE_LOCKED: _S.LOCKED,
    },
    # Silent until the failure is durable: then the refusal, with what is left.
    _S.RECORD_FAILURE: {_In.COUNTED: _S.ERROR, _In.COUNTED_LOCKED: _S.LOCKED},
    _S.AWAIT_ADMIT: {_In.ADMIT: _S.DECIDE_ADMISSION},
    _S.AWAIT_SEALED_ADMIT: {_In.ADMIT_SEALED: _S.DECIDE_ADMISSION},
    _S.DECIDE_ADMISSION: {
        _In.ADMIT_OK: _S.SUCCESS,
        _In.REFUSE: _S.ERROR,
        _In.REFUSE_EXPIRED: _S.EXPIRED,
        _In.REFUSE_REVOKED: _S.REVOKED,
        _In.REFUSE_LOCKED: _S.LOCKED,
    },
}

#: Precise local refusal reasons that have their own final state.
_REFUSE_INPUT: Final[dict[str, _In]] = {
    "expired": _In.REFUSE_EXPIRED,
    "revoked": _In.REFUSE_REVOKED,
    "locked": _In.REFUSE_LOCKED,
}


class HostProtocol(_Machine):
    """The host's side of one invitation handshake (Noise responder)."""

    _transitions = _HOST_TRANSITIONS
    _role = "host"

    def __init__(self) -> None:
        super().__init__()
        self._method: Method | None = None
        self._admission_key: bytes | None = None
        self._proof: KeyProofMsg | ConfirmMsg | None = None
        self.invitation_id: bytes | None = None
        self.kind: Kind | None = None

    def connected(self, session: Session) -> list[Event]:
        """The Noise handshake completed; verify the guest's binding proof.

        Returns ``[GuestConnected]``: answer with :meth:`offer` or :meth:`refuse`
        right away (the guest's request is on its way; it is read after).
        """
        self._require(_In.CONNECTED)
        self._go(_In.CONNECTED)
        self._verify_peer(session)
        return [GuestConnected()]

    def receive_message(self, data: bytes) -> list[Event]:
        """Feed one application message from the guest."""
        msg, inp = self._decode(data)
        if isinstance(msg, RequestMsg):
            if msg.version != PROTOCOL_VERSION:
                raise self._violation(ProtocolViolation("request: unsupported protocol version"))
            self._go(inp)
            self.invitation_id, self.kind = msg.invitation, msg.kind
            return [InvitationRequested(msg.invitation, msg.kind)]
        if isinstance(msg, PakeMsg):
            assert self._cpace is not None
            try:
                self._cpace.receive(msg.msg)
            except (DecodeError, CryptoError) as exc:
                raise self._violation(ProtocolViolation(f"pake: {exc}")) from None
            self._go(inp)
            return []  # our share went out with the challenge
        if isinstance(msg, ConfirmMsg | KeyProofMsg):
            self._go(inp)
            self._proof = msg
            assert self._method is not None
            return [AttemptMade(self._method)]
        if isinstance(msg, SealedAdmitMsg):
            # Only reachable once the guest's tag verified: the ISK is the guest's too.
            assert self._cpace is not None
            try:
                admit = open_admit(self._cpace.isk, msg)
            except DecodeError as exc:
                raise self._violation(ProtocolViolation(str(exc))) from None
            return self._admission(admit, inp)
        if isinstance(msg, AdmitMsg):
            return self._admission(msg, inp)
        raise self._violation(ProtocolViolation(f"host: unexpected {msg.T!r} message"))

    def _admission(self, msg: AdmitMsg, inp: _In) -> list[Event]:
        assert self._peer_device is not None
        if not hmac.compare_digest(msg.device, self._peer_device):
            raise self._violation(ProtocolViolation(
                "admit: device differs from the one proved in the handshake"))
        if (msg.identity is not None) != (self.kind == "space"):
            raise self._violation(ProtocolViolation(
                "admit: identity and chain are required for space invitations only"))
        self._go(inp)
        return [AdmissionRequested(msg.device, msg.identity, msg.chain, msg.name)]

    def offer(self, method: Method, host: HostInfo, *, password: bytes | None = None,
              admission_key: bytes | None = None) -> list[Event]:
        """Challenge the guest by *method*: ``challenge``, and for a PAKE our share.

        ``password`` (the PIN or short-code secret, UTF-8) is required for
        ``pin``/``short``; ``admission_key`` (32-byte Ed25519 public key) for
        ``key``. Our CPace share reveals nothing about the password, so it
        goes out before the guest's share arrived (CPace fixes the transcript
        order by role, not by arrival).
        """
        inp = {"none": _In.OFFER_NONE, "pin": _In.OFFER_PAKE, "short": _In.OFFER_PAKE,
               "key": _In.OFFER_KEY}.get(method)
        if inp is None:
            raise LocalProtocolError("unknown authentication method")
        self._require(inp)
        if method in _PAKE_METHODS:
            if not password:
                raise LocalProtocolError(f"method {method} needs a password")
            session = self._session
            assert session is not None
            self._cpace = CPace(password, role=CPaceRole.RESPONDER, sid=session.handshake_hash,
                                ci=cpace_channel_id(session.remote_static, session.local_static))
        elif method == "key":
            if admission_key is None or len(admission_key) != _KEY:
                raise LocalProtocolError("method key needs a 32-byte admission key")
            self._admission_key = admission_key
        self._method = method
        self._go(inp)
        out: list[Event] = [self._send(ChallengeMsg(method, host))]
        if self._cpace is not None:
            out.append(self._send(PakeMsg(self._cpace.message())))
        return out

    def request_accepted(self) -> list[Event]:
        """The request names the offered invitation: go on by the offered method."""
        inp = {"none": _In.REQUEST_OK_NONE, "key": _In.REQUEST_OK_KEY}.get(
            self._method or "", _In.REQUEST_OK_PAKE)
        self._require(inp)
        self._go(inp)
        return []

    def check_attempt(self) -> list[Event]:
        """Check the guest's proof, in the step that saw :class:`AttemptMade`.

        Right → ``[AuthSucceeded]`` (with a PAKE our own tag goes out with the
        admission, :meth:`admit`). Wrong → ``[AuthFailed]`` and nothing to
        send: count the failure durably, then call :meth:`attempt_counted`.
        """
        self._require(_In.ATTEMPT_OK, _In.ATTEMPT_OK_PAKE)
        proof, self._proof = self._proof, None
        ok = False
        if isinstance(proof, ConfirmMsg):
            assert self._cpace is not None
            try:
                self._cpace.verify_confirmation_tag(proof.tag)
                ok = True
            except HandshakeError:
                ok = False
        elif isinstance(proof, KeyProofMsg):
            assert self._session is not None
            assert self._admission_key is not None
            ok = hmac.compare_digest(proof.key, self._admission_key) and verify_ed25519(
                proof.key, proof.sig, admission_key_message(self._session.handshake_hash))
        if ok:
            self._go(_In.ATTEMPT_OK if self._cpace is None else _In.ATTEMPT_OK_PAKE)
            return [AuthSucceeded()]
        self.reason = (REASON_WRONG_KEY if isinstance(proof, KeyProofMsg)
                       else REASON_WRONG_CODE if self._method == "short" else REASON_WRONG_PIN)
        self._go(_In.ATTEMPT_FAILED)
        return [AuthFailed()]

    def attempt_counted(self, attempts_left: int) -> list[Event]:
        """The wrong proof is counted and on disk: refuse, saying *attempts_left*.

        At 0 the invitation is locked, and so is this machine.
        """
        inp = _In.COUNTED if attempts_left else _In.COUNTED_LOCKED
        self._require(inp)
        if attempts_left < 0:
            raise LocalProtocolError("attempts_left cannot be negative")
        reason = self.reason
        assert reason is not None
        self._go(inp)
        return [self._send(RefusedMsg(reason, attempts_left))]

    def admit(self, credential: bytes, entries: Sequence[bytes], swarm: SwarmGrant
              ) -> list[Event]:
        """Answer the admission request: the issued credential, the log entries and
        the log's swarm secret sealed to the guest's device.

        Returns one ``admitted`` message when the log fits one chunk, else an
        ``admitted`` with the first chunk and the total count followed by
        ``entries`` messages (:func:`chunk_entries`), to be sent in order.
        With a PAKE our confirmation tag goes first: the guest trusts nothing
        of the admission before it checked that tag.
        """
        self._require(_In.ADMIT_OK)
        log = tuple(entries)
        if (len(credential) > MAX_CREDENTIAL or not 1 <= len(log) <= MAX_LOG_ENTRIES
                or any(len(e) > MAX_ENTRY for e in log)
                or sum(map(len, log)) > MAX_LOG_BYTES):
            raise LocalProtocolError("admission exceeds the protocol limits")
        chunks = chunk_entries(log)
        count = len(log) if len(chunks) > 1 else None
        out: list[Event] = []
        if self._cpace is not None:
            out.append(self._send(ConfirmMsg(self._cpace.confirmation_tag())))
        out.append(self._send(AdmittedMsg(credential, chunks[0], swarm, count)))
        out += [self._send(EntriesMsg(chunk)) for chunk in chunks[1:]]
        self._go(_In.ADMIT_OK)
        return out

    def refuse(self, reason: str) -> list[Event]:
        """Refuse the request or the admission for the precise local *reason*.

        The guest is told :func:`wire_reason` of it (uniform unless shareable).
        """
        inp = _REFUSE_INPUT.get(reason, _In.REFUSE)
        self._require(inp)
        self.reason = reason
        self._go(inp)
        return [self._send(RefusedMsg(wire_reason(reason)))]

    def cancel(self) -> list[Event]:
        """Stop (the invitation was revoked or the daemon stops): tell the guest, uniformly."""
        self._require(_In.CANCEL)
        self.reason = "cancelled"
        self._go(_In.CANCEL)
        return [self._send(RefusedMsg(UNIFORM_REFUSAL))]

    def refusal_for(self, exc: RemoteProtocolError) -> list[Event]:
        """The message to send after :meth:`receive_message` raised *exc* (maybe none)."""
        if exc.refusal is None:
            return []
        return [self._send(RefusedMsg(wire_reason(exc.refusal)))]


