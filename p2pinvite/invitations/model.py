"""Invitation records: what the host remembers about each invitation it issued.

An :class:`Invitation` is an immutable snapshot; the store replaces it with an
updated copy (``dataclasses.replace``) on every mutation, so a record that was
handed out never changes under its holder.

Status is *derived* from the counters and timestamps, never stored, so it can
not disagree with them. The rule, first match wins::

    revoked_at is set                       -> REVOKED    (tombstone)
    failed_attempts >= max_attempts         -> LOCKED
    max_uses is set and uses >= max_uses    -> EXHAUSTED  (every use consumed)
    now >= expires_at                       -> EXPIRED
    uses >= 1                               -> ACCEPTED   (accepted, still open)
    otherwise                               -> PENDING

PENDING and ACCEPTED are the two *usable* statuses. A single-use invitation
that was accepted is therefore EXHAUSTED (its ``accepted_by`` says by whom);
ACCEPTED marks a multi-use or unlimited invitation that has admitted someone
and still admits more.

Reasons (:class:`InvitationError.reason`) and what a remote peer may learn of
them are defined here too (:func:`refusal_for_peer`): a remote peer is told
:data:`~p2pinvite.errors.UNIFORM_REFUSAL` for everything except a wrong PIN /
short code that still has attempts left, which the guest needs to retry.

Field validation lives in ``__post_init__`` so no code path can build an
inconsistent record; decoding turns those failures into
:class:`~p2pinvite.errors.DecodeError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from ..errors import UNIFORM_REFUSAL, DecodeError, InvitationError, LocalProtocolError
from ..wire import expect_bytes, expect_int, expect_map, expect_str, pack, unpack

__all__ = [
    "DEFAULT_EXPIRY_LINK",
    "DEFAULT_EXPIRY_SHORT",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_ATTEMPTS_SHORT",
    "INVITABLE_ROLES",
    "MAX_ACCEPTED_RECORDED",
    "MAX_NOTE_LENGTH",
    "MAX_USES_LIMIT",
    "REASONS",
    "RECORD_VERSION",
    "ROLES",
    "AuthMethod",
    "InvalidInvitation",
    "Invitation",
    "InvitationKind",
    "InvitationStatus",
    "PeerRefusal",
    "refusal_for_peer",
]


class InvitationKind(StrEnum):
    """What accepting the invitation grants."""

    DEVICE = "device"  #: a new device joins the host's identity (HALO)
    SPACE = "space"  #: another identity joins a space with a role


class AuthMethod(StrEnum):
    """How the guest proves, beyond holding the code, that it is the intended guest."""

    NONE = "none"  #: the link secret alone gates the channel
    PIN = "pin"  #: CPace with a 6-digit PIN shown on the host
    SHORT = "short"  #: the whole pairing is a short numeric code (CPace on its secret part)
    KEY = "key"  #: the guest signs the handshake hash with a named admission key


class InvitationStatus(StrEnum):
    """Derived status of an invitation (see the module docstring for the rule)."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    EXPIRED = "expired"
    REVOKED = "revoked"
    LOCKED = "locked"
    EXHAUSTED = "exhausted"


#: Every role name of a space. The halo layer has its own enum; the model
#: stays independent of it and speaks the same strings.
ROLES: Final = frozenset({"owner", "admin", "editor", "reader"})
#: Roles a space invitation may grant. The owner is named once, by the space's
#: genesis entry; it is never granted by invitation. Whether the *issuer* may
#: grant a role (only an owner grants admin) is checked when the credential is
#: written, by the halo rules, not here.
INVITABLE_ROLES: Final = frozenset({"admin", "editor", "reader"})

#: Default lifetime of a link-code invitation (auth none / pin / key): 7 days.
DEFAULT_EXPIRY_LINK: Final = 7 * 24 * 3600.0
#: Default lifetime of a short-code invitation: 15 minutes.
DEFAULT_EXPIRY_SHORT: Final = 15 * 60.0
#: Failed authentications tolerated before the invitation locks.
DEFAULT_MAX_ATTEMPTS: Final = 3
#: Short codes are typed by hand and carry more entropy (10^7 secrets), so more
#: typos are tolerated: 20 guesses in 10^7 is a 2e-6 chance.
DEFAULT_MAX_ATTEMPTS_SHORT: Final = 20
#: Upper bound of a finite ``max_uses`` and of ``max_attempts``.
MAX_USES_LIMIT: Final = 1_000_000
MAX_ATTEMPTS_LIMIT: Final = 1000
#: ``accepted_by`` keeps the most recent entries only, so the record of an
#: unlimited invitation stays small; ``uses`` stays exact and the space log is
#: the authoritative history of who was admitted.
MAX_ACCEPTED_RECORDED: Final = 1000
MAX_NOTE_LENGTH: Final = 1024
#: Version of the record map (field ``v``). 2 added ``locked_at``.
RECORD_VERSION: Final = 2
#: Exclusive upper bound of timestamps: link codes carry expiry as uint32.
_MAX_TIME: Final = float(2**32)

