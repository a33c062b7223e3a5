"""The logs this daemon holds, as the swarm service needs them (:class:`SwarmLogs`).

Two kinds of log have a member swarm: the identity's HALO (its members are the
identity's devices) and every space (its members are identities, each acting
through its devices). The member check runs on every member connection after
the Noise handshake, against the log's current state:

* identity log: the peer's device is one of the identity's devices;
* space log: the peer's hello carries its identity and a device chain; the
  chain must prove the device belongs to that identity (the same check a
  guest makes of a host, :func:`~p2pinvite.invitations.handlers.verify_device_chain`)
  and the identity must be a current member.

Anyone else raises :class:`~p2pinvite.swarm.hello.NotAMember`; the swarm
service drops them before a single entry is exchanged.
"""

from __future__ import annotations

from ..errors import CredentialError
from ..halo.identity import IdentityService
from ..halo.spaces import SpaceService, UnknownSpace
from ..invitations.handlers import verify_device_chain
from ..swarm.hello import Hello, NotAMember
from ..swarm.replica import LogReplica

__all__ = ["DaemonLogs"]


class DaemonLogs:
    """The identity log and the spaces of one daemon home, for the swarm service."""

    def __init__(self, identity: IdentityService, spaces: SpaceService) -> None:
        self._identity = identity
        self._spaces = spaces
        self._replicas: dict[bytes, LogReplica] = {}

    def _is_identity(self, log_key: bytes) -> bool:
        return self._identity.has_identity and log_key == self._identity.identity_key

    def log_keys(self) -> list[bytes]:
        """Every log held here: the identity's (if any), then each space."""
        keys = [self._identity.identity_key] if self._identity.has_identity else []
        return keys + self._spaces.list_spaces()

    def hello(self, log_key: bytes) -> Hello:
        """Our hello: a space's names our identity and proves this device belongs to it.

        :class:`NotAMember` if our identity is no longer a member of the space.
        """
        if self._is_identity(log_key):
            return Hello(log_key)
        try:
            state = self._spaces.open_space(log_key).state
        except UnknownSpace:
            raise NotAMember("not a log this device holds") from None
        if not state.is_member(self._identity.identity_key):
            raise NotAMember("our identity is no longer a member of the space")
        return Hello(log_key, identity=self._identity.identity_key,
                     chain=tuple(self._identity.device_chain()))

    def check_member(self, log_key: bytes, device: bytes, hello: Hello) -> bytes | None:
        """The peer's member identity (None for an identity log), or :class:`NotAMember`."""
        if self._is_identity(log_key):
            if not self._identity.state.is_device(device):
                raise NotAMember("not a device of this identity")
            return None
        if hello.identity is None:
            raise NotAMember("a space hello must name the member's identity")
        try:
            state = self._spaces.open_space(log_key).state
        except UnknownSpace:
            raise NotAMember("not a log this device holds") from None
        if not state.is_member(hello.identity):
            raise NotAMember("its identity is not a current member of the space")
        try:
            verify_device_chain(self._identity.verifier, hello.identity, device, hello.chain)
        except CredentialError as exc:
            raise NotAMember(f"its device chain does not verify: {exc}") from None
        return hello.identity

    def replica(self, log_key: bytes) -> LogReplica:
        """The log of *log_key* as sync reads and extends it (one adapter per log)."""
        replica = self._replicas.get(log_key)
        if replica is None:
            log = (self._identity.log if self._is_identity(log_key)
                   else self._spaces.open_space(log_key).log)
            replica = self._replicas[log_key] = LogReplica(log)
        return replica
