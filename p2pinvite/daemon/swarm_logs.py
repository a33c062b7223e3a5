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
service drops them before a single entry is exchanged. A device revoked from
our own identity is refused in every log, whatever chain it shows (the space
logs do not record device revocations: only its own identity knows).

The swarm secret's rotation (halo/swarm_keys.py) is done here too, for the
service: which secret the log says is in force and whether a grant opens it
for us, whether it must be rotated and whether we may, and writing the
``swarm_key`` entries.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import CredentialError
from ..halo.credentials import MAX_GRANTS, Grant
from ..halo.identity import IdentityService
from ..halo.spaces import SpaceService, UnknownSpace
from ..halo.state import ADMIN, MembershipState
from ..halo.swarm_keys import (
    Recipient,
    grantees,
    grants_for,
    needs_rotation,
    new_secret,
    open_grant,
)
from ..halo.swarm_secrets import SwarmSecret
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
        if not self._identity.state.is_device(self._identity.device.device_public):
            raise NotAMember("this device was removed from its identity")
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
        if (hello.identity == self._identity.identity_key
                and not self._identity.state.is_device(device)):
            raise NotAMember("it was removed from our identity")
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

    # -- the swarm secret in force (halo/swarm_keys.py) ----------------------------------

    def _state(self, log_key: bytes) -> MembershipState:
        if self._is_identity(log_key):
            return self._identity.state
        return self._spaces.open_space(log_key).state

    def _me(self) -> Recipient:
        keys = self._identity.device
        return Recipient(self._identity.identity_key, keys.device_public, keys.static_public)

    def key_update(self, log_key: bytes, held: SwarmSecret | None) -> SwarmSecret | None:
        """The secret the log says is in force, if it is not *held* and a grant opens it for us."""
        state = self._state(log_key)
        check = state.key_in_force().check
        if check is None or (held is not None and held.check == check):
            return None
        keys = self._identity.device
        return open_grant(state, log_key, keys.device_public, keys.static_private)

    def behind(self, log_key: bytes, held: SwarmSecret | None) -> bool:
        """Whether the log has a secret in force that is not *held* (and no grant opened it)."""
        check = self._state(log_key).key_in_force().check
        return check is not None and (held is None or held.check != check)

    def needs_rotation(self, log_key: bytes, held: SwarmSecret | None) -> bool:
        """Whether the secret in force must be rotated and this device may do it.

        May: any current device in an identity log, an OWNER or ADMIN in a
        space, holding the secret in force (*held*). A device behind catches
        up first (members ahead grant it the secret): a rotation written from
        behind would move it to a topic none of them dials, while they stay
        on the one in force, and the swarm would split for good.
        """
        try:
            self.hello(log_key)  # still a member (device) of it
        except NotAMember:
            return False
        state = self._state(log_key)
        if not self._is_identity(log_key) and state.role_code(
                self._identity.identity_key) > ADMIN:
            return False
        if self.behind(log_key, held):
            return False
        return needs_rotation(state)

    async def rotate(self, log_key: bytes, recipients: Sequence[Recipient]) -> SwarmSecret:
        """Write a new secret for *log_key*, sealed to us and to the current *recipients*.

        Durable in the log on return; the caller keeps the secret. Raises
        ``CredentialError`` when the rules refuse (we were removed meanwhile).
        """
        state = self._state(log_key)
        secret = new_secret(state, log_key)
        grants = grants_for(secret, state, [self._me(), *recipients], limit=MAX_GRANTS)
        await self._write_key(log_key, secret, grants)
        return secret

    async def grant(self, log_key: bytes, held: SwarmSecret,
                    recipients: Sequence[Recipient]) -> int:
        """Seal the secret in force (*held*) to the *recipients* nobody sealed it to yet.

        Returns how many were granted (0 when *held* is not in force, or all
        have it). Written as one ``swarm_key`` entry of the same epoch and check.
        """
        state = self._state(log_key)
        key = state.key_in_force()
        if key.check is None or held.check != key.check or held.epoch != key.epoch:
            return 0
        have = grantees(key)
        todo = [r for r in recipients if r.device not in have]
        grants = grants_for(held, state, todo, limit=MAX_GRANTS)
        if grants:
            await self._write_key(log_key, held, grants)
        return len(grants)

    async def _write_key(self, log_key: bytes, secret: SwarmSecret, grants: list[Grant]) -> None:
        if self._is_identity(log_key):
            await self._identity.write_swarm_key(secret.epoch, secret.check, grants)
        else:
            await self._spaces.write_swarm_key(log_key, secret.epoch, secret.check, grants)