#: Every reason an :class:`InvitationError` raised by this package may carry.
REASONS: Final = frozenset(
    {
        "unknown",  # no such invitation (never existed, or its record was quarantined)
        "expired",
        "revoked",
        "locked",  # too many failed authentication attempts
        "exhausted",  # every use consumed
        "reserved",  # every remaining use is held by an admission in progress
        "wrong_pin",  # CPace with the PIN failed (set by the handshake layer)
        "wrong_code",  # CPace with the short code's secret failed
    }
)
#: Reasons a remote peer may learn, and only while attempts are left.
_PEER_VISIBLE: Final = frozenset({"wrong_pin", "wrong_code"})


class InvalidInvitation(LocalProtocolError):
    """Invitation fields that are inconsistent or out of range (a caller's mistake)."""


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidInvitation(message)


def _is_key(v: object) -> bool:
    return isinstance(v, bytes) and len(v) == 32


def _is_time(v: object) -> bool:
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and 0 <= v < _MAX_TIME
    )


def _is_digits(v: object, n: int) -> bool:
    return isinstance(v, str) and len(v) == n and v.isascii() and v.isdigit()


def _is_count(v: object, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi


@dataclass(frozen=True, slots=True)
class Invitation:
    """One invitation as the host records it.

    Secret material (``secret``, ``pin``, ``short_secret``) is excluded from
    the repr. ``secret`` is the 256-bit link secret; it exists for every
    invitation, but only link codes (auth none / pin / key) carry it. Times
    are unix seconds. ``accepted_by`` holds ``(identity key, accepted at)``
    pairs, oldest first, at most :data:`MAX_ACCEPTED_RECORDED` of them.
    """

    id: bytes
    kind: InvitationKind
    target: bytes
    role: str | None
    auth: AuthMethod
    secret: bytes = field(repr=False)
    created_at: float
    expires_at: float
    created_by: bytes
    pin: str | None = field(default=None, repr=False)
    short_discriminator: str | None = None
    short_secret: str | None = field(default=None, repr=False)
    admission_key: bytes | None = None
    max_uses: int | None = 1
    uses: int = 0
    failed_attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    note: str = ""
    accepted_by: tuple[tuple[bytes, float], ...] = ()
    revoked_at: float | None = None
    revoked_by: bytes | None = None
    #: When the last attempt was spent (set exactly when locked): a restarted
    #: host keeps answering on the topic for a while after it, as after any end.
    locked_at: float | None = None

    def __post_init__(self) -> None:
        _need(isinstance(self.id, bytes) and len(self.id) == 16, "id must be 16 bytes")
        _need(isinstance(self.kind, InvitationKind), "kind must be an InvitationKind")
        _need(isinstance(self.auth, AuthMethod), "auth must be an AuthMethod")
        _need(_is_key(self.target), "target must be a 32-byte key")
        _need(_is_key(self.secret), "secret must be 32 bytes")
        _need(_is_key(self.created_by), "created_by must be a 32-byte key")
        if self.kind is InvitationKind.SPACE:
            _need(self.role in INVITABLE_ROLES,
                  f"a space invitation grants one of {sorted(INVITABLE_ROLES)}")
        else:
            _need(self.role is None, "a device invitation carries no role")
        # The auth material must be present exactly when the method uses it.
        is_pin = self.auth is AuthMethod.PIN
        is_short = self.auth is AuthMethod.SHORT
        is_key = self.auth is AuthMethod.KEY
        _need(_is_digits(self.pin, 6) if is_pin else self.pin is None,
              "a 6-digit pin is required for auth pin, and only then")
        _need(_is_digits(self.short_discriminator, 4) if is_short
              else self.short_discriminator is None,
              "a 4-digit short discriminator is required for auth short, and only then")
        _need(_is_digits(self.short_secret, 7) if is_short else self.short_secret is None,
              "a 7-digit short secret is required for auth short, and only then")
        _need(_is_key(self.admission_key) if is_key else self.admission_key is None,
              "a 32-byte admission key is required for auth key, and only then")
        _need(_is_time(self.created_at) and _is_time(self.expires_at),
              "created_at and expires_at must be unix seconds below 2**32")
        _need(self.expires_at > self.created_at, "expires_at must be after created_at")
        _need(self.max_uses is None
              or (_is_count(self.max_uses, MAX_USES_LIMIT) and self.max_uses >= 1),
              f"max_uses must be None (unlimited) or 1..{MAX_USES_LIMIT}")
        _need(_is_count(self.uses, 2**63 - 1 if self.max_uses is None else self.max_uses),
              "uses must be between 0 and max_uses")
        _need(_is_count(self.max_attempts, MAX_ATTEMPTS_LIMIT) and self.max_attempts >= 1,
              f"max_attempts must be 1..{MAX_ATTEMPTS_LIMIT}")
        _need(_is_count(self.failed_attempts, self.max_attempts),
              "failed_attempts must be between 0 and max_attempts")
        _need(isinstance(self.note, str) and len(self.note) <= MAX_NOTE_LENGTH,
              f"note must be a string of at most {MAX_NOTE_LENGTH} characters")
        _need(isinstance(self.accepted_by, tuple)
              and len(self.accepted_by) <= MAX_ACCEPTED_RECORDED
              and len(self.accepted_by) <= self.uses
              and all(isinstance(e, tuple) and len(e) == 2 and _is_key(e[0]) and _is_time(e[1])
                      for e in self.accepted_by),
              "accepted_by must hold (32-byte key, time) pairs, at most one per use")
        _need((self.revoked_at is None) == (self.revoked_by is None),
              "revoked_at and revoked_by are set together")
        _need(self.revoked_at is None or _is_time(self.revoked_at), "revoked_at must be a time")
        _need(self.revoked_by is None or _is_key(self.revoked_by),
              "revoked_by must be a 32-byte key")
        _need((self.locked_at is not None) == (self.failed_attempts >= self.max_attempts),
              "locked_at is set exactly when no attempt is left")
        _need(self.locked_at is None or _is_time(self.locked_at), "locked_at must be a time")
        # Normalise ints to floats so a record equals its decoded copy exactly.
        for name in ("created_at", "expires_at", "revoked_at", "locked_at"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, float):
                object.__setattr__(self, name, float(v))
        if any(not isinstance(at, float) for _, at in self.accepted_by):
            object.__setattr__(self, "accepted_by",
                               tuple((k, float(at)) for k, at in self.accepted_by))

    # -- status -------------------------------------------------------------

    def status(self, now: float) -> InvitationStatus:
        """The derived status at time *now* (rule in the module docstring)."""
        if self.revoked_at is not None:
            return InvitationStatus.REVOKED
        if self.failed_attempts >= self.max_attempts:
            return InvitationStatus.LOCKED
        if self.max_uses is not None and self.uses >= self.max_uses:
            return InvitationStatus.EXHAUSTED
        if now >= self.expires_at:
            return InvitationStatus.EXPIRED
        if self.uses >= 1:
            return InvitationStatus.ACCEPTED
        return InvitationStatus.PENDING

    def is_usable(self, now: float) -> bool:
        """True when the invitation may still admit someone (PENDING or ACCEPTED)."""
        return self.status(now) in (InvitationStatus.PENDING, InvitationStatus.ACCEPTED)

    @property
    def uses_left(self) -> int | None:
        """Uses not yet committed (``None`` when unlimited)."""
        return None if self.max_uses is None else self.max_uses - self.uses

    @property
    def attempts_left(self) -> int:
        """Failed authentications still tolerated before the invitation locks."""
        return self.max_attempts - self.failed_attempts

    def refusal(self, now: float) -> InvitationError | None:
        """The precise error for using this invitation at *now*, or ``None`` if usable."""
        st = self.status(now)
        if st in (InvitationStatus.PENDING, InvitationStatus.ACCEPTED):
            return None
        return InvitationError(f"invitation {self.id.hex()} is {st.value}", reason=st.value)

    # -- encoding -----------------------------------------------------------

    def to_map(self) -> dict[str, Any]:
        """The record as a msgpack-ready map (format in docs/PROTOCOL.md Part 3)."""
        return {
            "v": RECORD_VERSION,
            "id": self.id,
            "kind": self.kind.value,
            "target": self.target,
            "role": self.role,
            "auth": self.auth.value,
            "secret": self.secret,
            "pin": self.pin,
            "short_discriminator": self.short_discriminator,
            "short_secret": self.short_secret,
            "admission_key": self.admission_key,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "max_uses": self.max_uses,
            "uses": self.uses,
            "failed_attempts": self.failed_attempts,
            "max_attempts": self.max_attempts,
            "note": self.note,
            "created_by": self.created_by,
            "accepted_by": [[k, at] for k, at in self.accepted_by],
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
            "locked_at": self.locked_at,
        }

    def to_bytes(self) -> bytes:
        """Canonical msgpack encoding of :meth:`to_map`."""
        return pack(self.to_map())

    @classmethod
    def from_map(cls, value: Any) -> Invitation:
        """Decode a record map strictly; anything unexpected raises DecodeError."""
        m = expect_map(value, "invitation record")
        if set(m) != _FIELDS:
            raise DecodeError("invitation record has missing or unknown fields")
        if expect_int(m, "v") != RECORD_VERSION:
            raise DecodeError(f"unsupported invitation record version {m['v']}")
        try:
            kind = InvitationKind(expect_str(m, "kind", max_len=16))
            auth = AuthMethod(expect_str(m, "auth", max_len=16))
        except ValueError:
            raise DecodeError("invitation record has an unknown kind or auth method") from None
        accepted = m["accepted_by"]
        if not isinstance(accepted, list) or len(accepted) > MAX_ACCEPTED_RECORDED:
            raise DecodeError("field 'accepted_by' must be a short list")
        pairs: list[tuple[bytes, float]] = []
        for entry in accepted:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise DecodeError("accepted_by entries must be [key, time] pairs")
            pairs.append((_bytes_of(entry[0], "accepted_by key"),
                          _time_of(entry[1], "accepted_by time")))
        try:
            return cls(
                id=expect_bytes(m, "id", size=16),
                kind=kind,
                target=expect_bytes(m, "target", size=32),
                role=_opt_str(m, "role"),
                auth=auth,
                secret=expect_bytes(m, "secret", size=32),
                pin=_opt_str(m, "pin"),
                short_discriminator=_opt_str(m, "short_discriminator"),
                short_secret=_opt_str(m, "short_secret"),
                admission_key=_opt_bytes(m, "admission_key"),
                created_at=_time_of(m["created_at"], "created_at"),
                expires_at=_time_of(m["expires_at"], "expires_at"),
                max_uses=None if m["max_uses"] is None else expect_int(m, "max_uses"),
                uses=expect_int(m, "uses"),
                failed_attempts=expect_int(m, "failed_attempts"),
                max_attempts=expect_int(m, "max_attempts"),
                note=expect_str(m, "note", max_len=MAX_NOTE_LENGTH),
                created_by=expect_bytes(m, "created_by", size=32),
                accepted_by=tuple(pairs),
                revoked_at=None if m["revoked_at"] is None
                else _time_of(m["revoked_at"], "revoked_at"),
                revoked_by=_opt_bytes(m, "revoked_by"),
                locked_at=None if m["locked_at"] is None
                else _time_of(m["locked_at"], "locked_at"),
            )
        except InvalidInvitation as exc:
            raise DecodeError(f"inconsistent invitation record: {exc}") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Invitation:
        """Inverse of :meth:`to_bytes` (strict: see :meth:`from_map`)."""
        return cls.from_map(unpack(data, max_size=_MAX_RECORD_BYTES,
                                   max_items=MAX_ACCEPTED_RECORDED))


_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(Invitation)) | {"v"}
#: A record with MAX_ACCEPTED_RECORDED entries is ~50 KB; leave ample room.
_MAX_RECORD_BYTES: Final = 256 * 1024


