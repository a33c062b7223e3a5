"""Reusable builders and hypothesis strategies for credentials and logs.

For other test files (the log's, the resolver's, the invitation protocol's,
benchmarks):

* :class:`IdentityBuilder` -- an identity with its HALO log and devices;
* :class:`SpaceBuilder` -- a space log, admitting, changing roles, removing;
* :class:`Replica` -- one member's copy of a log: issues on its own heads,
  merges another copy (a union), for histories with forks;
* :func:`build_space_log` -- a valid linear space log of N members, fast;
* hypothesis strategies: :func:`identities`, :func:`identity_logs`,
  :func:`space_logs`, :func:`corruptions`.

Builders only sign what they are told to (they never consult the rules), so a
test can build invalid entries as easily as valid ones. Keys come from seeds,
so hypothesis can shrink and replay examples. Unless told otherwise, a
builder issues on its current heads (a linear log).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from hypothesis import strategies as st

from p2pinvite.halo.credentials import (
    Credential,
    Grant,
    Role,
    issue_authorized_device,
    issue_device_revocation,
    issue_identity_genesis,
    issue_role_change,
    issue_space_genesis,
    issue_space_member,
    issue_swarm_key,
)
from p2pinvite.halo.identity import IdentityService
from p2pinvite.halo.keys import DeviceKeys, SigningKey
from p2pinvite.halo.spaces import SpaceService

__all__ = [
    "T0",
    "IdentityBuilder",
    "Replica",
    "SpaceBuilder",
    "admit_many",
    "build_space_credentials",
    "build_space_log",
    "corruptions",
    "device_from_seed",
    "identities",
    "identity_logs",
    "space_logs",
]

#: A fixed ``issued_at`` (2024-01-01T00:00:00Z, in ms) for reproducible bytes.
T0 = 1_704_067_200_000


def device_from_seed(seed: bytes) -> DeviceKeys:
    """Deterministic device keys from any seed bytes."""
    h = hashlib.sha512(b"test-device" + seed).digest()
    return DeviceKeys.from_private(h[:32], h[32:])


def key_from_seed(seed: bytes) -> SigningKey:
    """A deterministic identity or space key."""
    return SigningKey.from_seed(hashlib.sha256(b"test-identity" + seed).digest())


@dataclass
class _Log:
    """Credentials in the order built, and the heads of their DAG."""

    creds: list[Credential] = field(default_factory=list)
    heads: set[bytes] = field(default_factory=set)

    @property
    def entries(self) -> list[bytes]:
        """The encoded credentials, in the order built (a topological order)."""
        return [c.encode() for c in self.creds]

    def parents(self, parents: Iterable[bytes] | None) -> list[bytes]:
        return sorted(self.heads) if parents is None else list(parents)

    def add(self, cred: Credential) -> Credential:
        self.creds.append(cred)
        self.heads.difference_update(cred.parents)
        self.heads.add(cred.id)
        return cred


@dataclass
class IdentityBuilder(_Log):
    """An identity: its key (kept, unlike production, to build bad cases), devices and log."""

    key: SigningKey = field(default_factory=SigningKey.generate)
    name: str = "alice"
    devices: list[DeviceKeys] = field(default_factory=list)
    chains: dict[bytes, list[bytes]] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str = "alice", *, seed: bytes | None = None) -> IdentityBuilder:
        """Genesis plus a first device authorized by the identity key."""
        key = SigningKey.generate() if seed is None else key_from_seed(seed)
        ident = cls(key=key, name=name)
        genesis = ident.add(issue_identity_genesis(key, name=name, issued_at=T0))
        first = DeviceKeys.generate() if seed is None else device_from_seed(seed)
        cred = ident.add(issue_authorized_device(
            key, identity=key.public_key, device=first.device_public, parents=[genesis.id],
            issued_at=T0))
        ident.devices.append(first)
        ident.chains[first.device_public] = [cred.core]
        return ident

    @property
    def public(self) -> bytes:
        """The identity key."""
        return self.key.public_key

    @property
    def device(self) -> DeviceKeys:
        """The first device."""
        return self.devices[0]

    def add_device(
        self,
        by: DeviceKeys | None = None,
        *,
        new: DeviceKeys | None = None,
        invitation: bytes | None = None,
        parents: Iterable[bytes] | None = None,
    ) -> DeviceKeys:
        """Authorize a new device, signed by device *by* (default: the newest device)."""
        by = by if by is not None else self.devices[-1]
        new = new if new is not None else DeviceKeys.generate()
        chain = self.chains[by.device_public]
        cred = self.add(issue_authorized_device(
            by, identity=self.public, device=new.device_public, parents=self.parents(parents),
            chain=chain, invitation=invitation, issued_at=T0,
        ))
        self.devices.append(new)
        self.chains[new.device_public] = [cred.core, *chain]
        return new

    def chain_of(self, device: DeviceKeys | None = None) -> list[bytes]:
        """The chain for credentials *device* (default: the first) signs for this identity."""
        return self.chains[(device or self.device).device_public]

    def revoke(self, by: DeviceKeys, device: bytes, *,
               parents: Iterable[bytes] | None = None) -> Credential:
        """Revoke *device*, signed by device *by*."""
        return self.add(issue_device_revocation(
            by, identity=self.public, device=device, parents=self.parents(parents),
            chain=self.chains[by.device_public], issued_at=T0))

    def swarm_key(self, by: DeviceKeys, epoch: int, check: bytes, grants: Iterable[Grant] = (),
                  *, parents: Iterable[bytes] | None = None) -> Credential:
        """A ``swarm_key`` of this identity's log, signed by device *by*."""
        return self.add(issue_swarm_key(
            by, issuer=self.public, log=self.public, epoch=epoch, check=check, grants=grants,
            parents=self.parents(parents), chain=self.chains[by.device_public], issued_at=T0))


