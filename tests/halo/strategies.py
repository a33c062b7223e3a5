"""Reusable builders and hypothesis strategies for credentials and logs.

For other test files (the log's, the invitation protocol's, benchmarks):

* :class:`IdentityBuilder` -- an identity with its HALO log entries and devices;
* :class:`SpaceBuilder` -- a space with its log entries, admitting members;
* :func:`build_space_log` -- a valid space log of N members, fast;
* hypothesis strategies: :func:`identities`, :func:`identity_logs`,
  :func:`space_logs`, :func:`corruptions`.

Builders only sign what they are told to (they never consult the rules), so a
test can build invalid entries as easily as valid ones. Keys come from seeds,
so hypothesis can shrink and replay examples.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from hypothesis import strategies as st

from p2pinvite.halo.credentials import (
    Role,
    issue_authorized_device,
    issue_identity_genesis,
    issue_member_removal,
    issue_space_genesis,
    issue_space_member,
)
from p2pinvite.halo.keys import DeviceKeys, SigningKey

__all__ = [
    "T0",
    "IdentityBuilder",
    "SpaceBuilder",
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


@dataclass
class IdentityBuilder:
    """An identity: its key (kept, unlike production, to build bad cases), devices and log."""

    key: SigningKey
    name: str
    entries: list[bytes] = field(default_factory=list)
    devices: list[DeviceKeys] = field(default_factory=list)
    chains: dict[bytes, list[bytes]] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str = "alice", *, seed: bytes | None = None) -> IdentityBuilder:
        """Genesis plus a first device authorized by the identity key."""
        key = SigningKey.generate() if seed is None else SigningKey.from_seed(
            hashlib.sha256(b"test-identity" + seed).digest()
        )
        ident = cls(key, name)
        ident.entries.append(issue_identity_genesis(key, name=name, issued_at=T0).encode())
        first = DeviceKeys.generate() if seed is None else device_from_seed(seed)
        cred = issue_authorized_device(
            key, identity=key.public_key, device=first.device_public, issued_at=T0
        )
        ident.entries.append(cred.encode())
        ident.devices.append(first)
        ident.chains[first.device_public] = [cred.encode()]
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
    ) -> DeviceKeys:
        """Authorize a new device, signed by device *by* (default: the newest device)."""
        by = by if by is not None else self.devices[-1]
        new = new if new is not None else DeviceKeys.generate()
        chain = self.chains[by.device_public]
        cred = issue_authorized_device(
            by, identity=self.public, device=new.device_public, chain=chain,
            invitation=invitation, issued_at=T0,
        )
        self.entries.append(cred.encode())
        self.devices.append(new)
        self.chains[new.device_public] = [cred.stripped().encode(), *chain]
        return new

    def chain_of(self, device: DeviceKeys) -> list[bytes]:
        """The chain for credentials *device* signs on behalf of this identity."""
        return self.chains[device.device_public]


@dataclass
class SpaceBuilder:
    """A space log under construction."""

    key: SigningKey
    owner: IdentityBuilder
    name: str
    entries: list[bytes] = field(default_factory=list)

    @classmethod
    def create(cls, owner: IdentityBuilder, name: str = "space") -> SpaceBuilder:
        """Genesis plus the owner's OWNER membership, both signed by a fresh space key."""
        key = SigningKey.generate()
        space = cls(key, owner, name)
        space.entries.append(
            issue_space_genesis(key, owner=owner.public, name=name, issued_at=T0).encode()
        )
        space.entries.append(
            issue_space_member(
                key, issuer=key.public_key, space=key.public_key, member=owner.public,
                role=Role.OWNER, name=owner.name, issued_at=T0,
            ).encode()
        )
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
    ) -> bytes:
        """A membership issued by *by* (signed by its *device*), appended to ``entries``."""
        device = device if device is not None else by.device
        cred = issue_space_member(
            device, issuer=by.public, space=self.public, member=member, role=role,
            name=name, chain=by.chain_of(device), invitation=invitation, issued_at=T0,
        ).encode()
        self.entries.append(cred)
        return cred

    def remove(self, by: IdentityBuilder, member: bytes) -> bytes:
        """A removal issued by *by*, appended to ``entries``."""
        cred = issue_member_removal(
            by.device, issuer=by.public, space=self.public, member=member,
            chain=by.chain_of(by.device), issued_at=T0,
        ).encode()
        self.entries.append(cred)
        return cred


def build_space_log(n_members: int, *, invitation: bytes | None = b"inv-0001") -> list[bytes]:
    """A valid space log: genesis, owner, then *n_members* READERs admitted by the owner.

    Member identity keys are derived, not generated, so this is about as fast
    as signing allows (for benchmarks and large-log tests).
    """
    owner = IdentityBuilder.create("owner")
    space = SpaceBuilder.create(owner)
    for i in range(n_members):
        member = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=32).digest()
        space.admit(owner, member, Role.READER, name=f"m{i}", invitation=invitation)
    return space.entries


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
    """Valid identity (HALO) logs as lists of encoded credentials."""
    return identities(max_devices).map(lambda ident: list(ident.entries))


@st.composite
def space_logs(draw: st.DrawFn, max_members: int = 5) -> list[bytes]:
    """Valid space logs: genesis, owner, then admissions by OWNER/ADMIN members."""
    owner = draw(identities(2))
    space = SpaceBuilder.create(owner, draw(_names))
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
