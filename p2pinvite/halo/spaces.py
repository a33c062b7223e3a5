"""Spaces this device's identity belongs to: create, list, open, import, admit,
change roles, remove, leave.

Layout under the home (docs/PROTOCOL.md Part 8, "On disk")::

    <home>/spaces/                         0700
      <space key, 64 lowercase hex>/       0700
        space.log                          the space log (halo/log.py format)
        space.log.checkpoint

A space is created with a fresh space key that signs the genesis (naming our
identity as owner) and our OWNER membership, and is then dropped. Everything
after that is issued by a member identity and signed by one of its devices,
carrying the device chain. Logs received from a host (a guest joining) are
verified in full and installed atomically (:func:`~.identity.install_log`),
directly under their final name.

A guest knows which space it is joining (the link code names it) long before
the log arrives: :meth:`SpaceService.prepare_import` makes the space's
directory durable in the background, so the install skips the mkdir and the
fsync of ``spaces/``; :meth:`SpaceService.discard_prepared` removes it again
if the join fails. A directory without a log is not a space (listing ignores
it), and empty ones left by failed joins across crashes are swept on open.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Final

from ..errors import CredentialError, DecodeError, LocalProtocolError
from .credentials import (
    Grant,
    MalformedCredential,
    Role,
    decode_credential,
    issue_role_change,
    issue_space_genesis,
    issue_space_member,
    issue_swarm_key,
)
from .identity import (
    IdentityService,
    Issued,
    discard_install_dir,
    ensure_durable_dir,
    install_log,
    prepare_install_dir,
    remove_stale_installs,
)
from .keys import SigningKey
from .log import InvalidEntries, SpaceLog
from .resolve import Resolver, explain_rejections
from .state import LogKind, Member, MembershipState

__all__ = [
    "SPACES_DIR",
    "SPACE_LOG",
    "Space",
    "SpaceExists",
    "SpaceService",
    "UnknownSpace",
]

#: Directory holding one sub-directory per space, inside the home.
SPACES_DIR: Final = "spaces"
#: File name of a space's log inside its directory.
SPACE_LOG: Final = "space.log"
_SPACE_DIR_RE: Final = re.compile(r"[0-9a-f]{64}")


class SpaceExists(LocalProtocolError):
    """This device already holds that space."""


class UnknownSpace(LocalProtocolError):
    """This device holds no space with that key."""


class Space:
    """One open space: its log, its resolved state, its heads."""

    __slots__ = ("_log", "space_id")

    def __init__(self, space_id: bytes, log: SpaceLog) -> None:
        self.space_id = space_id
        self._log = log

    @property
    def log(self) -> SpaceLog:
        """The space log (for sync: heads, has, get, ids_not_below, ingest)."""
        return self._log

    @property
    def state(self) -> MembershipState:
        """The resolved membership state, current with every admitted entry."""
        return self._log.state

    def heads(self) -> list[bytes]:
        """Ids of the log's durable heads."""
        return self._log.heads()

    @property
    def name(self) -> str:
        """The space name from its genesis."""
        return self.state.name

    def members(self) -> list[Member]:
        """Current members, in admission order."""
        return self.state.members()

    def raw_entries(self) -> list[bytes]:
        """The log's credentials in a topological order (what a guest imports)."""
        return self._log.raw_entries()

    def close(self) -> None:
        """Close the log."""
        self._log.close()

    def __repr__(self) -> str:
        return f"<Space {self.space_id.hex()[:16]} {self.name!r} entries={self._log.count}>"


def _genesis_key(entries: Sequence[bytes]) -> bytes:
    """The key a log's genesis claims (decoded, not verified: the import verifies it)."""
    try:
        if not entries or not isinstance(entries[0], bytes):
            raise DecodeError("an imported log cannot be empty")
        cred = decode_credential(entries[0])
    except (DecodeError, MalformedCredential) as exc:
        raise InvalidEntries(f"genesis: {exc}", index=0) from exc
    return cred.issuer


def _profile_name(profile: Mapping[str, str] | str) -> str:
    if isinstance(profile, str):
        return profile
    if set(profile) - {"name"}:
        raise LocalProtocolError("a profile has only a 'name'")
    return profile.get("name", "")


