"""Spaces this device's identity belongs to: create, list, open, admit, import.

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
    MalformedCredential,
    Role,
    decode_credential,
    issue_member_removal,
    issue_space_genesis,
    issue_space_member,
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
from .log import InvalidEntries, SpaceLog, decode_entry, entries_from_credentials
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
    """One open space: its log and membership state."""

    __slots__ = ("_log", "_state", "space_id")

    def __init__(self, space_id: bytes, log: SpaceLog, state: MembershipState) -> None:
        self.space_id = space_id
        self._log = log
        self._state = state

    @property
    def log(self) -> SpaceLog:
        """The space log."""
        return self._log

    @property
    def state(self) -> MembershipState:
        """The membership state, current with every appended entry."""
        return self._state

    @property
    def name(self) -> str:
        """The space name from its genesis."""
        return self._state.name

    def members(self) -> list[Member]:
        """Current members, in admission order."""
        return self._state.members()

    def raw_entries(self, start: int = 0) -> list[bytes]:
        """Encoded log entries from seq *start* (what a guest imports)."""
        return self._log.raw_entries(start)

    def close(self) -> None:
        """Close the log."""
        self._log.close()

    def __repr__(self) -> str:
        return f"<Space {self.space_id.hex()[:16]} {self.name!r} length={self._log.length}>"


def _genesis_key(entries: Sequence[bytes]) -> bytes:
    """The key a log's genesis claims (decoded, not verified: the import verifies it)."""
    try:
        if not entries or not isinstance(entries[0], bytes):
            raise DecodeError("an imported log cannot be empty")
        cred = decode_credential(decode_entry(entries[0])[2])
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

    def _new_state(self, key: bytes | None) -> MembershipState:
        return MembershipState(kind=LogKind.SPACE, key=key, verifier=self._identity.verifier)

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
        state = self._new_state(space_id)
        space = Space(space_id, SpaceLog.open(path, state), state)
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
        creds = [
            issue_space_genesis(space_key, owner=owner, name=name, issued_at=issued_at).encode(),
            issue_space_member(
                space_key, issuer=space, space=space, member=owner, role=Role.OWNER,
                name=self._identity.name, issued_at=issued_at,
            ).encode(),
        ]
        del space_key  # used once; see identity.create_identity on "discarded"
        self._install(entries_from_credentials(creds), expected=space)
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

        def accept(state: MembershipState) -> None:
            if not state.is_member(me):
                raise CredentialError(
                    "the space log does not admit our identity", rule="not_admitted"
                )

        # The state is pinned to `key` (rule wrong_genesis), so the directory
        # name, chosen before verifying, is the space key of what gets written.
        state = self._new_state(key)
        try:
            _, log = install_log(self._dir, key.hex(), SPACE_LOG, entries, state, accept=accept,
                                 durable_dir=key in self._prepared)
        except FileExistsError:
            raise SpaceExists("that space is already on this device") from None
        self._prepared.discard(key)
        self._open[key] = Space(key, log, state)
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

        Issued by our identity, signed by this device with its chain.
        *profile* is the member's profile (``{"name": ...}`` or just the name).
        Raises ``CredentialError`` with the refusing rule (``already_member``,
        ``not_admin``, ``owner_required``, ...).
        """
        return await self._issue_member(
            space_id, member, role, _profile_name(profile), invitation_id, issued_at
        )

    async def remove(
        self, space_id: bytes, member: bytes, *, issued_at: int | None = None
    ) -> Issued:
        """Remove *member* from *space_id* (a ``SpaceMember`` with role REMOVED)."""
        ident = self._identity
        space = self.open_space(space_id)
        cred = issue_member_removal(
            ident.device, issuer=ident.identity_key, space=space_id, member=member,
            chain=ident.device_chain(), issued_at=issued_at,
        ).encode()
        return Issued(cred, await space.log.append(cred))

    async def _issue_member(
        self, space_id: bytes, member: bytes, role: Role, name: str,
        invitation: bytes | None, issued_at: int | None,
    ) -> Issued:
        ident = self._identity
        space = self.open_space(space_id)
        cred = issue_space_member(
            ident.device, issuer=ident.identity_key, space=space_id, member=member, role=role,
            name=name, chain=ident.device_chain(), invitation=invitation, issued_at=issued_at,
        ).encode()
        return Issued(cred, await space.log.append(cred))

    def close(self) -> None:
        """Close every open space. Idempotent."""
        spaces, self._open = self._open, {}
        for space in spaces.values():
            space.close()
