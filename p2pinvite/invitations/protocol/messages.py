"""Wire messages of the invitation protocol: limits, codec, the sealed admit, chunks.

Rules of this file
------------------
Pure data and pure functions, no state and no steps: which message may come
when is the machines' business (``host.py``, ``guest.py``). Each message is a
frozen dataclass that becomes a canonical msgpack map with a type field
``t`` (``to_map``, packed by :func:`encode_message`) and is read back
strictly (``from_map``, reached through :func:`decode_message`):
:class:`~p2pinvite.errors.DecodeError` for anything outside the limits
below. Also here: what a proof is bound to (:func:`admission_key_message`,
:func:`cpace_channel_id`) and which refusal reasons may cross the wire
(:func:`wire_reason`). docs/PROTOCOL.md Part 7 is the specification.

Theory of operation
-------------------
A log too large for one message travels in bounded chunks: ``admitted``
carries the first chunk and the total ``count``, then ``entries`` messages
follow until ``count`` entries arrived (every chunk at most
:data:`MAX_CHUNK_BYTES` encoded, the whole log at most
:data:`MAX_LOG_ENTRIES` entries and :data:`MAX_LOG_BYTES` bytes, so a host
cannot make a guest buffer without bound). A log that fits one chunk is one
``admitted`` without ``count``, as in the first version of the protocol.

With a PAKE the guest's ``admit`` travels *sealed* right behind its tag
(:func:`seal_admit`: ChaCha20-Poly1305 under a one-use key derived from the
CPace ISK), and the host's tag travels with the admission: one round trip
fewer than tag, tag, admit, admitted. Sealing keeps what the plain ``admit``
would reveal (the guest identity, its chain, its name) from anyone who does
not hold the PIN -- a relay holding the link included -- just as waiting for
the host's tag did; the host opens it only after the guest's tag verified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ...crypto.cpace import MAX_MESSAGE as CPACE_MAX_MESSAGE
from ...crypto.cpace import TAG_BYTES, lv_cat
from ...errors import UNIFORM_REFUSAL, DecodeError
from ...wire import expect_bytes, expect_int, expect_map, expect_str, pack, unpack

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
#: Largest log entry: the largest credential a log holds (halo/credentials.py
#: MAX_CREDENTIAL_SIZE), e.g. a ``swarm_key`` sealing a secret to 64 devices.
MAX_ENTRY: Final = 60_000
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
#: Largest message a guest sends (an ``admit_sealed`` with the largest box and its
#: map; a plain ``admit`` is 16 bytes smaller): what a host reads from a guest, so
#: a session can make it buffer little (docs/PROTOCOL.md Part 7 §2).
MAX_GUEST_MESSAGE: Final = _MAX_SEALED + 64
#: A sealed swarm secret: 32 bytes in a sealed box (ephemeral key and tag around it).
SWARM_BOX: Final = 32 + 48
# The seal key is used for exactly one message, so a fixed nonce is safe.
_SEAL_NONCE: Final = bytes(12)
# Encoded overhead of a chunk message besides its entries: map, type, field
# names, array header, count, the credential of an ``admitted`` with its header
# (msgpack bin16: 3 bytes) and its ``swarm`` grant (key, map, a uint32 epoch and
# the box: 105 bytes, 128 counted); each entry adds its length and a 3-byte
# header at most.
_CHUNK_OVERHEAD: Final = 64 + MAX_CREDENTIAL + 3 + 128
_ENTRY_HEADER: Final = 3

Kind: TypeAlias = Literal["device", "space"]
Method: TypeAlias = Literal["none", "pin", "short", "key"]
_KINDS: Final = ("device", "space")
_METHODS: Final = ("none", "pin", "short", "key")
_PAKE_METHODS: Final = frozenset({"pin", "short"})

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
class SwarmGrant:
    """The log's swarm secret for the guest: its *epoch*, and the secret sealed to the
    guest device's Noise static key (a sealed box, docs/PROTOCOL.md Part 12 §2)."""

    epoch: int
    box: bytes = field(repr=False)

    def to_map(self) -> dict[str, Any]:
        """The grant as a map."""
        return {"epoch": self.epoch, "box": self.box}

    @classmethod
    def from_map(cls, value: Any) -> SwarmGrant:
        """Decode, strictly: exactly ``epoch`` (1..2^32-1) and ``box`` (80 bytes)."""
        m = expect_map(value, "swarm")
        _only(m, frozenset({"epoch", "box"}), frozenset(), "swarm")
        return cls(expect_int(m, "epoch", lo=1, hi=2**32 - 1),
                   expect_bytes(m, "box", size=SWARM_BOX))


@dataclass(frozen=True, slots=True)
class AdmittedMsg:
    """H→G: the guest's new credential, the log entries, and the log's swarm secret.

    ``entries`` is the first chunk of the log; ``count`` is present only when
    more follows in :class:`EntriesMsg` chunks, and is then the total number
    of entries (greater than ``len(entries)``). ``swarm`` lets the new member
    join the log's member swarm at once.
    """

    T: ClassVar[str] = "admitted"
    credential: bytes
    entries: tuple[bytes, ...] = field(repr=False)
    swarm: SwarmGrant
    count: int | None = None

    def to_map(self) -> dict[str, Any]:
        """The message as a map."""
        m: dict[str, Any] = {"t": self.T, "credential": self.credential,
                             "entries": list(self.entries), "swarm": self.swarm.to_map()}
        if self.count is not None:
            m["count"] = self.count
        return m

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> AdmittedMsg:
        """Decode, strictly: a ``count`` must announce more than this chunk holds."""
        _only(m, frozenset({"t", "credential", "entries", "swarm"}), frozenset({"count"}),
              "admitted")
        credential = expect_bytes(m, "credential", max_size=MAX_CREDENTIAL)
        entries = _expect_list(m, "entries", max_items=MAX_ENTRIES, max_size=MAX_ENTRY)
        swarm = SwarmGrant.from_map(m["swarm"])
        if "count" not in m:
            if not entries:
                raise DecodeError("admitted: the log cannot be empty")
            return cls(credential, entries, swarm)
        count = expect_int(m, "count", lo=1, hi=MAX_LOG_ENTRIES)
        if count <= len(entries):
            raise DecodeError("admitted: count present but nothing more announced")
        return cls(credential, entries, swarm, count)


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
