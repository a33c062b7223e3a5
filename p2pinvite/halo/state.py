"""Membership state of one log, and the validator the log calls on every entry.

Theory of operation
-------------------
A log (halo/log.py) stores credentials as opaque bytes. Before an entry is
written, and for every entry when a log is replayed, the log asks a
:class:`MembershipState` two things, in this order::

    checked = state.check(credential, verify_signatures=...)   # pure, may refuse
    state.apply(checked)                                         # infallible

``check`` decodes the credential, optionally verifies its signature and chain,
and tests it against the rules below *for the current state*; it never
changes the state, so a refused credential leaves everything as it was.
``apply`` performs the change ``check`` approved; it refuses (as a
:class:`~p2pinvite.errors.LocalProtocolError`, a bug in the caller) a value
checked against an older state, because rules such as ``already_member`` only
hold for the state they were checked against.

A log has a *kind*, fixed by its first entry:

* ``identity`` (an identity's HALO log): ``identity_genesis``, then
  ``authorized_device`` credentials. The identity key signs the genesis and
  the first device only; later devices are authorized by devices.
* ``space``: ``space_genesis`` naming the owner, then the owner's
  ``space_member(OWNER)`` signed by the space key, then ``space_member``
  credentials issued by members, signed by their devices.

Rules, by the name carried in ``CredentialError.rule`` (docs/PROTOCOL.md
Part 8 has the normative list)::

    malformed            not a canonical credential
    bad_signature        signer's signature is wrong
    bad_chain            chain does not prove signer is a device of issuer
    genesis_required     first entry is not a genesis
    duplicate_genesis    a genesis after the first entry
    bad_genesis          genesis not self-issued (issuer = subject = signer)
    wrong_genesis        genesis key is not the one this log was opened for
    wrong_log            credential type does not belong in this kind of log
    wrong_identity       authorized_device issued for another identity
    wrong_space          space_member names another space
    key_spent            identity/space key used after its single use
    owner_first          second space entry is not the owner's OWNER membership
    already_device       device already authorized
    unauthorized_device  signer is not an authorized device of this identity
    chain_too_deep       new device would need a chain above MAX_CHAIN_DEPTH
    issuer_not_member    issuer is not a member of the space
    issuer_removed       issuer was removed from the space
    not_admin            issuer is an EDITOR or READER
    owner_required       granting or removing ADMIN/OWNER needs an OWNER
    already_member       subject is already a (not removed) member
    not_member           removing someone who is not a member
    cannot_remove_owner  the genesis owner cannot be removed

Checks are pure (no I/O, no clock) so they can run on any thread and be
tested exhaustively.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..errors import CredentialError, DecodeError, LocalProtocolError, StorageError
from ..wire import pack, unpack
from .credentials import (
    MAX_CHAIN_DEPTH,
    AuthorizedDevice,
    Credential,
    CredentialVerifier,
    IdentityGenesis,
    MalformedCredential,
    Role,
    SpaceGenesis,
    SpaceMember,
    decode_credential,
)

__all__ = [
    "SNAPSHOT_VERSION",
    "CheckedEntry",
    "LogKind",
    "Member",
    "MembershipState",
    "SnapshotError",
]

#: Value of the ``v`` field of :meth:`MembershipState.snapshot`.
SNAPSHOT_VERSION: Final = 1
#: Roles that may admit and remove members.
_ADMITTERS: Final = frozenset({Role.OWNER, Role.ADMIN})
#: Roles only an OWNER may grant, or remove.
_PRIVILEGED: Final = frozenset({Role.OWNER, Role.ADMIN})


class LogKind(enum.StrEnum):
    """What a log holds: an identity's devices, or a space's members."""

    IDENTITY = "identity"
    SPACE = "space"


class SnapshotError(StorageError):
    """A state snapshot (a log checkpoint) does not decode or is inconsistent."""


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a space (or, in an identity log, the identity itself)."""

    identity: bytes
    role: Role
    name: str


@dataclass(frozen=True, slots=True)
class CheckedEntry:
    """A credential :meth:`MembershipState.check` approved, ready for ``apply``."""

    credential: Credential
    #: ``MembershipState.length`` when it was checked.
    generation: int
    _state: MembershipState


@dataclass(frozen=True, slots=True)
class _Device:
    signer: bytes  # the key that authorized it (identity key or another device)
    credential: bytes  # its AuthorizedDevice credential, chain emptied
    depth: int  # length of its chain