class SpaceService:
    """The spaces of this device's identity, under ``<home>/spaces``."""

    def __init__(self, identity: IdentityService) -> None:
        self._identity = identity
        self._dir = identity.home / SPACES_DIR
        self._open: dict[bytes, Space] = {}
        # Spaces whose directory prepare_import made durable in this process.
        # A worker thread adds to it; single set operations are atomic.
        self._prepared: set[bytes] = set()

    @classmethod
    def open(cls, identity: IdentityService) -> SpaceService:
        """The space service of *identity*'s home (removing crash leftovers).

        Leftovers: temporary install directories of older versions, and
        empty space directories (joins that failed, or were prepared and
        never completed, before a crash).
        """
        service = cls(identity)
        ensure_durable_dir(service._dir)
        remove_stale_installs(service._dir)
        service._remove_empty_dirs()
        return service

    def _remove_empty_dirs(self) -> None:
        # One rmdir per space: it fails (ENOTEMPTY) for every directory with
        # a log, a checkpoint or a temporary file, which are never touched.
        for name in os.listdir(self._dir):
            if _SPACE_DIR_RE.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.rmdir(self._dir / name)

    # -- queries ------------------------------------------------------------------------

    def list_spaces(self) -> list[bytes]:
        """Keys of the spaces stored on this device, sorted."""
        if not self._dir.is_dir():
            return []
        return sorted(
            bytes.fromhex(p.name)
            for p in self._dir.iterdir()
            if _SPACE_DIR_RE.fullmatch(p.name) and (p / SPACE_LOG).exists()
        )

    def has_space(self, space_id: bytes) -> bool:
        """Whether this device holds space *space_id* (one ``stat``, no directory scan)."""
        if space_id in self._open:
            return True
        return len(space_id) == 32 and (self._dir / space_id.hex() / SPACE_LOG).exists()

    def open_space(self, space_id: bytes) -> Space:
        """The open space *space_id* (opened on first use); :class:`UnknownSpace` if absent."""
        space = self._open.get(space_id)
        if space is not None:
            return space
        if len(space_id) != 32:
            raise UnknownSpace("a space id is a 32-byte key")
        path = self._dir / space_id.hex() / SPACE_LOG
        if not path.exists():
            raise UnknownSpace(f"no space {space_id.hex()} on this device")
        log = SpaceLog.open(path, kind=LogKind.SPACE, key=space_id,
                            verifier=self._identity.verifier)
        space = Space(space_id, log)
        self._open[space_id] = space
        return space

    def members(self, space_id: bytes) -> list[Member]:
        """Current members of *space_id*."""
        return self.open_space(space_id).members()

    # -- changes ----------------------------------------------------------------------

    def create_space(self, name: str, *, issued_at: int | None = None) -> bytes:
        """Create a space owned by our identity; return its key (the space id).

        A fresh space key signs the genesis and our OWNER membership, then is
        dropped. Requires an identity (``NoIdentity``).
        """
        owner = self._identity.identity_key
        space_key = SigningKey.generate()
        space = space_key.public_key
        genesis = issue_space_genesis(space_key, owner=owner, name=name, issued_at=issued_at)
        membership = issue_space_member(
            space_key, issuer=space, space=space, member=owner, role=Role.OWNER,
            name=self._identity.name, parents=[genesis.id], issued_at=issued_at,
        )
        del space_key  # used once; see identity.create_identity on "discarded"
        self._install([genesis.encode(), membership.encode()], expected=space)
        return space

    def prepare_import(self, space_id: bytes) -> None:
        """Make space *space_id*'s directory exist and be durable before its log arrives.

        Synchronous (a mkdir and an fsync of ``spaces/``): run it in a worker
        thread while the invitation handshake goes on; a later
        :meth:`import_space` of this space then skips both. Idempotent. Does
        nothing if the space is already here (:meth:`import_space` will raise
        :class:`SpaceExists`). Raises ``LocalProtocolError`` for an id that is
        not a 32-byte key, ``StorageError`` if a directory is not private or
        the filesystem refuses.
        """
        if len(space_id) != 32:
            raise LocalProtocolError("a space id is a 32-byte key")
        if self.has_space(space_id):
            return
        if prepare_install_dir(self._dir, space_id.hex(), SPACE_LOG):
            self._prepared.add(space_id)

    def discard_prepared(self, space_id: bytes) -> None:
        """Undo :meth:`prepare_import` after a join that failed: remove the directory if empty.

        Best effort, never raises ``OSError``: a directory holding a log (an
        installed space) or anything else is left alone. Do not call it
        while an import of the same space is in progress.
        """
        self._prepared.discard(space_id)
        if len(space_id) == 32 and space_id not in self._open:
            discard_install_dir(self._dir, space_id.hex())

    def import_space(self, entries: Sequence[bytes], *, expected: bytes | None = None) -> bytes:
        """Install a space log a host sent us after admitting our identity.

        Every entry is verified (``InvalidEntries`` from halo.log otherwise);
        *expected*, when given, is the space key the invitation named. The
        log must make our identity a member
        (``CredentialError(rule="not_admitted")``). Raises
        :class:`SpaceExists` if we already hold this space. Returns the space id.
        """
        return self._install(entries, expected=expected)

    def _install(self, entries: Sequence[bytes], *, expected: bytes | None) -> bytes:
        me = self._identity.identity_key
        key = expected if expected is not None else _genesis_key(entries)
        if self.has_space(key):
            raise SpaceExists(f"space {key.hex()} is already on this device")

        def accept(resolver: Resolver) -> None:
            if not resolver.state.is_member(me):
                raise CredentialError(
                    "the space log does not admit our identity" + explain_rejections(resolver, me),
                    rule="not_admitted",
                )

        # The log is pinned to `key` (rule wrong_genesis), so the directory
        # name, chosen before verifying, is the space key of what gets written.
        try:
            _, log = install_log(self._dir, key.hex(), SPACE_LOG, entries, kind=LogKind.SPACE,
                                 key=key, verifier=self._identity.verifier, accept=accept,
                                 durable_dir=key in self._prepared)
        except FileExistsError:
            raise SpaceExists("that space is already on this device") from None
        self._prepared.discard(key)
        self._open[key] = Space(key, log)
        return key

    async def admit(
        self,
        space_id: bytes,
        member: bytes,
        role: Role,
        profile: Mapping[str, str] | str = "",
        invitation_id: bytes | None = None,
        *,
        issued_at: int | None = None,
    ) -> Issued:
        """Admit identity *member* into *space_id* with *role*; durable on return.

        Issued by our identity, signed by this device with its chain, on the
        log's current heads. *profile* is the member's profile (``{"name":
        ...}`` or just the name). Raises ``CredentialError`` with the refusing
        rule (``already_member``, ``not_admin``, ``owner_required``, ...).
        """
        if role is Role.REMOVED:
            raise LocalProtocolError("an admission grants a role; use remove()")
        ident = self._identity
        space = self.open_space(space_id)
        if space.state.is_member(member):
            # The same credential would be a role change: say what it is not.
            raise CredentialError("identity is already a member", rule="already_member")
        # No await between reading the heads and appending: nothing else can
        # change them in between.
        cred = issue_space_member(
            ident.device, issuer=ident.identity_key, space=space_id, member=member, role=role,
            name=_profile_name(profile), parents=space.log.append_parents(),
            chain=ident.device_chain(), invitation=invitation_id, issued_at=issued_at,
        )
        return Issued(cred.encode(), await space.log.append(cred))

    async def change_role(
        self, space_id: bytes, member: bytes, role: Role, *, issued_at: int | None = None
    ) -> Issued:
        """Give the current member *member* of *space_id* a new *role* (REMOVED: remove it).

        Rules: OWNER and ADMIN manage EDITORs and READERs; only an OWNER
        grants, changes or removes ADMIN or OWNER; the genesis owner is never
        removed or demoted. Raises ``CredentialError`` with the refusing rule
        (``not_member``, ``same_role``, ``owner_required``, ...).
        """
        ident = self._identity
        space = self.open_space(space_id)
        if not space.state.is_member(member):
            # The same credential would be an admission (with no name).
            raise CredentialError("identity is not a current member", rule="not_member")
        cred = issue_role_change(
            ident.device, issuer=ident.identity_key, space=space_id, member=member, role=role,
            parents=space.log.append_parents(), chain=ident.device_chain(),
            issued_at=issued_at,
        )
        return Issued(cred.encode(), await space.log.append(cred))

    async def remove(
        self, space_id: bytes, member: bytes, *, issued_at: int | None = None
    ) -> Issued:
        """Remove *member* from *space_id* (a role change to REMOVED)."""
        return await self.change_role(space_id, member, Role.REMOVED, issued_at=issued_at)

    async def leave(self, space_id: bytes, *, issued_at: int | None = None) -> Issued:
        """Remove our own identity from *space_id* (refused for the genesis owner)."""
        return await self.remove(space_id, self._identity.identity_key, issued_at=issued_at)

    async def write_swarm_key(self, space_id: bytes, epoch: int, check: bytes,
                              grants: Sequence[Grant], *,
                              issued_at: int | None = None) -> Issued:
        """Write a ``swarm_key`` for *space_id* (halo/swarm_keys.py); durable on return."""
        ident = self._identity
        space = self.open_space(space_id)
        cred = issue_swarm_key(
            ident.device, issuer=ident.identity_key, log=space_id, epoch=epoch, check=check,
            grants=grants, parents=space.log.append_parents(), chain=ident.device_chain(),
            issued_at=issued_at,
        )
        return Issued(cred.encode(), await space.log.append(cred))

    def close(self) -> None:
        """Close every open space. Idempotent."""
        spaces, self._open = self._open, {}
        for space in spaces.values():
            space.close()
