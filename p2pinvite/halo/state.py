"""Membership state of one log: what its applied entries say, as plain data.

Theory of operation
-------------------
A :class:`MembershipState` is the *result* of resolving a log (halo/resolve.py
decides which entries apply, in which order; halo/rules.py decides whether
one may). It knows nothing about order or rules: :meth:`MembershipState.apply`
performs one change the resolver approved, and the queries read the result.

It holds entries by their *position* in the log's DAG (halo/dag.py), not by
copies of their fields: a member is ``(role, index of its admission entry)``,
and its name, admitter, time and invitation are read from that entry's
:class:`Fact` when asked. That keeps the state small and makes a checkpoint
of a space of 100,000 members restore in a few dictionary builds
(:meth:`snapshot`, :meth:`restore`).

A log has a *kind*, fixed by its genesis:

* ``identity`` (an identity's HALO log): ``identity_genesis``, then
  ``authorized_device`` credentials; the state lists the devices and can
  build each device's chain.
* ``space``: ``space_genesis`` naming the owner, the owner's
  ``space_member(OWNER)`` signed by the space key, then ``space_member``
  credentials (admissions, role changes, removals) issued by members.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..errors import DecodeError, LocalProtocolError, StorageError
from ..wire import pack, unpack
from .credentials import (
    AuthorizedDevice,
    Credential,
    IdentityGenesis,
    RevokedDevice,
    Role,
    SpaceGenesis,
    SpaceMember,
    SwarmKey,
)

__all__ = [
    "ROLES",
    "SNAPSHOT_VERSION",
    "Device",
    "Fact",
    "FactKind",
    "Facts",
    "Intent",
    "KeyInForce",
    "LogKind",
    "Member",
    "MembershipState",
    "SnapshotError",
    "fact_of",
    "split_keys",
]

#: Value of the ``v`` field of :meth:`MembershipState.snapshot`.
SNAPSHOT_VERSION: Final = 3
#: Roles by their code (the snapshot and the rules use codes): OWNER is 0.
ROLES: Final = (Role.OWNER, Role.ADMIN, Role.EDITOR, Role.READER, Role.REMOVED)
_ROLE_CODE: Final = {r: i for i, r in enumerate(ROLES)}
OWNER, ADMIN, EDITOR, READER, REMOVED = range(5)
#: "Not a member": the code role_code() gives for an unknown identity.
NONE: Final = 5


class LogKind(enum.StrEnum):
    """What a log holds: an identity's devices, or a space's members."""

    IDENTITY = "identity"
    SPACE = "space"


class FactKind(enum.IntEnum):
    """The credential types, as small integers."""

    IDENTITY_GENESIS = 0
    AUTHORIZED_DEVICE = 1
    SPACE_GENESIS = 2
    SPACE_MEMBER = 3
    REVOKED_DEVICE = 4
    SWARM_KEY = 5


class Intent(enum.IntEnum):
    """What an entry does, decided from its own view (halo/rules.py ``classify``).

    CHANGE, REMOVE, LEAVE and REVOKE are *power* entries: the resolver
    orders them before concurrent admissions. ROTATE is a ``swarm_key`` with
    a new secret, GRANT one that seals the secret in force to more devices.
    """

    GENESIS = 0
    OWNER = 1  # the owner's first membership, signed by the space key
    ADMIT = 2
    CHANGE = 3
    REMOVE = 4
    LEAVE = 5
    DEVICE = 6
    FOREIGN = 7  # a credential type that does not belong in this kind of log
    REVOKE = 8  # a device leaves its identity (revoked_device)
    ROTATE = 9
    GRANT = 10


class SnapshotError(StorageError):
    """A state snapshot (part of a log checkpoint) does not decode or is inconsistent."""


@dataclass(frozen=True, slots=True)
class Fact:
    """What the rules and the state read from one credential (decoded once, kept small).

    ``target`` is the space of a ``space_member``, the owner of a
    ``space_genesis`` and the log of a ``swarm_key``; ``epoch`` and ``check``
    are a ``swarm_key``'s (0 and None otherwise); ``core`` is the credential's
    encoding with ``chain`` emptied (the bytes its id hashes; for an ``authorized_device``, the form
    it takes as a chain element).
    """

    id: bytes
    kind: FactKind
    issuer: bytes
    subject: bytes
    signer: bytes
    issued_at: int
    parents: tuple[bytes, ...]
    role: Role | None
    name: str
    invitation: bytes | None
    target: bytes | None
    core: bytes
    epoch: int = 0
    check: bytes | None = None


def fact_of(cred: Credential) -> Fact:
    """The :class:`Fact` of a decoded credential."""
    a = cred.assertion
    role: Role | None = None
    invitation: bytes | None = None
    target: bytes | None = None
    if isinstance(a, SpaceMember):
        kind, role, name, invitation, target = (
            FactKind.SPACE_MEMBER, a.role, a.name, a.invitation, a.space)
    elif isinstance(a, AuthorizedDevice):
        kind, name, invitation = FactKind.AUTHORIZED_DEVICE, "", a.invitation
    elif isinstance(a, SpaceGenesis):
        kind, name, target = FactKind.SPACE_GENESIS, a.name, a.owner
    elif isinstance(a, SwarmKey):
        return Fact(cred.id, FactKind.SWARM_KEY, cred.issuer, cred.subject, cred.signer,
                    cred.issued_at, cred.parents, None, "", None, cred.subject, cred.core,
                    a.epoch, a.check)
    elif isinstance(a, RevokedDevice):
        kind, name = FactKind.REVOKED_DEVICE, ""
    else:
        assert isinstance(a, IdentityGenesis)
        kind, name = FactKind.IDENTITY_GENESIS, a.name
    return Fact(cred.id, kind, cred.issuer, cred.subject, cred.signer, cred.issued_at,
                cred.parents, role, name, invitation, target, cred.core)


class Facts(Protocol):
    """Where a state finds the entries it refers to by position (a :class:`~.dag.Dag`)."""

    def fact(self, index: int) -> Fact:
        """The fact of the entry at *index*."""
        ...


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a space (or, in an identity log, the identity itself).

    ``admitted_by`` is the issuer of the admission (the space key for the
    owner's first membership), ``admitted_at`` its ``issued_at`` (unix ms),
    ``invitation`` the invitation it redeemed, ``entry`` its entry id. A role
    change keeps all of them; a new admission after a removal replaces them.
    """

    identity: bytes
    role: Role
    name: str
    admitted_by: bytes
    admitted_at: int
    invitation: bytes | None
    entry: bytes