def _time_of(v: Any, what: str) -> float:
    if not _is_time(v):
        raise DecodeError(f"field {what!r} must be a time in [0, 2**32)")
    return float(v)


def _bytes_of(v: Any, what: str) -> bytes:
    if not _is_key(v):
        raise DecodeError(f"field {what!r} must be 32 bytes")
    assert isinstance(v, bytes)
    return v


def _opt_bytes(m: Mapping[str, Any], key: str) -> bytes | None:
    return None if m[key] is None else _bytes_of(m[key], key)


def _opt_str(m: Mapping[str, Any], key: str) -> str | None:
    return None if m[key] is None else expect_str(m, key, max_len=16)


# -- what a remote peer may be told -------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerRefusal:
    """What the host sends a remote guest whose request was refused.

    ``reason`` is :data:`~p2pinvite.errors.UNIFORM_REFUSAL` unless the guest
    typed a wrong PIN / short code and may retry, in which case it is
    ``"wrong_pin"`` / ``"wrong_code"`` and ``attempts_left`` is positive.
    """

    reason: str
    attempts_left: int | None = None


def refusal_for_peer(error: InvitationError) -> PeerRefusal:
    """Map a precise refusal to what a remote peer may learn.

    Expired, revoked, locked, exhausted, reserved and unknown all look the
    same from outside, so a peer cannot probe which invitations exist. A wrong
    PIN with attempts left is the one exception: the guest already knows its
    PAKE failed (key confirmation fails), and needs the count to decide
    whether to retry. The failure that used the last attempt is uniform too.
    """
    if (error.reason in _PEER_VISIBLE and error.attempts_left is not None
            and error.attempts_left > 0):
        return PeerRefusal(error.reason, error.attempts_left)
    return PeerRefusal(UNIFORM_REFUSAL)
