"""The invitation protocol, sans-IO: a host machine and a guest machine.

Rules of this package
---------------------
Nothing here does I/O, knows about trio, or reads a clock. A machine is fed
decoded-or-not messages (``receive_message(bytes)``) and decisions of its
driver (``offer``, ``check_attempt``, ``admit``, ...); every call returns the
list of *events* it produced, in order. docs/PROTOCOL.md Part 7 is the wire
specification. Secrets (PIN, short code secret, ISK) never appear in a repr,
an event or an exception message. Import from the package: it re-exports
everything public.

Where each part lives
---------------------
Imports point one way, down this list:

- ``messages.py``: the wire messages, their limits and strict codec, what a
  proof is bound to, the sealed ``admit``, chunking of the log.
- ``events.py``: the events a machine call returns.
- ``_machine.py``: what both machines share: the public :class:`State`,
  :class:`Session`, the steps and inputs the tables are written in,
  ``_ANY_LIVE`` and the ``_Machine`` base (table walk, error funnel).
- ``host.py``: :class:`HostProtocol` and its table ``_HOST_TRANSITIONS``.
- ``guest.py``: :class:`GuestProtocol`, :class:`GuestRequest` and its table
  ``_GUEST_TRANSITIONS``.

Theory of operation
-------------------
Both sides start after the Noise handshake (guest = initiator, host =
responder) with a :class:`Session`: the handshake hash, both static keys and
the peer's handshake payload, which is its device *binding proof*. Each side
checks the proof first, so both know the peer's device key.

::

    guest                                       host
                                                GuestConnected -> offer()/refuse()
    request {invitation, kind}        ---->     challenge {method, host identity/device/chain}
    [pin, short] + pake {Ya}          ---->     [pin, short] + pake {Yb}
                    (both sides send at once: neither waits for the other)
    HostChallenged -> host_verified()           InvitationRequested -> request_accepted()/refuse()
    [pin, short]  confirm {tag_a}     ---->     AttemptMade -> check_attempt()
                + admit_sealed {box}  ---->       right: open the box
                                                  wrong: AuthFailed -> (count, persist)
                                                         -> attempt_counted() -> refused
    [key]         key_proof {key,sig} ---->     AttemptMade -> check_attempt() (as above)
    [none, key]   admit {device, ...} ---->     AdmissionRequested -> admit()/refuse()
    [pin, short]  Authenticated       <----     confirm {tag_b}
    AdmissionReceived                 <----     admitted {credential, entries[, count]}
      -> admission_verified()                   [entries {entries}] ... until count

After the Noise handshake both sides speak at once: the guest its request
(and CPace share), the host -- which knows the invitation from the topic --
its challenge (and CPace share). Neither message depends on the other, so
the exchange costs one flight instead of a round trip; the host still checks
the request before it reads anything after it.

Each side's CPace share depends only on the session and the password and
reveals nothing about the password, so both go out at once; the guest's
tag, the first thing that does depend on the password, waits until the
challenge was checked and the host's share arrived.

How a large log travels in chunks and why the admit goes sealed:
``messages.py``. Why the host falls silent after a wrong proof: ``host.py``.
"""

from __future__ import annotations

# Re-exported: everything in __all__; FINAL_STATES, encode_message and
# LocalProtocolError, which callers reach through the package too; and the
# private names tests/invitations/test_protocol.py inspects (_Step, _PUBLIC,
# _FINAL_STEPS, the two transition tables, _MAX_SEALED).
from ...errors import LocalProtocolError as LocalProtocolError
from ._machine import _FINAL_STEPS as _FINAL_STEPS
from ._machine import _PUBLIC as _PUBLIC
from ._machine import FINAL_STATES as FINAL_STATES
from ._machine import ProtocolViolation, Session, State
from ._machine import _Step as _Step
from .events import (
    AdmissionReceived,
    AdmissionRequested,
    AttemptMade,
    Authenticated,
    AuthFailed,
    AuthSucceeded,
    Event,
    GuestConnected,
    HostChallenged,
    InvitationRequested,
    Refused,
    SendMessage,
)
from .guest import _GUEST_TRANSITIONS as _GUEST_TRANSITIONS
from .guest import GuestProtocol, GuestRequest, PeerRefused
from .host import _HOST_TRANSITIONS as _HOST_TRANSITIONS
from .host import HostProtocol
from .messages import _MAX_SEALED as _MAX_SEALED
from .messages import (
    ADMISSION_KEY_CONTEXT,
    ADMIT_SEAL_CONTEXT,
    MAX_CHAIN,
    MAX_CHUNK_BYTES,
    MAX_CREDENTIAL,
    MAX_ENTRIES,
    MAX_ENTRY,
    MAX_GUEST_MESSAGE,
    MAX_LOG_BYTES,
    MAX_LOG_ENTRIES,
    MAX_NAME,
    PROTOCOL_VERSION,
    REASON_ALREADY_MEMBER,
    REASON_WRONG_CODE,
    REASON_WRONG_KEY,
    REASON_WRONG_PIN,
    SHAREABLE_REASONS,
    SWARM_BOX,
    AdmitMsg,
    AdmittedMsg,
    ChallengeMsg,
    ConfirmMsg,
    EntriesMsg,
    HostInfo,
    KeyProofMsg,
    Kind,
    Message,
    Method,
    PakeMsg,
    RefusedMsg,
    RequestMsg,
    SealedAdmitMsg,
    SwarmGrant,
    admission_key_message,
    admit_seal_key,
    chunk_entries,
    cpace_channel_id,
    decode_message,
    open_admit,
    seal_admit,
    wire_reason,
)
from .messages import encode_message as encode_message

__all__ = [
    "ADMISSION_KEY_CONTEXT",
    "ADMIT_SEAL_CONTEXT",
    "MAX_CHAIN",
    "MAX_CHUNK_BYTES",
    "MAX_CREDENTIAL",
    "MAX_ENTRIES",
    "MAX_ENTRY",
    "MAX_GUEST_MESSAGE",
    "MAX_LOG_BYTES",
    "MAX_LOG_ENTRIES",
    "MAX_NAME",
    "PROTOCOL_VERSION",
    "REASON_ALREADY_MEMBER",
    "REASON_WRONG_CODE",
    "REASON_WRONG_KEY",
    "REASON_WRONG_PIN",
    "SHAREABLE_REASONS",
    "SWARM_BOX",
    "AdmissionReceived",
    "AdmissionRequested",
    "AdmitMsg",
    "AdmittedMsg",
    "AttemptMade",
    "AuthFailed",
    "AuthSucceeded",
    "Authenticated",
    "ChallengeMsg",
    "ConfirmMsg",
    "EntriesMsg",
    "Event",
    "GuestConnected",
    "GuestProtocol",
    "GuestRequest",
    "HostChallenged",
    "HostInfo",
    "HostProtocol",
    "InvitationRequested",
    "KeyProofMsg",
    "Kind",
    "Message",
    "Method",
    "PakeMsg",
    "PeerRefused",
    "ProtocolViolation",
    "Refused",
    "RefusedMsg",
    "RequestMsg",
    "SealedAdmitMsg",
    "SendMessage",
    "Session",
    "State",
    "SwarmGrant",
    "admission_key_message",
    "admit_seal_key",
    "chunk_entries",
    "cpace_channel_id",
    "decode_message",
    "open_admit",
    "seal_admit",
    "wire_reason",
]