@dataclass
class SpaceBuilder(_Log):
    """A space log under construction."""

    key: SigningKey = field(default_factory=SigningKey.generate)
    owner: IdentityBuilder | None = None
    name: str = "space"

    @classmethod
    def create(cls, owner: IdentityBuilder, name: str = "space", *,
               seed: bytes | None = None) -> SpaceBuilder:
        """Genesis plus the owner's OWNER membership, both signed by the space key."""
        key = SigningKey.generate() if seed is None else key_from_seed(b"space" + seed)
        space = cls(key=key, owner=owner, name=name)
        genesis = space.add(issue_space_genesis(key, owner=owner.public, name=name,
                                                issued_at=T0))
        space.add(issue_space_member(
            key, issuer=key.public_key, space=key.public_key, member=owner.public,
            role=Role.OWNER, name=owner.name, parents=[genesis.id], issued_at=T0,
        ))
        return space

    @property
    def public(self) -> bytes:
        """The space key."""
        return self.key.public_key

    def admit(
        self,
        by: IdentityBuilder,
        member: bytes,
        role: Role = Role.EDITOR,
        *,
        name: str = "member",
        invitation: bytes | None = None,
        device: DeviceKeys | None = None,
        parents: Iterable[bytes] | None = None,
        issued_at: int = T0,
    ) -> Credential:
        """A membership issued by *by* (signed by its *device*), on the heads by default."""
        device = device if device is not None else by.device
        return self.add(issue_space_member(
            device, issuer=by.public, space=self.public, member=member, role=role,
            name=name, parents=self.parents(parents), chain=by.chain_of(device),
            invitation=invitation, issued_at=issued_at,
        ))

    def change(self, by: IdentityBuilder, member: bytes, role: Role, *,
               parents: Iterable[bytes] | None = None, issued_at: int = T0) -> Credential:
        """A role change (REMOVED: a removal; *member* = *by*: leaving) issued by *by*."""
        return self.add(issue_role_change(
            by.device, issuer=by.public, space=self.public, member=member, role=role,
            parents=self.parents(parents), chain=by.chain_of(), issued_at=issued_at,
        ))

    def remove(self, by: IdentityBuilder, member: bytes, *,
               parents: Iterable[bytes] | None = None, issued_at: int = T0) -> Credential:
        """A removal issued by *by*."""
        return self.change(by, member, Role.REMOVED, parents=parents, issued_at=issued_at)

    def swarm_key(self, by: IdentityBuilder, epoch: int, check: bytes,
                  grants: Iterable[Grant] = (), *,
                  parents: Iterable[bytes] | None = None) -> Credential:
        """A ``swarm_key`` (a rotation, or a grant of the key in force) issued by *by*."""
        return self.add(issue_swarm_key(
            by.device, issuer=by.public, log=self.public, epoch=epoch, check=check,
            grants=grants, parents=self.parents(parents), chain=by.chain_of(), issued_at=T0))


class Replica:
    """One member's copy of a log: a set of credentials and its heads.

    Issue on :attr:`heads`, then :meth:`add` the result; :meth:`merge` takes
    the union with another replica (what a sync achieves).
    """

    def __init__(self, creds: Iterable[Credential] = ()) -> None:
        self.creds: dict[bytes, Credential] = {}
        self.heads: set[bytes] = set()
        for c in creds:
            self.add(c)

    def add(self, cred: Credential) -> Credential:
        """Add a credential whose parents this replica holds."""
        assert all(p in self.creds for p in cred.parents)
        self.creds[cred.id] = cred
        self.heads.difference_update(cred.parents)
        self.heads.add(cred.id)
        return cred

    def merge(self, other: Replica) -> None:
        """Take every credential *other* holds."""
        self.creds.update(other.creds)
        named = {p for c in self.creds.values() for p in c.parents}
        self.heads = set(self.creds) - named