@dataclass(frozen=True, slots=True)
class Device:
    """A device of an identity log: who authorized it (a device or the identity key)."""

    device: bytes
    authorized_by: bytes
    authorized_at: int
    invitation: bytes | None
    entry: bytes
    depth: int  # length of its chain


@dataclass(frozen=True, slots=True)
class KeyInForce:
    """The log's swarm secret in force, as the log knows it.

    ``epoch`` 1 is the log's first secret (made with it, never in the log:
    ``check`` None, no ``entries``). A rotation sets a new one: ``entries``
    are the facts of the ``swarm_key`` entries sealing it, the rotation first,
    then its grants. ``stale``: a member was removed, left, or a device was
    revoked after it was set, so it must be rotated again.
    """

    epoch: int
    check: bytes | None
    entries: tuple[Fact, ...]
    stale: bool


def _u32(data: bytes) -> list[int]:
    return _u32_array(data).tolist()


def _u32_array(data: bytes) -> array[int]:
    if not isinstance(data, bytes) or len(data) % 4:
        raise ValueError("a u32 column")
    a = array("I")
    if a.itemsize != 4:  # pragma: no cover - every CPython platform we run on
        raise SnapshotError("no 32-bit array type")
    a.frombytes(data)
    if _BIG_ENDIAN:  # pragma: no cover
        a.byteswap()
    return a


def _u32_bytes(values: Sequence[int]) -> bytes:
    a = array("I", values)
    if _BIG_ENDIAN:  # pragma: no cover
        a.byteswap()
    return a.tobytes()


