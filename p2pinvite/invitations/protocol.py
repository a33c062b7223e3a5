"""The invitation protocol, sans-IO: a host machine and a guest machine.

Rules of this file
------------------
Nothing here does I/O, knows about trio, or reads a clock. A machine is fed
decoded-or-not messages (``receive_message(bytes)``) and decisions of its
driver (``offer``, ``check_attempt``, ``admit``, ...); every call returns the
list of *events* it produced, in order. One kind of event, :class:`SendMessage`,
names bytes the driver must send to the peer; the others ask the driver for a
decision that needs I/O (a store lookup, a persisted failed attempt, a log
append) or report progress. docs/PROTOCOL.md Part 7 is the wire specification.

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

A log too large for one message travels in bounded chunks: ``admitted``
carries the first chunk and the total ``count``, then ``entries`` messages
follow until ``count`` entries arrived (every chunk at most
:data:`MAX_CHUNK_BYTES` encoded, the whole log at most
:data:`MAX_LOG_ENTRIES` entries and :data:`MAX_LOG_BYTES` bytes, so a host
cannot make a guest buffer without bound). A log that fits one chunk is one
``admitted`` without ``count``, as in the first version of the protocol.

Each side's CPace share depends only on the session and the password and
reveals nothing about the password, so both go out at once; the guest's
tag, the first thing that does depend on the password, waits until the
challenge was checked and the host's share arrived.

With a PAKE the guest's ``admit`` travels *sealed* right behind its tag
(:func:`seal_admit`: ChaCha20-Poly1305 under a one-use key derived from the
CPace ISK), and the host's tag travels with the admission: one round trip
fewer than tag, tag, admit, admitted. Sealing keeps what the plain ``admit``
would reveal (the guest identity, its chain, its name) from anyone who does
not hold the PIN -- a relay holding the link included -- just as waiting for
the host's tag did; the host opens it only after the guest's tag verified.

A wrong proof moves the host machine to a step where it says nothing:
:class:`AuthFailed` asks the driver to count the failed attempt and make it
durable, and only :meth:`HostProtocol.attempt_counted` produces the refusal.
So no answer that depends on the password leaves before a failed guess is
on disk, and a right proof costs no write at all.

Each machine walks fine-grained *steps*; ``_HOST_TRANSITIONS`` and
``_GUEST_TRANSITIONS`` below are the complete tables ``{step: {input: step}}``
and ``_ANY_LIVE`` the inputs allowed in every non-final step (cancel, timeout,
connection lost, protocol violation). Every step maps to one public
:class:`State` (the names the design uses and the manager reports).

Errors: a peer that breaks the protocol raises a
:class:`~p2pinvite.errors.RemoteProtocolError` subclass whose ``refusal`` is
the wire reason to send back, if any (the machine is then in ERROR); calling
a method out of turn raises :class:`~p2pinvite.errors.LocalProtocolError` and
leaves the machine unchanged. Secrets (PIN, short code secret, ISK) never
appear in a repr, an event or an exception message.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..crypto.cpace import MAX_MESSAGE as CPACE_MAX_MESSAGE
from ..crypto.cpace import TAG_BYTES, CPace, CPaceRole, lv_cat
from ..errors import (
    UNIFORM_REFUSAL,
    CryptoError,
    DecodeError,
    HandshakeError,
    InvitationError,
    LocalProtocolError,
    RemoteProtocolError,
)
from ..halo.keys import Signer, verify_binding_proof, verify_ed25519
from ..wire import expect_bytes, expect_int, expect_map, expect_str, pack, unpack

__all__ = [
    "ADMISSION_KEY_CONTEXT",
    "ADMIT_SEAL_CONTEXT",
    "MAX_CHAIN",
    "MAX_CHUNK_BYTES",
    "MAX_CREDENTIAL",
    "MAX_ENTRIES",
    "MAX_ENTRY",
    "MAX_LOG_BYTES",
    "MAX_LOG_ENTRIES",
    "MAX_NAME",
    "PROTOCOL_VERSION",
    "REASON_ALREADY_MEMBER",
    "REASON_WRONG_CODE",
    "REASON_WRONG_KEY",
    "REASON_WRONG_PIN",
    "SHAREABLE_REASONS",
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
    "admission_key_message",
    "admit_seal_key",
    "chunk_entries",
    "cpace_channel_id",
    "decode_message",
    "open_admit",
    "seal_admit",
    "wire_reason",
]

#: Version carried in the request; a host refuses any other.
PROTOCOL_VERSION: Final = 1
#: Domain separation of the admission-key signature over the handshake hash.
ADMISSION_KEY_CONTEXT: Final = b"p2pinvite/admission-key/v1\x00"
#: Domain separation of the key that seals the guest's ``admit`` under a PAKE.
ADMIT_SEAL_CONTEXT: Final = b"p2pinvite/admit-seal/v1\x00"

#: Refusal reasons that may be sent to a remote peer as they are. Every other
#: reason travels as :data:`~p2pinvite.errors.UNIFORM_REFUSAL`.
REASON_WRONG_PIN: Final = "wrong_pin"
REASON_WRONG_CODE: Final = "wrong_code"
REASON_WRONG_KEY: Final = "wrong_key"
REASON_ALREADY_MEMBER: Final = "already_member"
SHAREABLE_REASONS: Final = frozenset({REASON_WRONG_PIN, REASON_WRONG_CODE, REASON_WRONG_KEY,
                                      REASON_ALREADY_MEMBER, UNIFORM_REFUSAL})

#: Limits of the decoder (docs/PROTOCOL.md Part 7, "Limits").
MAX_CHAIN: Final = 16
MAX_CREDENTIAL: Final = 4096
#: Most log entries in one ``admitted`` or ``entries`` message.
MAX_ENTRIES: Final = 4096
MAX_ENTRY: Final = 8192
#: Largest encoded application message of this protocol (an ``admitted`` or
#: ``entries`` chunk, or anything else).
MAX_CHUNK_BYTES: Final = 256 * 1024
#: Most entries, and most entry bytes, of one delivered log (all chunks).
MAX_LOG_ENTRIES: Final = 1_000_000
MAX_LOG_BYTES: Final = 512 * 1024 * 1024
MAX_NAME: Final = 128
_MAX_REASON: Final = 64
_MAX_ATTEMPTS_LEFT: Final = 1_000_000
_INVITATION_ID_SIZE: Final = 16
_KEY: Final = 32
_SIG: Final = 64
_MAX_WIRE: Final = MAX_CHUNK_BYTES
# The largest sealed admit: a full chain, the keys, a 128-character name in
# UTF-8 and the map around them, plus the 16-byte AEAD tag.
_MAX_SEALED: Final = MAX_CHAIN * (MAX_CREDENTIAL + 3) + 1024 + 16
# The seal key is used for exactly one message, so a fixed nonce is safe.
_SEAL_NONCE: Final = bytes(12)
# Encoded overhead of a chunk message besides its entries: map, type, field
# names, array header, and the credential of an ``admitted`` with its header
# (msgpack bin16: 3 bytes); each entry adds its length and a 3-byte header at most.
_CHUNK_OVERHEAD: Final = 64 + MAX_CREDENTIAL + 3
_ENTRY_HEADER: Final = 3

Kind: TypeAlias = Literal["device", "space"]
Method: TypeAlias = Literal["none", "pin", "short", "key"]
_KINDS: Final = ("device", "space")
_METHODS: Final = ("none", "pin", "short", "key")
_PAKE_METHODS: Final = frozenset({"pin", "short"})


class ProtocolViolation(RemoteProtocolError):
    """The peer sent a message that is valid msgpack but wrong here (type, order, content)."""

    def __init__(self, message: str, *, refusal: str | None = UNIFORM_REFUSAL) -> None:
        super().__init__(message, refusal=refusal)


class PeerRefused(InvitationError):
    """The host answered with a refusal (guest side); ``reason`` is the wire reason."""


def wire_reason(reason: str) -> str:
    """The reason a remote peer may be told for the precise local *reason*."""
    return reason if reason in SHAREABLE_REASONS else UNIFORM_REFUSAL


def admission_key_message(handshake_hash: bytes) -> bytes:
    """What an admission key signs: ``ADMISSION_KEY_CONTEXT || handshake_hash``."""
    return ADMISSION_KEY_CONTEXT + handshake_hash


def cpace_channel_id(initiator_static: bytes, responder_static: bytes) -> bytes:
    """CPace CI: ``lv_cat(initiator Noise static key, responder Noise static key)``."""
    return lv_cat(initiator_static, responder_static)


# --------------------------------------------------------------------------
# Messages (canonical msgpack maps with a type field "t")
# --------------------------------------------------------------------------


def _expect_list(m: Mapping[str, Any], key: str, *, max_items: int, max_size: int) -> tuple[
        bytes, ...]:
    v = m.get(key)
    if not isinstance(v, list):
        raise DecodeError(f"field {key!r} must be a list")
    if len(v) > max_items:
        raise DecodeError(f"field {key!r} has more than {max_items} items")
    out: list[bytes] = []
    for item in v:
        if not isinstance(item, bytes) or len(item) > max_size:
            raise DecodeError(f"field {key!r} must hold byte strings of at most {max_size} bytes")
        out.append(item)
    return tuple(out)


def _only(m: Mapping[str, Any], required: frozenset[str], optional: frozenset[str] = frozenset(),
          what: str = "message") -> None:
    keys = set(m)
    missing = required - keys
    if missing:
        raise DecodeError(f"{what} lacks field(s) {sorted(missing)}")
    extra = keys - required - optional
    if extra:
        raise DecodeError(f"{what} has unexpected field(s) {sorted(extra)}")


@dataclass(frozen=True, slots=True)
class RequestMsg:
    """G→H: which invitation the guest wants to use (``invitation`` absent for short codes)."""

    T: ClassVar[str] = "request"
    invitation: bytes | None
    kind: Kind
    version: int = PROTOCOL_VERSION

    def to_map(self) -> dict[str, Any]:
        """The message as a map (``encode`` packs it)."""
        m: dict[str, Any] = {"t": self.T, "v": self.version, "kind": self.kind}
        if self.invitation is not None:
            m["invitation"] = self.invitation
        return m

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> RequestMsg:
        """Decode, strictly."""
        _only(m, frozenset({"t", "v", "kind"}), frozenset({"invitation"}), "request")
        version = expect_int(m, "v", hi=0xFFFF)
        kind = expect_str(m, "kind", max_len=16)
        if kind not in _KINDS:
            raise DecodeError("request: unknown kind")
        inv = expect_bytes(m, "invitation", size=_INVITATION_ID_SIZE) if "invitation" in m else None
        return cls(inv, kind, version)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class HostInfo:
    """Who the host is: its identity key, device key and the chain authorizing the device."""

    identity: bytes
    device: bytes
    chain: tuple[bytes, ...] = ()

    def to_map(self) -> dict[str, Any]:
        """The nested ``host`` map."""
        return {"identity": self.identity, "device": self.device, "chain": list(self.chain)}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> HostInfo:
        """Decode, strictly."""
        _only(m, frozenset({"identity", "device", "chain"}), what="challenge.host")
        return cls(expect_bytes(m, "identity", size=_KEY), expect_bytes(m, "device", size=_KEY),
                   _expect_list(m, "chain", max_items=MAX_CHAIN, max_size=MAX_CREDENTIAL))


@dataclass(frozen=True, slots=True)
class ChallengeMsg:
    """H→G: the authentication method and who the host is."""

    T: ClassVar[str] = "challenge"
    method: Method
    host: HostInfo

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        return {"t": self.T, "method": self.method, "host": self.host.to_map()}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> ChallengeMsg:
        """Decode, strictly."""
        _only(m, frozenset({"t", "method", "host"}), what="challenge")
        method = expect_str(m, "method", max_len=16)
        if method not in _METHODS:
            raise DecodeError("challenge: unknown method")
        host = HostInfo.from_map(expect_map(m.get("host"), "challenge.host"))
        return cls(method, host)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PakeMsg:
    """Either way: one CPace message ``lv_cat(Y, AD)``."""

    T: ClassVar[str] = "pake"
    msg: bytes = field(repr=False)

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        return {"t": self.T, "msg": self.msg}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> PakeMsg:
        """Decode, strictly."""
        _only(m, frozenset({"t", "msg"}), what="pake")
        return cls(expect_bytes(m, "msg", max_size=CPACE_MAX_MESSAGE))


@dataclass(frozen=True, slots=True)
class ConfirmMsg:
    """Either way: a CPace key-confirmation tag (64 bytes)."""

    T: ClassVar[str] = "confirm"
    tag: bytes = field(repr=False)

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        return {"t": self.T, "tag": self.tag}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> ConfirmMsg:
        """Decode, strictly."""
        _only(m, frozenset({"t", "tag"}), what="confirm")
        return cls(expect_bytes(m, "tag", size=TAG_BYTES))


@dataclass(frozen=True, slots=True)
class KeyProofMsg:
    """G→H: the admission public key and its signature over the handshake hash."""

    T: ClassVar[str] = "key_proof"
    key: bytes
    sig: bytes = field(repr=False)

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        return {"t": self.T, "key": self.key, "sig": self.sig}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> KeyProofMsg:
        """Decode, strictly."""
        _only(m, frozenset({"t", "key", "sig"}), what="key_proof")
        return cls(expect_bytes(m, "key", size=_KEY), expect_bytes(m, "sig", size=_SIG))


@dataclass(frozen=True, slots=True)
class AdmitMsg:
    """G→H: what to admit. ``identity``/``chain`` for space invitations only."""

    T: ClassVar[str] = "admit"
    device: bytes
    identity: bytes | None = None
    chain: tuple[bytes, ...] = ()
    name: str = ""

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        m: dict[str, Any] = {"t": self.T, "device": self.device, "profile": {"name": self.name}}
        if self.identity is not None:
            m["identity"] = self.identity
            m["chain"] = list(self.chain)
        return m

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> AdmitMsg:
        """Decode, strictly: ``identity`` and ``chain`` come together or not at all."""
        _only(m, frozenset({"t", "device", "profile"}), frozenset({"identity", "chain"}), "admit")
        device = expect_bytes(m, "device", size=_KEY)
        profile = expect_map(m.get("profile"), "admit.profile")
        _only(profile, frozenset({"name"}), what="admit.profile")
        name = expect_str(profile, "name", max_len=MAX_NAME)
        if ("identity" in m) != ("chain" in m):
            raise DecodeError("admit: identity and chain come together")
        if "identity" not in m:
            return cls(device, None, (), name)
        identity = expect_bytes(m, "identity", size=_KEY)
        chain = _expect_list(m, "chain", max_items=MAX_CHAIN, max_size=MAX_CREDENTIAL)
        return cls(device, identity, chain, name)


@dataclass(frozen=True, slots=True)
class SealedAdmitMsg:
    """G→H, after a PAKE: the ``admit`` message sealed under the CPace ISK (:func:`seal_admit`)."""

    T: ClassVar[str] = "admit_sealed"
    box: bytes = field(repr=False)

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        return {"t": self.T, "box": self.box}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> SealedAdmitMsg:
        """Decode, strictly (opening it needs the session: :func:`open_admit`)."""
        _only(m, frozenset({"t", "box"}), what="admit_sealed")
        return cls(expect_bytes(m, "box", max_size=_MAX_SEALED))


def admit_seal_key(isk: bytes) -> bytes:
    """The one-use key sealing the guest's ``admit``: ``SHA-512(ADMIT_SEAL_CONTEXT || ISK)[:32]``.

    The context separates it from CPace's own use of ISK (the confirmation
    MAC key hashes ``"CPaceMac" || sid || ISK``).
    """
    return hashlib.sha512(ADMIT_SEAL_CONTEXT + isk).digest()[:32]


def seal_admit(isk: bytes, msg: AdmitMsg) -> SealedAdmitMsg:
    """Seal *msg* for the host of this PAKE run: ChaCha20-Poly1305, zero nonce, no AD."""
    box = ChaCha20Poly1305(admit_seal_key(isk)).encrypt(_SEAL_NONCE, encode_message(msg), None)
    return SealedAdmitMsg(box)


def open_admit(isk: bytes, sealed: SealedAdmitMsg) -> AdmitMsg:
    """Open a sealed admit; :class:`DecodeError` if it does not open or is not an ``admit``."""
    try:
        plain = ChaCha20Poly1305(admit_seal_key(isk)).decrypt(_SEAL_NONCE, sealed.box, None)
    except InvalidTag:
        raise DecodeError("admit_sealed: does not open under this session's key") from None
    msg = decode_message(plain)
    if not isinstance(msg, AdmitMsg):
        raise DecodeError("admit_sealed: the sealed message is not an admit")
    return msg


@dataclass(frozen=True, slots=True)
class AdmittedMsg:
    """H→G: the guest's new credential and the log entries from genesis up to it.

    ``entries`` is the first chunk of the log; ``count`` is present only when
    more follows in :class:`EntriesMsg` chunks, and is then the total number
    of entries (greater than ``len(entries)``).
    """

    T: ClassVar[str] = "admitted"
    credential: bytes
    entries: tuple[bytes, ...] = field(repr=False)
    count: int | None = None

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        m: dict[str, Any] = {"t": self.T, "credential": self.credential,
                             "entries": list(self.entries)}
        if self.count is not None:
            m["count"] = self.count
        return m

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> AdmittedMsg:
        """Decode, strictly: a ``count`` must announce more than this chunk holds."""
        _only(m, frozenset({"t", "credential", "entries"}), frozenset({"count"}), "admitted")
        credential = expect_bytes(m, "credential", max_size=MAX_CREDENTIAL)
        entries = _expect_list(m, "entries", max_items=MAX_ENTRIES, max_size=MAX_ENTRY)
        if "count" not in m:
            if not entries:
                raise DecodeError("admitted: the log cannot be empty")
            return cls(credential, entries)
        count = expect_int(m, "count", lo=1, hi=MAX_LOG_ENTRIES)
        if count <= len(entries):
            raise DecodeError("admitted: count present but nothing more announced")
        return cls(credential, entries, count)


@dataclass(frozen=True, slots=True)
class EntriesMsg:
    """H→G: the next chunk of the log after an ``admitted`` that announced a ``count``."""

    T: ClassVar[str] = "entries"
    entries: tuple[bytes, ...] = field(repr=False)

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        return {"t": self.T, "entries": list(self.entries)}

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> EntriesMsg:
        """Decode, strictly (a chunk is never empty)."""
        _only(m, frozenset({"t", "entries"}), what="entries")
        entries = _expect_list(m, "entries", max_items=MAX_ENTRIES, max_size=MAX_ENTRY)
        if not entries:
            raise DecodeError("entries: a chunk cannot be empty")
        return cls(entries)


def chunk_entries(entries: Sequence[bytes]) -> list[tuple[bytes, ...]]:
    """Split a log into chunks that each fit one message (the first one an ``admitted``).

    Greedy, in order: a chunk takes entries while the encoded message stays
    within :data:`MAX_CHUNK_BYTES` and :data:`MAX_ENTRIES` items.
    """
    budget = MAX_CHUNK_BYTES - _CHUNK_OVERHEAD
    chunks: list[tuple[bytes, ...]] = []
    current: list[bytes] = []
    used = 0
    for e in entries:
        cost = len(e) + _ENTRY_HEADER
        if current and (used + cost > budget or len(current) == MAX_ENTRIES):
            chunks.append(tuple(current))
            current, used = [], 0
        current.append(e)
        used += cost
    if current:
        chunks.append(tuple(current))
    return chunks


@dataclass(frozen=True, slots=True)
class RefusedMsg:
    """H→G: the host will not go on; ``attempts_left`` only with a wrong PIN or key."""

    T: ClassVar[str] = "refused"
    reason: str
    attempts_left: int | None = None

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        m: dict[str, Any] = {"t": self.T, "reason": self.reason}
        if self.attempts_left is not None:
            m["attempts_left"] = self.attempts_left
        return m

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> RefusedMsg:
        """Decode, strictly."""
        _only(m, frozenset({"t", "reason"}), frozenset({"attempts_left"}), "refused")
        reason = expect_str(m, "reason", max_len=_MAX_REASON)
        left = (expect_int(m, "attempts_left", hi=_MAX_ATTEMPTS_LEFT)
                if "attempts_left" in m else None)
        return cls(reason, left)


Message: TypeAlias = (RequestMsg | ChallengeMsg | PakeMsg | ConfirmMsg | KeyProofMsg | AdmitMsg
                      | SealedAdmitMsg | AdmittedMsg | EntriesMsg | RefusedMsg)

_DECODERS: Final[dict[str, Callable[[Mapping[str, Any]], Message]]] = {
    cls.T: cls.from_map
    for cls in (RequestMsg, ChallengeMsg, PakeMsg, ConfirmMsg, KeyProofMsg, AdmitMsg,
                SealedAdmitMsg, AdmittedMsg, EntriesMsg, RefusedMsg)
}


def encode_message(msg: Message) -> bytes:
    """Canonical msgpack bytes of *msg*."""
    return pack(msg.to_map())


def decode_message(data: bytes) -> Message:
    """Decode one application message strictly; :class:`DecodeError` for anything wrong."""
    m = expect_map(unpack(data, max_size=_MAX_WIRE, max_items=MAX_ENTRIES), "message")
    t = m.get("t")
    decoder = _DECODERS.get(t) if isinstance(t, str) else None
    if decoder is None:
        raise DecodeError("message has no known type field 't'")
    return decoder(m)


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


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


Event: TypeAlias = (SendMessage | GuestConnected | InvitationRequested | AttemptMade
                    | AuthSucceeded | AuthFailed | AdmissionRequested | HostChallenged
                    | Authenticated | Refused | AdmissionReceived)


# --------------------------------------------------------------------------
# States and transition tables
# --------------------------------------------------------------------------


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

_S = _Step

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

#: Inputs accepted in every step that is not final, on both machines.
_ANY_LIVE: Final[dict[_In, _Step]] = {
    _In.CANCEL: _S.CANCELLED,
    _In.TIMED_OUT: _S.TIMEOUT,
    _In.LOST: _S.ERROR,
    _In.FAIL: _S.ERROR,
}

#: Precise local refusal reasons that have their own final state.
_REFUSE_INPUT: Final[dict[str, _In]] = {
    "expired": _In.REFUSE_EXPIRED,
    "revoked": _In.REFUSE_REVOKED,
    "locked": _In.REFUSE_LOCKED,
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

    def admit(self, credential: bytes, entries: Sequence[bytes]) -> list[Event]:
        """Answer the admission request: the issued credential and the log entries.

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
        out.append(self._send(AdmittedMsg(credential, chunks[0], count)))
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
            # The admit goes sealed right behind our tag (see the module notes).
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
                return [AdmissionReceived(msg.credential, msg.entries)]
            self._credential, self._log = msg.credential, list(msg.entries)
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
        return [AdmissionReceived(self._credential, log)]

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