def _refuse(rule: str, message: str) -> CredentialError:
    return CredentialError(message, rule=rule)


class MembershipState:
    """Members, devices and redeemed invitations of one log; its entry validator.

    *kind* and *key*, when given, pin the log this state may describe: a
    first entry of another kind (rule ``wrong_log``) or for another key (rule
    ``wrong_genesis``) is refused, so a guest importing a space can insist
    on the space its invitation named. *verifier* may be shared between
    states to share its caches.
    """

    def __init__(
        self,
        *,
        kind: LogKind | None = None,
        key: bytes | None = None,
        verifier: CredentialVerifier | None = None,
    ) -> None:
        self._expected_kind = kind
        self._expected_key = key
        self._verifier = verifier if verifier is not None else CredentialVerifier()
        self._reset()

    def _reset(self) -> None:
        self._kind: LogKind | None = None
        self._key: bytes | None = None
        self._name = ""
        self._owner: bytes | None = None
        self._length = 0
        self._members: dict[bytes, tuple[Role, str]] = {}
        self._devices: dict[bytes, _Device] = {}
        self._redeemed: dict[bytes, int] = {}

    # -- EntryValidator -----------------------------------------------------------

    def check(self, credential: bytes, *, verify_signatures: bool) -> CheckedEntry:
        """Decode *credential* and test it against the current state.

        Raises :class:`CredentialError` with the refusing rule. With
        *verify_signatures* false (reopening our own hash-chained file) the
        Ed25519 checks are skipped, everything else still runs.
        """
        cred = decode_credential(credential)
        if verify_signatures:
            self._verifier.verify(cred)
        elif not cred.chain and cred.signer != cred.issuer:
            raise _refuse("bad_chain", "signer is not the issuer and no chain was given")
        if self._length == 0:
            self._check_genesis(cred)
        else:
            rule = _RULES.get((self._kind, type(cred.assertion)))
            if rule is None:
                if isinstance(cred.assertion, IdentityGenesis | SpaceGenesis):
                    raise _refuse("duplicate_genesis", "a genesis can only be the first entry")
                raise _refuse(
                    "wrong_log", f"{cred.type_name} does not belong in a {self._kind} log"
                )
            rule(self, cred)
        return CheckedEntry(cred, self._length, self)

    def apply(self, checked: object) -> None:
        """Apply a value :meth:`check` returned for this state, as it is now."""
        if not isinstance(checked, CheckedEntry) or checked._state is not self:
            raise LocalProtocolError("apply() takes a value check() returned for this state")
        if checked.generation != self._length:
            raise LocalProtocolError("entry was checked against an older state; check it again")
        cred = checked.credential
        a = cred.assertion
        if isinstance(a, IdentityGenesis):
            self._kind, self._key, self._name = LogKind.IDENTITY, cred.issuer, a.name
            self._owner = cred.issuer
        elif isinstance(a, SpaceGenesis):
            self._kind, self._key, self._name = LogKind.SPACE, cred.issuer, a.name
            self._owner = a.owner
        elif isinstance(a, AuthorizedDevice):
            parent = self._devices.get(cred.signer)
            depth = 1 if parent is None else parent.depth + 1
            self._devices[cred.subject] = _Device(cred.signer, cred.stripped().encode(), depth)
            self._count(a.invitation)
        elif isinstance(a, SpaceMember):
            if a.role is Role.REMOVED:
                self._members[cred.subject] = (Role.REMOVED, self._members[cred.subject][1])
            else:
                self._members[cred.subject] = (a.role, a.name)
                self._count(a.invitation)
        self._length += 1

    def add(self, credential: bytes, *, verify_signatures: bool = True) -> Credential:
        """``check`` then ``apply`` in one step; return the decoded credential."""
        checked = self.check(credential, verify_signatures=verify_signatures)
        self.apply(checked)
        return checked.credential

    def _count(self, invitation: bytes | None) -> None:
        if invitation is not None:
            self._redeemed[invitation] = self._redeemed.get(invitation, 0) + 1

    # -- rules ------------------------------------------------------------------------

    def _check_genesis(self, cred: Credential) -> None:
        a = cred.assertion
        if isinstance(a, IdentityGenesis):
            kind = LogKind.IDENTITY
        elif isinstance(a, SpaceGenesis):
            kind = LogKind.SPACE
        else:
            raise _refuse("genesis_required", "the first entry of a log must be a genesis")
        if self._expected_kind is not None and kind is not self._expected_kind:
            raise _refuse("wrong_log", f"expected a {self._expected_kind} log, got a {kind} log")
        if not cred.issuer == cred.subject == cred.signer or cred.chain:
            raise _refuse("bad_genesis", "a genesis is issued, signed and about its own key")
        if self._expected_key is not None and cred.issuer != self._expected_key:
            raise _refuse("wrong_genesis", "genesis is for another key than expected")

    def _check_device(self, cred: Credential) -> None:
        assert self._key is not None
        if cred.issuer != self._key:
            raise _refuse("wrong_identity", "device authorized for another identity")
        if cred.subject in self._devices or cred.subject == self._key:
            raise _refuse("already_device", "device is already authorized")
        if cred.signer == self._key:
            if self._devices:
                raise _refuse("key_spent", "the identity key only authorizes the first device")
            return
        parent = self._devices.get(cred.signer)
        if parent is None:
            raise _refuse("unauthorized_device", "signer is not a device of this identity")
        if parent.depth + 1 > MAX_CHAIN_DEPTH:
            raise _refuse(
                "chain_too_deep", f"device chains are limited to {MAX_CHAIN_DEPTH} devices"
            )

    def _check_member(self, cred: Credential) -> None:
        a = cred.assertion
        assert isinstance(a, SpaceMember)
        if a.space != self._key:
            raise _refuse("wrong_space", "membership is for another space")
        if self._length == 1:
            if not (
                cred.issuer == cred.signer == self._key
                and cred.subject == self._owner
                and a.role is Role.OWNER
            ):
                raise _refuse(
                    "owner_first",
                    "the entry after a space genesis must make its owner OWNER, "
                    "issued by the space key",
                )
            return
        if cred.issuer == self._key:
            raise _refuse("key_spent", "the space key only admits the owner")
        issuer = self._members.get(cred.issuer)
        if issuer is None:
            raise _refuse("issuer_not_member", "issuer is not a member of the space")
        issuer_role = issuer[0]
        if issuer_role is Role.REMOVED:
            raise _refuse("issuer_removed", "issuer was removed from the space")
        if issuer_role not in _ADMITTERS:
            raise _refuse("not_admin", "only OWNER and ADMIN members may admit or remove")
        current = self._members.get(cred.subject)
        current_role = None if current is None else current[0]
        if a.role is Role.REMOVED:
            if current_role is None or current_role is Role.REMOVED:
                raise _refuse("not_member", "cannot remove someone who is not a member")
            if cred.subject == self._owner:
                raise _refuse("cannot_remove_owner", "the space owner cannot be removed")
            if current_role in _PRIVILEGED and issuer_role is not Role.OWNER:
                raise _refuse("owner_required", "only an OWNER may remove an ADMIN or OWNER")
        else:
            if current_role is not None and current_role is not Role.REMOVED:
                raise _refuse("already_member", "identity is already a member")
            if a.role in _PRIVILEGED and issuer_role is not Role.OWNER:
                raise _refuse("owner_required", "only an OWNER may grant ADMIN or OWNER")

    # -- queries ------------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Number of entries applied."""
        return self._length

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

    def members(self) -> list[Member]:
        """Current members in admission order (removed ones excluded)."""
        if self._kind is LogKind.IDENTITY:
            assert self._key is not None
            return [Member(self._key, Role.OWNER, self._name)]
        return [Member(k, r, n) for k, (r, n) in self._members.items() if r is not Role.REMOVED]

    def removed(self) -> list[bytes]:
        """Identities that were members and have been removed."""
        return [k for k, (r, _) in self._members.items() if r is Role.REMOVED]

    def role_of(self, identity: bytes) -> Role | None:
        """*identity*'s role (REMOVED if removed), ``None`` if never a member."""
        if self._kind is LogKind.IDENTITY:
            return Role.OWNER if identity == self._key else None
        m = self._members.get(identity)
        return None if m is None else m[0]

    def is_member(self, identity: bytes) -> bool:
        """Whether *identity* is a current (not removed) member."""
        role = self.role_of(identity)
        return role is not None and role is not Role.REMOVED

    def devices(self) -> list[bytes]:
        """Authorized device keys of an identity log, in authorization order."""
        return list(self._devices)

    def is_device(self, device: bytes) -> bool:
        """Whether *device* is authorized in this identity log."""
        return device in self._devices

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
            chain.append(rec.credential)
            d = rec.signer
        return chain

    def redeemed(self, invitation_id: bytes) -> int:
        """How many admissions in this log redeemed *invitation_id*."""
        return self._redeemed.get(invitation_id, 0)

    # -- snapshot ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Canonical encoding of the whole state (see docs/PROTOCOL.md Part 8)."""
        return pack(
            {
                "v": SNAPSHOT_VERSION,
                "kind": None if self._kind is None else self._kind.value,
                "key": self._key,
                "name": self._name,
                "owner": self._owner,
                "length": self._length,
                "members": [[k, r.value, n] for k, (r, n) in self._members.items()],
                "devices": [[k, d.signer, d.credential] for k, d in self._devices.items()],
                "redeemed": [[k, n] for k, n in self._redeemed.items()],
            }
        )

    def restore(self, data: bytes) -> None:
        """Replace the state with a :meth:`snapshot`; :class:`SnapshotError` if it is bad.

        On error the state is left unchanged.
        """
        try:
            fields = _decode_snapshot(data)
        except (DecodeError, MalformedCredential, KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"state snapshot is unusable: {exc}") from None
        kind = fields["_kind"]
        if self._expected_kind is not None and kind not in (None, self._expected_kind):
            raise SnapshotError("state snapshot is for another kind of log")
        if self._expected_key is not None and fields["_key"] not in (None, self._expected_key):
            raise SnapshotError("state snapshot is for another key")
        for name, value in fields.items():
            setattr(self, name, value)