def build_space_credentials(n_members: int, *, invitation: bytes | None = b"inv-0001"
                            ) -> list[Credential]:
    """A valid linear space log: genesis, owner, then *n_members* READERs admitted by the owner.

    Member identity keys are derived, not generated, so this is about as fast
    as signing allows (for benchmarks and large-log tests).
    """
    owner = IdentityBuilder.create("owner", seed=b"bench-owner")
    space = SpaceBuilder.create(owner, seed=b"bench-space")
    for i in range(n_members):
        member = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=32).digest()
        space.admit(owner, member, Role.READER, name=f"m{i}", invitation=invitation)
    return space.creds


def build_space_log(n_members: int, *, invitation: bytes | None = b"inv-0001") -> list[bytes]:
    """:func:`build_space_credentials`, encoded."""
    return [c.encode() for c in build_space_credentials(n_members, invitation=invitation)]


# -- hypothesis strategies ------------------------------------------------------------

_seeds = st.binary(min_size=8, max_size=8)
_names = st.text(max_size=20)


@st.composite
def identities(draw: st.DrawFn, max_devices: int = 3) -> IdentityBuilder:
    """An identity with 1..*max_devices* devices, each authorized by an earlier one."""
    ident = IdentityBuilder.create(draw(_names), seed=draw(_seeds))
    for i in range(draw(st.integers(0, max_devices - 1))):
        by = ident.devices[draw(st.integers(0, len(ident.devices) - 1))]
        ident.add_device(by, new=device_from_seed(ident.public + bytes([i])))
    return ident


def identity_logs(max_devices: int = 3) -> st.SearchStrategy[list[bytes]]:
    """Valid linear identity (HALO) logs as lists of encoded credentials."""
    return identities(max_devices).map(lambda ident: ident.entries)


@st.composite
def space_logs(draw: st.DrawFn, max_members: int = 5) -> list[bytes]:
    """Valid linear space logs: genesis, owner, then admissions by OWNER/ADMIN members."""
    owner = draw(identities(2))
    space = SpaceBuilder.create(owner, draw(_names), seed=owner.public[:8])
    admins = [owner]
    for i in range(draw(st.integers(0, max_members))):
        member = IdentityBuilder.create(f"m{i}", seed=owner.public[:4] + bytes([i]))
        by = admins[draw(st.integers(0, len(admins) - 1))]
        role = draw(st.sampled_from([Role.READER, Role.EDITOR] +
                                    ([Role.ADMIN] if by is owner else [])))
        space.admit(by, member.public, role, name=member.name,
                    device=by.devices[draw(st.integers(0, len(by.devices) - 1))])
        if role is Role.ADMIN:
            admins.append(member)
    return space.entries


@st.composite
def corruptions(draw: st.DrawFn, data: bytes) -> bytes:
    """*data* with one byte flipped, truncated, or extended: never equal to *data*."""
    how = draw(st.sampled_from(["flip", "truncate", "extend"]))
    if how == "flip" or len(data) < 2:
        i = draw(st.integers(0, len(data) - 1))
        bit = 1 << draw(st.integers(0, 7))
        return data[:i] + bytes([data[i] ^ bit]) + data[i + 1 :]
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    return data + draw(st.binary(min_size=1, max_size=8))


async def admit_many(home: Path, space: bytes, count: int) -> None:
    """*count* READER admissions by the owner's device of *home* (no daemon running),
    appended concurrently, so group commit writes them in few fsyncs."""
    ident = IdentityService.open(home)
    spaces = SpaceService.open(ident)
    try:
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(spaces.admit, space, SigningKey.generate().public_key,
                                   Role.READER, f"reader {i}")
    finally:
        spaces.close()
        ident.close()


@dataclass
class Cast:
    """A space with an owner, two admins and an editor, on a linear history."""

    owner: IdentityBuilder
    a: IdentityBuilder
    b: IdentityBuilder
    editor: IdentityBuilder
    space: SpaceBuilder

    def fork(self) -> list[bytes]:
        """The current heads: the common ancestor of two branches."""
        return sorted(self.space.heads)

    def copy(self) -> Cast:
        """The same cast, with a space builder of its own (histories may grow it)."""
        s = self.space
        space = SpaceBuilder(creds=list(s.creds), heads=set(s.heads), key=s.key,
                             owner=s.owner, name=s.name)
        return Cast(self.owner, self.a, self.b, self.editor, space)
