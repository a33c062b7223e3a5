"""Events: what a call of an invitation machine returns, in order.

Rules of this file
------------------
Events are small frozen dataclasses without behaviour. One kind of event,
:class:`SendMessage`, names bytes the driver must send to the peer; the
others ask the driver for a decision that needs I/O (a store lookup, a
persisted failed attempt, a log append) or report progress, and each names
the machine call that answers it. The host's events come first, then the
guest's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from .messages import HostInfo, Kind, Message, Method, SwarmGrant


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Send these bytes to the peer (``message`` is the decoded form, for logs and tests)."""

    data: bytes = field(repr=False)
    message: Message


@dataclass(frozen=True, slots=True)
class GuestConnected:
    """Host: a guest finished the Noise handshake and proved its device.

    Look up the topic's invitation and answer at once, without waiting for
    the request: :meth:`HostProtocol.offer` or :meth:`HostProtocol.refuse`.
    """


@dataclass(frozen=True, slots=True)
class InvitationRequested:
    """Host: the guest asks for this invitation (``None``: the short code of this topic).

    Check it names the invitation that was offered, then call
    :meth:`HostProtocol.request_accepted` or :meth:`HostProtocol.refuse`.
    """

    invitation_id: bytes | None
    kind: Kind


@dataclass(frozen=True, slots=True)
class AttemptMade:
    """Host: the guest presented a proof (PIN tag or key signature).

    Check the invitation is still usable, then call
    :meth:`HostProtocol.check_attempt` in the same step: the check and the
    counting of a failure must not be separated by a wait, or concurrent
    guests could check more proofs than the budget allows.
    """

    method: Method


@dataclass(frozen=True, slots=True)
class AuthSucceeded:
    """Host: the proof was right (nothing was counted)."""


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """Host: the proof was wrong.

    Count the failed attempt at once (so concurrent guests see it), make the
    count durable, then call :meth:`HostProtocol.attempt_counted`: the guest
    hears nothing before that.
    """


@dataclass(frozen=True, slots=True)
class AdmissionRequested:
    """Host: the authenticated guest asks to be admitted.

    ``device`` equals the device key the guest proved in the Noise handshake.
    Answer with :meth:`HostProtocol.admit` or :meth:`HostProtocol.refuse`.
    """

    device: bytes
    identity: bytes | None
    chain: tuple[bytes, ...]
    name: str


@dataclass(frozen=True, slots=True)
class HostChallenged:
    """Guest: the host's method and identity; verify the chain, then call
    :meth:`GuestProtocol.host_verified` (or :meth:`GuestProtocol.fail`)."""

    method: Method
    host: HostInfo


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Guest: the host proved it holds the same PIN (its confirmation tag verified)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Guest: the host refused; ``reason`` as sent (uniform unless shareable)."""

    reason: str
    attempts_left: int | None = None


@dataclass(frozen=True, slots=True)
class AdmissionReceived:
    """Guest: the host admitted us; verify and store, then call
    :meth:`GuestProtocol.admission_verified` (or :meth:`GuestProtocol.fail`)."""

    credential: bytes
    entries: tuple[bytes, ...] = field(repr=False)
    swarm: SwarmGrant


Event: TypeAlias = (SendMessage | GuestConnected | InvitationRequested | AttemptMade
                    | AuthSucceeded | AuthFailed | AdmissionRequested | HostChallenged
                    | Authenticated | Refused | AdmissionReceived)