def _decode_snapshot(data: bytes) -> dict[str, Any]:
    # Checkpoints are our own files, but still parsed strictly: a bad one must
    # fail here (and make the log replay), not poison the rules later.
    m = unpack(data, max_size=1 << 30, max_items=1 << 24)
    if not isinstance(m, dict) or m.get("v") != SNAPSHOT_VERSION:
        raise ValueError("unknown snapshot version")
    if set(m) != {"v", "kind", "key", "name", "owner", "length", "members", "devices",
                  "redeemed"}:
        raise ValueError("unexpected fields")
    kind = None if m["kind"] is None else LogKind(m["kind"])
    key, owner, name, length = m["key"], m["owner"], m["name"], m["length"]
    if not isinstance(name, str) or not isinstance(length, int) or isinstance(length, bool):
        raise TypeError("bad name or length")
    for k in (key, owner):
        if k is not None and (not isinstance(k, bytes) or len(k) != 32):
            raise ValueError("bad key")
    if (kind is None) != (key is None) or (kind is None and length != 0) or length < 0:
        raise ValueError("inconsistent header")
    members: dict[bytes, tuple[Role, str]] = {}
    for ident, role, mname in m["members"]:
        if not isinstance(ident, bytes) or len(ident) != 32 or not isinstance(mname, str):
            raise TypeError("bad member")
        members[ident] = (Role(role), mname)
    devices: dict[bytes, _Device] = {}
    for dev, signer, cred_bytes in m["devices"]:
        cred = decode_credential(cred_bytes)
        if (
            not isinstance(cred.assertion, AuthorizedDevice)
            or cred.subject != dev
            or cred.signer != signer
            or cred.chain
        ):
            raise ValueError("bad device record")
        parent = devices.get(signer)
        if parent is None and signer != key:
            raise ValueError("device record out of order")
        devices[dev] = _Device(signer, cred_bytes, 1 if parent is None else parent.depth + 1)
    redeemed: dict[bytes, int] = {}
    for inv, count in m["redeemed"]:
        if not isinstance(inv, bytes) or not isinstance(count, int) or count < 1:
            raise TypeError("bad redeemed record")
        redeemed[inv] = count
    return {
        "_kind": kind,
        "_key": key,
        "_name": name,
        "_owner": owner,
        "_length": length,
        "_members": members,
        "_devices": devices,
        "_redeemed": redeemed,
    }


_Rule = Callable[[MembershipState, Credential], None]
#: Which check runs for which credential type in which kind of log (after the
#: genesis); a pair missing here is refused as ``wrong_log``.
_RULES: Final[dict[tuple[LogKind | None, type[Any]], _Rule]] = {
    (LogKind.IDENTITY, AuthorizedDevice): MembershipState._check_device,
    (LogKind.SPACE, SpaceMember): MembershipState._check_member,
}