_BIG_ENDIAN: Final = array("I", [1]).tobytes()[0] == 0


class MembershipState:
    """Members, devices and redeemed invitations of one log, as resolved.

    *facts* resolves entry positions to their facts (the log's DAG). The
    state changes only through :meth:`apply`, which the resolver calls for
    entries it has approved; it never checks rules itself.
    """

    __slots__ = ("_devices", "_facts", "_key", "_keys", "_kind", "_members", "_name",
                 "_owner", "_redeemed", "_revoked", "_root", "_stale")

    def __init__(self, facts: Facts) -> None:
        self._facts = facts
        self._kind: LogKind | None = None
        self._key: bytes | None = None
        self._name = ""
        self._owner: bytes | None = None
        self._root = -1  # index of the genesis
        # identity -> index of its admission entry << 3 | role code (one int per
        # member: a checkpoint of many members restores without a tuple each)
        self._members: dict[bytes, int] = {}
        # device -> (signer, chain depth, index of its authorized_device entry)
        self._devices: dict[bytes, tuple[bytes, int, int]] = {}
        # invitation id -> indices of the admissions that redeemed it, in order
        self._redeemed: dict[bytes, array[int]] = {}
        # revoked device -> index of its revoked_device entry (its record stays
        # in _devices: devices it authorized keep their chains)
        self._revoked: dict[bytes, int] = {}
        # the swarm_key entries of the secret in force (rotation first), empty
        # for the log's first secret; and whether a removal came after it
        self._keys: tuple[int, ...] = ()
        self._stale = False

    def copy(self) -> MembershipState:
        """An independent copy (the resolver's views of past states)."""
        c = MembershipState(self._facts)
        c._kind, c._key, c._name, c._owner, c._root = (
            self._kind, self._key, self._name, self._owner, self._root)
        c._members = self._members.copy()
        c._devices = self._devices.copy()
        c._redeemed = {k: array("I", v) for k, v in self._redeemed.items()}
        c._revoked = self._revoked.copy()
        c._keys, c._stale = self._keys, self._stale
        return c

    def assume(self, other: MembershipState) -> None:
        """Become *other* (which must not be used afterwards): a recompute's result.

        The resolver replaces the running state in place, so whoever holds
        this object keeps reading the current state.
        """
        self._facts = other._facts
        self._kind, self._key, self._name, self._owner, self._root = (
            other._kind, other._key, other._name, other._owner, other._root)
        self._members, self._devices, self._redeemed = (
            other._members, other._devices, other._redeemed)
        self._revoked, self._keys, self._stale = other._revoked, other._keys, other._stale

    # -- changes (the resolver's) ---------------------------------------------------------

    def apply(self, fact: Fact, intent: Intent, index: int) -> None:
        """Perform what entry *index* (*fact*, classified as *intent*) says.

        The resolver calls this only for entries the rules approved against
        this very state, so every precondition holds; a violated one is a bug.
        """
        if intent is Intent.GENESIS:
            if fact.kind is FactKind.IDENTITY_GENESIS:
                self._kind, self._owner = LogKind.IDENTITY, fact.issuer
            else:
                self._kind, self._owner = LogKind.SPACE, fact.target
            self._key, self._name, self._root = fact.issuer, fact.name, index
        elif intent is Intent.OWNER or intent is Intent.ADMIT:
            assert fact.role is not None
            self._members[fact.subject] = index << 3 | _ROLE_CODE[fact.role]
            self._count(fact.invitation, index)
        elif intent is Intent.CHANGE or intent is Intent.REMOVE or intent is Intent.LEAVE:
            assert fact.role is not None
            self._members[fact.subject] = (self._members[fact.subject] & ~7
                                           | _ROLE_CODE[fact.role])
            if intent is not Intent.CHANGE:
                self._stale = True  # the removed member holds the secret in force
        elif intent is Intent.REVOKE:
            self._revoked[fact.subject] = index
            self._stale = True
        elif intent is Intent.ROTATE:
            self._keys, self._stale = (index,), False
        elif intent is Intent.GRANT:
            self._keys += (index,)
        elif intent is Intent.DEVICE:
            parent = self._devices.get(fact.signer)
            depth = 1 if parent is None else parent[1] + 1
            self._devices[fact.subject] = (fact.signer, depth, index)
            self._count(fact.invitation, index)
        else:
            raise LocalProtocolError(f"nothing to apply for intent {intent!r}")

    def _count(self, invitation: bytes | None, index: int) -> None:
        if invitation is not None:
            self._redeemed.setdefault(invitation, array("I")).append(index)

    # -- what the rules read ---------------------------------------------------------------

    def role_code(self, identity: bytes) -> int:
        """*identity*'s role as a code (0 OWNER .. 4 REMOVED), 5 if never a member."""
        m = self._members.get(identity)
        return NONE if m is None else m & 7

    def device_depth(self, device: bytes) -> int:
        """The chain depth of a current (authorized, not revoked) *device*, 0 if it is not one."""
        d = self._devices.get(device)
        return 0 if d is None or device in self._revoked else d[1]

    def was_device(self, device: bytes) -> bool:
        """Whether *device* was ever authorized here (revoked ones included)."""
        return device in self._devices

    def key_in_force(self) -> KeyInForce:
        """The swarm secret in force (see :class:`KeyInForce`)."""
        if not self._keys:
            return KeyInForce(1, None, (), self._stale)
        facts = tuple(map(self._facts.fact, self._keys))
        return KeyInForce(facts[0].epoch, facts[0].check, facts, self._stale)

    @property
    def has_members(self) -> bool:
        """Whether any membership was applied (a space's owner membership, first)."""
        return bool(self._members)

    @property
    def device_count(self) -> int:
        """Number of devices ever authorized (revoked ones included)."""
        return len(self._devices)

    @property
    def current_device_count(self) -> int:
        """Number of current (not revoked) devices."""
        return len(self._devices) - len(self._revoked)

    # -- queries -------------------------------------------------------------------------------

    @property
    def kind(self) -> LogKind | None:
        """The log's kind, or ``None`` before its genesis."""
        return self._kind

    @property
    def key(self) -> bytes | None:
        """The genesis key: the space key or the identity key."""
        return self._key

    @property
    def space_key(self) -> bytes | None:
        """The space key of a space log (``None`` otherwise)."""
        return self._key if self._kind is LogKind.SPACE else None

    @property
    def identity_key(self) -> bytes | None:
        """The identity key of an identity log (``None`` otherwise)."""
        return self._key if self._kind is LogKind.IDENTITY else None

    @property
    def name(self) -> str:
        """The space name, or the identity's profile name."""
        return self._name

    @property
    def owner(self) -> bytes | None:
        """The owner identity named by the genesis (an identity owns its own log)."""
        return self._owner

    def _member(self, identity: bytes, value: int) -> Member:
        f = self._facts.fact(value >> 3)
        return Member(identity, ROLES[value & 7], f.name, f.issuer, f.issued_at, f.invitation,
                      f.id)

    def member(self, identity: bytes) -> Member | None:
        """*identity*'s membership (role REMOVED if removed), ``None`` if never a member."""
        if self._kind is LogKind.IDENTITY:
            return self._identity_member() if identity == self._key else None
        m = self._members.get(identity)
        return None if m is None else self._member(identity, m)

    def _identity_member(self) -> Member:
        assert self._key is not None
        g = self._facts.fact(self._root)
        return Member(self._key, Role.OWNER, self._name, self._key, g.issued_at, None, g.id)

    def members(self) -> list[Member]:
        """Current members in first-admission order (removed ones excluded)."""
        if self._kind is LogKind.IDENTITY:
            return [self._identity_member()]
        return [self._member(k, v) for k, v in self._members.items() if v & 7 != REMOVED]

    def removed(self) -> list[bytes]:
        """Identities that were members and have been removed (or left)."""
        return [k for k, v in self._members.items() if v & 7 == REMOVED]

    def role_of(self, identity: bytes) -> Role | None:
        """*identity*'s role (REMOVED if removed), ``None`` if never a member."""
        if self._kind is LogKind.IDENTITY:
            return Role.OWNER if identity == self._key else None
        m = self._members.get(identity)
        return None if m is None else ROLES[m & 7]

    def is_member(self, identity: bytes) -> bool:
        """Whether *identity* is a current (not removed) member."""
        role = self.role_of(identity)
        return role is not None and role is not Role.REMOVED

    def devices(self) -> list[bytes]:
        """Current device keys of an identity log, in authorization order."""
        return [d for d in self._devices if d not in self._revoked]

    def revoked_devices(self) -> list[bytes]:
        """Devices of an identity log that were revoked, in revocation order."""
        return list(self._revoked)

    def device(self, device: bytes) -> Device | None:
        """The authorization of *device*, ``None`` if it is not authorized here."""
        d = self._devices.get(device)
        if d is None:
            return None
        f = self._facts.fact(d[2])
        return Device(device, d[0], f.issued_at, f.invitation, f.id, d[1])

    def is_device(self, device: bytes) -> bool:
        """Whether *device* is a current device of this identity log (not revoked)."""
        return device in self._devices and device not in self._revoked

    def device_chain(self, device: bytes) -> list[bytes]:
        """The chain proving *device* belongs to the identity, for ``chain`` fields.

        ``[AuthorizedDevice(device), AuthorizedDevice(its signer), ...]``, each
        with its chain emptied, ending with one signed by the identity key.
        Raises :class:`LocalProtocolError` for a device not in this log.
        """
        chain: list[bytes] = []
        d = device
        while d != self._key:
            rec = self._devices.get(d)
            if rec is None:
                raise LocalProtocolError("device is not authorized in this identity log")
            chain.append(self._facts.fact(rec[2]).core)
            d = rec[0]
        return chain

    def redeemed(self, invitation_id: bytes) -> int:
        """How many applied admissions redeemed *invitation_id*."""
        return len(self._redeemed.get(invitation_id, ()))

    def invitations(self) -> list[bytes]:
        """Invitation ids some applied admission redeemed, in first-redemption order."""
        return list(self._redeemed)

    def redeemers(self, invitation_id: bytes) -> list[bytes]:
        """Subjects of the applied admissions that redeemed *invitation_id*, in order."""
        return [self._facts.fact(i).subject for i in self._redeemed.get(invitation_id, ())]

    # -- snapshot ------------------------------------------------------------------------------

    def snapshot_fields(self) -> dict[str, Any]:
        """The whole state as msgpack-able columns (docs/PROTOCOL.md Part 9, checkpoint)."""
        members, devices = self._members, self._devices
        return {
            "v": SNAPSHOT_VERSION,
            "kind": None if self._kind is None else self._kind.value,
            "key": self._key,
            "name": self._name,
            "owner": self._owner,
            "root": max(self._root, 0),
            "member_ids": b"".join(members),
            "members": _u32_bytes(list(members.values())),
            "device_ids": b"".join(devices),
            "device_signers": b"".join(s for s, _, _ in devices.values()),
            "device_entries": _u32_bytes([i for _, _, i in devices.values()]),
            "redeemed": [[k, _u32_bytes(v)] for k, v in self._redeemed.items()],
            "revoked_ids": b"".join(self._revoked),
            "revoked": _u32_bytes(list(self._revoked.values())),
            "keys": _u32_bytes(self._keys),
            "stale": self._stale,
        }

    def snapshot(self) -> bytes:
        """:meth:`snapshot_fields`, encoded."""
        return pack(self.snapshot_fields())

    @classmethod
    def restore(cls, facts: Facts, data: bytes | dict[str, Any], *,
                entries: int) -> MembershipState:
        """The state a :meth:`snapshot` (or its fields) describes, over *entries* entries.

        Raises :class:`SnapshotError` for anything that does not decode or is
        inconsistent (sizes, codes, entry positions out of range, a device
        whose signer was not authorized before it).
        """
        try:
            m = unpack(data, max_size=1 << 30, max_items=1 << 24) \
                if isinstance(data, bytes) else data
            return cls._restore(facts, m, entries)
        except (DecodeError, KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"state snapshot is unusable: {exc}") from None

    @classmethod
    def _restore(cls, facts: Facts, m: Any, n: int) -> MembershipState:
        if not isinstance(m, dict) or m.get("v") != SNAPSHOT_VERSION:
            raise ValueError("unknown snapshot version")
        if set(m) != _SNAPSHOT_FIELDS:
            raise ValueError("unexpected fields")
        s = cls(facts)
        s._kind = None if m["kind"] is None else LogKind(m["kind"])
        s._key, s._owner, s._name, s._root = m["key"], m["owner"], m["name"], m["root"]
        if not isinstance(s._name, str) or not isinstance(s._root, int) or not 0 <= s._root < n:
            raise ValueError("bad name or root")
        for k in (s._key, s._owner):
            if k is not None and (not isinstance(k, bytes) or len(k) != 32):
                raise ValueError("bad key")
        if s._kind is None or s._key is None or s._owner is None:
            raise ValueError("a snapshot is taken after the genesis")
        ids, values = split_keys(m["member_ids"]), _u32(m["members"])
        if len(ids) != len(values):
            raise ValueError("member columns differ in length")
        # A C-speed check: every entry is in the DAG. (Role codes are not
        # checked one by one here: the checkpoint is ours and CRC-checked; a bad
        # code would be a bug, and ROLES[code] refuses it where it is read.)
        if values and max(values) >> 3 >= n:
            raise ValueError("bad member record")
        s._members = dict(zip(ids, values, strict=True))
        if len(s._members) != len(ids):
            raise ValueError("duplicate member")
        devs, signers = split_keys(m["device_ids"]), split_keys(m["device_signers"])
        dentries = _u32(m["device_entries"])
        if not len(devs) == len(signers) == len(dentries):
            raise ValueError("device columns differ in length")
        for dev, signer, i in zip(devs, signers, dentries, strict=True):
            parent = s._devices.get(signer)
            if (parent is None and signer != s._key) or dev in s._devices or i >= n:
                raise ValueError("device record out of order")
            s._devices[dev] = (signer, 1 if parent is None else parent[1] + 1, i)
        for inv, raw in m["redeemed"]:
            idx = _u32_array(raw)
            if not isinstance(inv, bytes) or not idx or max(idx) >= n:
                raise ValueError("bad redeemed record")
            s._redeemed[inv] = idx
        revoked, rentries = split_keys(m["revoked_ids"]), _u32(m["revoked"])
        if len(revoked) != len(rentries) or any(
                d not in s._devices or i >= n for d, i in zip(revoked, rentries, strict=True)):
            raise ValueError("bad revoked record")
        s._revoked = dict(zip(revoked, rentries, strict=True))
        keys = _u32(m["keys"])
        if any(i >= n for i in keys) or not isinstance(m["stale"], bool):
            raise ValueError("bad swarm key record")
        s._keys, s._stale = tuple(keys), m["stale"]
        return s

    def same_as(self, other: MembershipState) -> bool:
        """Whether *other* holds exactly the same state (for tests and checks)."""
        return self.snapshot() == other.snapshot()


_SNAPSHOT_FIELDS: Final = frozenset({
    "v", "kind", "key", "name", "owner", "root", "member_ids", "members",
    "device_ids", "device_signers", "device_entries", "redeemed", "revoked_ids", "revoked",
    "keys", "stale",
})
_KEYS: Final = struct.Struct("32s")


def split_keys(data: Any) -> list[bytes]:
    """A column of 32-byte keys (ids) as a list (``ValueError`` if it is not one)."""
    if not isinstance(data, bytes) or len(data) % 32:
        raise ValueError("a key column is a multiple of 32 bytes")
    return [k for (k,) in _KEYS.iter_unpack(data)]  # twice as fast as slicing
