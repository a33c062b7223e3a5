"""What both invitation machines share: steps, public states, the table walk.

Rules of this file
------------------
Nothing here knows the host's or the guest's rules: those are the tables
``_HOST_TRANSITIONS`` (``host.py``) and ``_GUEST_TRANSITIONS``
(``guest.py``). This module holds what they are written in -- the steps,
the inputs, the public :class:`State` each step maps to -- and
:class:`_Machine`, which walks a table and funnels every error.

Theory of operation
-------------------
Each machine walks fine-grained *steps*; ``_HOST_TRANSITIONS`` and
``_GUEST_TRANSITIONS`` are the complete tables ``{step: {input: step}}``
and ``_ANY_LIVE`` below the inputs allowed in every non-final step (cancel,
timeout, connection lost, protocol violation). Every step maps to one public
:class:`State` (the names the design uses and the manager reports).

Errors: a peer that breaks the protocol raises a
:class:`~p2pinvite.errors.RemoteProtocolError` subclass whose ``refusal`` is
the wire reason to send back, if any (the machine is then in ERROR); calling
a method out of turn raises :class:`~p2pinvite.errors.LocalProtocolError` and
leaves the machine unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Final

from ...crypto.cpace import CPace
from ...errors import (
    UNIFORM_REFUSAL,
    DecodeError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from ...halo.keys import verify_binding_proof
from .events import Event, SendMessage
from .messages import (
    AdmitMsg,
    AdmittedMsg,
    ChallengeMsg,
    ConfirmMsg,
    EntriesMsg,
    KeyProofMsg,
    Message,
    PakeMsg,
    RefusedMsg,
    RequestMsg,
    SealedAdmitMsg,
    decode_message,
    encode_message,
)


class ProtocolViolation(RemoteProtocolError):
    """The peer sent a message that is valid msgpack but wrong here (type, order, content)."""

    def __init__(self, message: str, *, refusal: str | None = UNIFORM_REFUSAL) -> None:
        super().__init__(message, refusal=refusal)


class State(enum.Enum):
    """Public state of one handshake (host or guest), as reported to the owner."""

    INIT = "init"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    READY_FOR_AUTHENTICATION = "ready_for_authentication"
    AUTHENTICATING = "authenticating"
    ADMITTING = "admitting"
    SUCCESS = "success"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ERROR = "error"
    EXPIRED = "expired"
    LOCKED = "locked"
    REVOKED = "revoked"


FINAL_STATES: Final = frozenset({State.SUCCESS, State.CANCELLED, State.TIMEOUT, State.ERROR,
                                 State.EXPIRED, State.LOCKED, State.REVOKED})


class _Step(enum.Enum):
    """Fine-grained position of a machine; ``_PUBLIC`` maps each to a :class:`State`."""

    INIT = enum.auto()
    CONNECTING = enum.auto()
    DECIDE_OFFER = enum.auto()          # host: Noise done; driver looks the invitation up
    AWAIT_REQUEST = enum.auto()         # host: challenge sent
    CHECK_REQUEST = enum.auto()         # host: driver compares the request with the offer
    AWAIT_CHALLENGE = enum.auto()       # guest: request sent
    VERIFY_HOST = enum.auto()           # guest: driver checks the host chain
    AWAIT_PAKE = enum.auto()
    AWAIT_CONFIRM = enum.auto()
    AWAIT_KEY_PROOF = enum.auto()       # host
    CHECK_ATTEMPT = enum.auto()         # host: driver checks the invitation, then the proof
    RECORD_FAILURE = enum.auto()        # host: driver counts a wrong proof, durably
    AWAIT_ADMIT = enum.auto()           # host: none, key
    AWAIT_SEALED_ADMIT = enum.auto()    # host: pin, short
    DECIDE_ADMISSION = enum.auto()      # host: driver validates, appends, fsyncs
    AWAIT_ADMITTED = enum.auto()        # guest: admit sent
    AWAIT_ENTRIES = enum.auto()         # guest: more chunks of the log announced
    VERIFY_ADMISSION = enum.auto()      # guest: driver verifies and stores the log
    SUCCESS = enum.auto()
    CANCELLED = enum.auto()
    TIMEOUT = enum.auto()
    ERROR = enum.auto()
    EXPIRED = enum.auto()
    LOCKED = enum.auto()
    REVOKED = enum.auto()


_PUBLIC: Final[dict[_Step, State]] = {
    _Step.INIT: State.INIT,
    _Step.CONNECTING: State.CONNECTING,
    _Step.DECIDE_OFFER: State.CONNECTED,
    _Step.AWAIT_CHALLENGE: State.CONNECTED,
    _Step.AWAIT_REQUEST: State.READY_FOR_AUTHENTICATION,
    _Step.CHECK_REQUEST: State.READY_FOR_AUTHENTICATION,
    _Step.VERIFY_HOST: State.READY_FOR_AUTHENTICATION,
    _Step.AWAIT_PAKE: State.AUTHENTICATING,
    _Step.AWAIT_CONFIRM: State.AUTHENTICATING,
    _Step.AWAIT_KEY_PROOF: State.AUTHENTICATING,
    _Step.CHECK_ATTEMPT: State.AUTHENTICATING,
    _Step.RECORD_FAILURE: State.AUTHENTICATING,
    _Step.AWAIT_ADMIT: State.ADMITTING,
    _Step.AWAIT_SEALED_ADMIT: State.ADMITTING,
    _Step.DECIDE_ADMISSION: State.ADMITTING,
    _Step.AWAIT_ADMITTED: State.ADMITTING,
    _Step.AWAIT_ENTRIES: State.ADMITTING,
    _Step.VERIFY_ADMISSION: State.ADMITTING,
    _Step.SUCCESS: State.SUCCESS,
    _Step.CANCELLED: State.CANCELLED,
    _Step.TIMEOUT: State.TIMEOUT,
    _Step.ERROR: State.ERROR,
    _Step.EXPIRED: State.EXPIRED,
    _Step.LOCKED: State.LOCKED,
    _Step.REVOKED: State.REVOKED,
}

_FINAL_STEPS: Final = frozenset(s for s, p in _PUBLIC.items() if p in FINAL_STATES)


class _In(enum.Enum):
    """Inputs of the machines: a received message type, or a call of the driver."""

    # received messages
    REQUEST = RequestMsg.T
    CHALLENGE = ChallengeMsg.T
    PAKE = PakeMsg.T
    CONFIRM = ConfirmMsg.T
    KEY_PROOF = KeyProofMsg.T
    ADMIT = AdmitMsg.T
    ADMIT_SEALED = SealedAdmitMsg.T
    ADMITTED = AdmittedMsg.T
    ADMITTED_PARTIAL = "admitted, with a count (chunks follow)"
    ENTRIES = EntriesMsg.T
    ENTRIES_LAST = "entries, completing the count"
    REFUSED = RefusedMsg.T
    REFUSED_LOCKED = "refused, no attempts left"
    # driver calls
    START_CONNECTING = "connecting()"
    CONNECTED = "connected()"
    OFFER_NONE = "offer(none)"
    OFFER_PAKE = "offer(pin|short)"
    OFFER_KEY = "offer(key)"
    REQUEST_OK_NONE = "request_accepted(), method none"
    REQUEST_OK_PAKE = "request_accepted(), method pin|short"
    REQUEST_OK_KEY = "request_accepted(), method key"
    ATTEMPT_OK = "check_attempt() ok, method key"
    ATTEMPT_OK_PAKE = "check_attempt() ok, method pin|short"
    ATTEMPT_FAILED = "check_attempt() failed"
    COUNTED = "attempt_counted()"
    COUNTED_LOCKED = "attempt_counted(), none left"
    HOST_OK_NONE = "host_verified(), method none"
    HOST_OK_PAKE = "host_verified(), method pin|short"
    HOST_OK_KEY = "host_verified(), method key"
    ADMIT_OK = "admit()"
    ADMISSION_OK = "admission_verified()"
    REFUSE = "refuse()"
    REFUSE_EXPIRED = "refuse(expired)"
    REFUSE_REVOKED = "refuse(revoked)"
    REFUSE_LOCKED = "refuse(locked)"
    # allowed in every live step
    CANCEL = "cancel()"
    TIMED_OUT = "timed_out()"
    LOST = "connection_lost()"
    FAIL = "fail() or a protocol violation"


_MESSAGE_INPUT: Final[dict[type, _In]] = {
    RequestMsg: _In.REQUEST, ChallengeMsg: _In.CHALLENGE, PakeMsg: _In.PAKE,
    ConfirmMsg: _In.CONFIRM, KeyProofMsg: _In.KEY_PROOF, AdmitMsg: _In.ADMIT,
    SealedAdmitMsg: _In.ADMIT_SEALED,
    AdmittedMsg: _In.ADMITTED, EntriesMsg: _In.ENTRIES, RefusedMsg: _In.REFUSED,
}

#: Inputs accepted in every step that is not final, on both machines.
_ANY_LIVE: Final[dict[_In, _Step]] = {
    _In.CANCEL: _Step.CANCELLED,
    _In.TIMED_OUT: _Step.TIMEOUT,
    _In.LOST: _Step.ERROR,
    _In.FAIL: _Step.ERROR,
}


@dataclass(frozen=True, slots=True)
class Session:
    """What the Noise handshake established, as the invitation protocol needs it.

    ``remote_payload`` is the peer's handshake payload: its device binding proof.
    """

    handshake_hash: bytes
    local_static: bytes
    remote_static: bytes
    remote_payload: bytes = field(repr=False)


class _Machine:
    """What both machines share: the step, the table walk, the error funnel."""

    _transitions: ClassVar[dict[_Step, dict[_In, _Step]]]
    _role: ClassVar[str]

    def __init__(self) -> None:
        self._step = _Step.INIT
        self._peer_device: bytes | None = None
        self._session: Session | None = None
        self._cpace: CPace | None = None
        self.reason: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self.state.name}>"

    @property
    def state(self) -> State:
        """The public state (see :class:`State`)."""
        return _PUBLIC[self._step]

    @property
    def peer_device(self) -> bytes | None:
        """The peer's device key, once its binding proof was verified."""
        return self._peer_device

    def _next(self, inp: _In) -> _Step:
        if self._step not in _FINAL_STEPS and inp in _ANY_LIVE:
            return _ANY_LIVE[inp]
        nxt = self._transitions.get(self._step, {}).get(inp)
        if nxt is None:
            raise LocalProtocolError(
                f"{self._role}: {inp.value} not allowed in step {self._step.name}")
        return nxt

    def _can(self, inp: _In) -> bool:
        try:
            self._next(inp)
        except LocalProtocolError:
            return False
        return True

    def _go(self, inp: _In) -> None:
        self._step = self._next(inp)
        if self._step in _FINAL_STEPS:
            self._cpace = None  # forget the ISK and everything derived from the password

    def _require(self, *inputs: _In) -> None:
        if not any(self._can(i) for i in inputs):
            names = ", ".join(i.value for i in inputs)
            raise LocalProtocolError(f"{self._role}: {names} not allowed in step {self._step.name}")

    def _violation(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self.reason = str(exc)
        self._go(_In.FAIL)
        return exc

    def _decode(self, data: bytes) -> tuple[Message, _In]:
        if self._step in _FINAL_STEPS or self._step in (_Step.INIT, _Step.CONNECTING):
            raise LocalProtocolError(f"{self._role}: no message expected in step {self._step.name}")
        try:
            msg = decode_message(data)
        except DecodeError as exc:
            raise self._violation(exc) from None
        inp = self._refine(msg, _MESSAGE_INPUT[type(msg)])
        if not self._can(inp):
            raise self._violation(ProtocolViolation(
                f"{self._role}: unexpected {msg.T!r} message in step {self._step.name}"))
        return msg, inp

    def _refine(self, msg: Message, inp: _In) -> _In:
        """The table input for *msg*, where its content decides the next step."""
        if isinstance(msg, RefusedMsg) and msg.attempts_left == 0:
            return _In.REFUSED_LOCKED
        return inp

    def _verify_peer(self, session: Session) -> None:
        try:
            self._peer_device = verify_binding_proof(session.remote_payload, session.remote_static)
        except HandshakeError as exc:
            raise self._violation(exc) from None
        self._session = session

    @staticmethod
    def _send(msg: Message) -> SendMessage:
        return SendMessage(encode_message(msg), msg)

    # -- calls valid in every live step ---------------------------------------

    def timed_out(self) -> list[Event]:
        """A step's deadline passed (the driver closes the connection)."""
        self._require(_In.TIMED_OUT)
        self.reason = "timeout"
        self._go(_In.TIMED_OUT)
        return []

    def connection_lost(self) -> list[Event]:
        """The transport ended before the protocol did."""
        self._require(_In.LOST)
        self.reason = "connection lost"
        self._go(_In.LOST)
        return []

    def fail(self, reason: str) -> list[Event]:
        """Abort for a local reason (*reason* is for the local owner only)."""
        self._require(_In.FAIL)
        self.reason = reason
        self._go(_In.FAIL)
        return []


