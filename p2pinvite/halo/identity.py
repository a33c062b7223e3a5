"""This device's identity: its keys, its identity's HALO log, and its device chain.

Layout under the home (docs/PROTOCOL.md Part 8, "On disk")::

    <home>/                      0700
      keys/device.key            0600  device + Noise static private keys
      identity/identity.log      the identity's HALO log (halo/log.py format)
      identity/identity.log.checkpoint

A device has at most one identity. It gets one by creating it
(:meth:`IdentityService.create_identity`: a fresh identity key signs the
genesis and this device's ``AuthorizedDevice``, then is dropped) or by being
admitted through a device invitation (:meth:`join_identity_from_entries`).

New logs appear atomically (:func:`install_log`): every entry is verified
and the result accepted *before* the log file is written, and the file then
appears whole (temporary file, fsync, link, directory fsync). A crash leaves
either no identity or a complete one. Hidden temporary directories that
earlier versions built logs in are removed on open.

A guest knows where a received log will go long before it arrives, so it may
make that directory ahead of time, off its critical path
(:func:`prepare_install_dir`, :meth:`IdentityService.prepare_join`): the
mkdir and the fsync of the parent then cost nothing when the log is
installed. Durability rule: :func:`install_log` fsyncs the parent directory
unless this process itself made the log's directory durable, because a
directory found in place may have been created by a process that died
before its own parent fsync, its entry still only in the page cache.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import CredentialError, LocalProtocolError, StorageError
from ..fsutil import ensure_private_dir, fsync_dir
from .credentials import (
    CredentialVerifier,
    Grant,
    issue_authorized_device,
    issue_device_revocation,
    issue_identity_genesis,
    issue_swarm_key,
)
from .keys import DeviceKeys, SigningKey, load_or_create_device_keys
from .log import SpaceLog
from .resolve import Resolver, explain_rejections
from .state import LogKind, MembershipState

__all__ = [
    "IDENTITY_DIR",
    "IDENTITY_LOG",
    "IdentityExists",
    "IdentityService",
    "Issued",
    "NoIdentity",
    "discard_install_dir",
    "ensure_durable_dir",
    "install_log",
    "prepare_install_dir",
    "remove_stale_installs",
]

#: Directory of the identity's HALO log, inside the home.
IDENTITY_DIR: Final = "identity"
#: File name of the identity's HALO log inside :data:`IDENTITY_DIR`.
IDENTITY_LOG: Final = "identity.log"
_TMP_SUFFIX: Final = ".tmp"

_log = logging.getLogger(__name__)


class IdentityExists(LocalProtocolError):
    """This device already has an identity (a device belongs to one identity)."""


class NoIdentity(LocalProtocolError):
    """The operation needs an identity and this device has none yet."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A credential this device issued, durably in its log, and its entry id."""

    credential: bytes
    id: bytes


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def remove_stale_installs(parent: Path) -> None:
    """Remove temporary install directories an interrupted older version left in *parent*."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        if p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX) and p.is_dir():
            _remove_tree(p)


def ensure_durable_dir(path: Path) -> None:
    """Make *path* a private directory; if this call created it, fsync its parent.

    An existing directory is only checked (one ``stat``), not fsynced again.
    """
    created = not path.exists()
    ensure_private_dir(path)
    if created:
        fsync_dir(path.parent)


def prepare_install_dir(parent: Path, directory: str, log_name: str) -> bool:
    """Make ``parent/directory`` exist, private and durable in *parent*, ahead of
    :func:`install_log` (which may then skip the mkdir and the parent fsync:
    ``durable_dir=True``).

    *parent* itself is made private and, if created here, durable in its own
    parent. The parent is fsynced even when the directory already exists: a
    crashed process may have made it without that fsync. Idempotent. Returns
    ``False`` and does nothing when the log already exists (the install will
    report that). Raises ``StorageError`` if a directory is not private or
    the filesystem refuses.
    """
    final = parent / directory
    if (final / log_name).exists():
        return False
    try:
        ensure_durable_dir(parent)
        ensure_private_dir(final)
        fsync_dir(parent)
    except OSError as exc:
        raise StorageError(f"cannot prepare {final}: {exc.strerror}") from None
    return True


def discard_install_dir(parent: Path, directory: str) -> None:
    """Remove ``parent/directory`` if it is empty (a prepared install that never came).

    Best effort, never raises ``OSError``: ``rmdir`` refuses a directory that
    holds anything, so a log (or a log being written) is never touched. The
    removal is not fsynced; an empty directory that survives a crash is
    harmless (no log, so no space) and is swept on the next open.
    """
    try:
        (parent / directory).rmdir()
    except OSError as exc:
        _log.debug("prepared directory %s not removed: %s", directory, exc.strerror)


def install_log(
    parent: Path,
    directory: str,
    log_name: str,
    credentials: Sequence[bytes],
    *,
    kind: LogKind,
    key: bytes | None,
    verifier: CredentialVerifier,
    accept: Callable[[Resolver], None] = lambda resolver: None,
    durable_dir: bool = False,
) -> tuple[Path, SpaceLog]:
    """Verify *credentials* into the new log ``parent/directory/log_name``, atomically.

    Every credential is verified (signatures, chains, parents, genesis) and
    the set resolved in memory, then *accept* may refuse the result by
    raising ``CredentialError``; only then is the file written, appearing
    whole or not at all (:meth:`SpaceLog.create`: temporary file, fsync,
    link, directory fsync). The directory is created if missing, and
    *parent* is fsynced so its entry is durable -- also when the directory
    was found in place, since a crashed process may have made it without
    that fsync -- unless *durable_dir*: the caller made it exist, private and
    durable earlier in this process (:func:`prepare_install_dir`), so neither
    mkdir nor parent fsync is needed (if it has vanished since, it is made
    again as above). A crash can leave at most an empty directory, which
    holds no log and is reused. Raises :class:`FileExistsError` if the log
    exists, ``InvalidEntries`` for credentials that do not verify (or an
    empty list), and *accept*'s error. On failure a directory created here
    is removed; a prepared one is left for its preparer to discard.
    Returns the directory and the open log.
    """
    final = parent / directory
    path = final / log_name
    if durable_dir and not final.is_dir():
        durable_dir = False  # removed since it was prepared: make it again
    created = False
    if not durable_dir:
        ensure_private_dir(parent)
    if path.exists():
        raise FileExistsError(path)
    if not durable_dir:
        created = not final.exists()
        ensure_private_dir(final)
    try:
        log = SpaceLog.create(path, credentials, kind=kind, key=key, verifier=verifier,
                              accept=accept)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                final.rmdir()  # only if still empty
        raise
    if not durable_dir:
        fsync_dir(parent)
    return final, log


class IdentityService:
    """This device's keys and identity. Open with :meth:`open`; close when done."""

    def __init__(
        self,
        home: Path,
        device: DeviceKeys,
        *,
        verifier: CredentialVerifier | None = None,
    ) -> None:
        self._home = home
        self._device = device
        self.verifier = verifier if verifier is not None else CredentialVerifier()
        self._log: SpaceLog | None = None
        # Whether prepare_join made <home>/identity durable in this process.
        self._prepared = False

    @classmethod
    def open(cls, home: Path, *, verifier: CredentialVerifier | None = None) -> IdentityService:
        """Load (or create) this device's keys in *home* and open its identity, if any.

        Raises :class:`StorageError` if the stored identity log does not
        authorize this device's key (keys and log from different devices).
        """
        ensure_private_dir(home)
        device = load_or_create_device_keys(home)
        service = cls(home, device, verifier=verifier)
        remove_stale_installs(home)
        path = home / IDENTITY_DIR / IDENTITY_LOG
        if path.exists():
            log = SpaceLog.open(path, kind=LogKind.IDENTITY, verifier=service.verifier)
            # A device removed since (revoked) still opens its log: it then
            # knows it acts for the identity no more (device_removed).
            if not log.state.was_device(device.device_public):
                log.close()
                raise StorageError(f"{path} does not authorize this device's key")
            service._log = log
        else:
            # An empty identity/ is what a join that failed before a crash left.
            with contextlib.suppress(OSError):
                (home / IDENTITY_DIR).rmdir()
        return service

    # -- queries --------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """The daemon home this service lives in."""
        return self._home

    @property
    def device(self) -> DeviceKeys:
        """This device's keys."""
        return self._device

    @property
    def has_identity(self) -> bool:
        """Whether this device belongs to an identity yet."""
        return self._log is not None

    @property
    def device_removed(self) -> bool:
        """Whether this device was removed (revoked) from its identity by another device.

        It then acts for the identity no more: no invitations hosted or
        accepted in its name, no member swarm joined.
        """
        return self._log is not None and not self._log.state.is_device(
            self._device.device_public)

    @property
    def log(self) -> SpaceLog:
        """The identity's HALO log (for sync); :class:`NoIdentity` if there is none."""
        if self._log is None:
            raise NoIdentity("this device has no identity yet")
        return self._log

    @property
    def state(self) -> MembershipState:
        """The identity log's resolved state; :class:`NoIdentity` if there is none."""
        return self.log.state

    def heads(self) -> list[bytes]:
        """Ids of the HALO log's durable heads."""
        return self.log.heads()

    @property
    def identity_key(self) -> bytes:
        """The identity's public key."""
        key = self.state.identity_key
        assert key is not None
        return key

    @property
    def name(self) -> str:
        """The identity's profile name (from its genesis)."""
        return self.state.name

    def devices(self) -> list[bytes]:
        """Device keys authorized for the identity, in order."""
        return self.state.devices()

    def device_chain(self) -> list[bytes]:
        """The chain proving this device belongs to the identity.

        Sent in the invitation handshake and carried by every credential this
        device issues for the identity.
        """
        return self.state.device_chain(self._device.device_public)

    def raw_entries(self) -> list[bytes]:
        """The HALO log's credentials in a topological order (what a joining device imports)."""
        return self.log.raw_entries()

    # -- changes ----------------------------------------------------------------------

    def create_identity(self, name: str, *, issued_at: int | None = None) -> bytes:
        """Create a new identity owning this device; return the identity key.

        A fresh identity key signs the genesis and this device's
        ``AuthorizedDevice``, and is then dropped: from now on the identity
        acts only through its devices. Raises :class:`IdentityExists`.
        """
        if self._log is not None:
            raise IdentityExists("this device already has an identity")
        identity_key = SigningKey.generate()
        public = identity_key.public_key
        genesis = issue_identity_genesis(identity_key, name=name, issued_at=issued_at)
        first = issue_authorized_device(
            identity_key, identity=public, device=self._device.device_public,
            parents=[genesis.id], issued_at=issued_at,
        )
        # Python cannot wipe the key's memory; dropping the last reference is
        # what "discarded" can mean here (docs/PROTOCOL.md Part 8).
        del identity_key
        self._install([genesis.encode(), first.encode()], key=public)
        return public

    def join_identity_from_entries(self, entries: Sequence[bytes]) -> bytes:
        """Adopt the identity whose HALO log a host sent after a device invitation.

        *entries* are its credentials in a topological order (the host's
        :meth:`raw_entries`). Every one is verified; the log must authorize
        this device's key (else ``CredentialError(rule="device_not_authorized")``).
        Raises :class:`IdentityExists` if this device already has an
        identity, and ``InvalidEntries`` (halo.log) for entries that do not
        verify. Returns the identity key.
        """
        if self._log is not None:
            raise IdentityExists("this device already has an identity")
        self._install(entries, key=None)
        return self.identity_key

    def prepare_join(self) -> None:
        """Make the identity directory exist and be durable before a join's log arrives.

        Synchronous (a mkdir and an fsync): run it in a worker thread while
        the invitation handshake goes on. :meth:`join_identity_from_entries`
        then skips both. Does nothing if this device already has an identity.
        Idempotent. Raises ``StorageError`` if the home is not private or the
        filesystem refuses.
        """
        if self._log is not None:
            return
        if prepare_install_dir(self._home, IDENTITY_DIR, IDENTITY_LOG):
            self._prepared = True

    def discard_prepared_join(self) -> None:
        """Undo :meth:`prepare_join` after a join that failed: remove the directory if empty.

        Best effort, never raises ``OSError``; an identity that was installed
        is never touched. Do not call it while a join is in progress.
        """
        self._prepared = False
        if self._log is None:
            discard_install_dir(self._home, IDENTITY_DIR)

    def _install(self, entries: Sequence[bytes], *, key: bytes | None) -> None:
        device = self._device.device_public

        def accept(resolver: Resolver) -> None:
            if not resolver.state.is_device(device):
                raise CredentialError(
                    "the identity log does not authorize this device"
                    + explain_rejections(resolver, device),
                    rule="device_not_authorized",
                )

        try:
            _, log = install_log(self._home, IDENTITY_DIR, IDENTITY_LOG, entries,
                                 kind=LogKind.IDENTITY, key=key, verifier=self.verifier,
                                 accept=accept, durable_dir=self._prepared)
        except FileExistsError:
            raise IdentityExists("this device already has an identity") from None
        self._log = log
        self._prepared = False

    async def authorize_device(
        self, device: bytes, *, invitation: bytes | None = None, issued_at: int | None = None
    ) -> Issued:
        """Authorize another *device* for this identity (host side of a device invitation).

        Signed by this device with its chain, on the log's current heads,
        appended durably. Raises ``CredentialError`` (rule ``already_device``,
        ``chain_too_deep``, ...) when the rules refuse it.
        """
        log = self.log
        # No await between reading the heads and appending: nothing else
        # can change them in between.
        cred = issue_authorized_device(
            self._device, identity=self.identity_key, device=device,
            parents=log.append_parents(), chain=self.device_chain(), invitation=invitation,
            issued_at=issued_at,
        )
        return Issued(cred.encode(), await log.append(cred))

    async def revoke_device(self, device: bytes, *, issued_at: int | None = None) -> Issued:
        """Revoke another *device* of this identity (``device remove``); durable on return.

        Raises ``CredentialError``: rule ``this_device`` for this device (a
        device is removed from another one), ``not_device`` for a key that is
        not a current device, ``last_device`` for the last one.
        """
        if device == self._device.device_public:
            raise CredentialError("a device is removed from another device of the identity",
                                  rule="this_device")
        if not self.state.is_device(device):
            raise CredentialError("not a current device of this identity", rule="not_device")
        log = self.log
        cred = issue_device_revocation(
            self._device, identity=self.identity_key, device=device,
            parents=log.append_parents(), chain=self.device_chain(), issued_at=issued_at,
        )
        return Issued(cred.encode(), await log.append(cred))

    async def write_swarm_key(self, epoch: int, check: bytes, grants: Sequence[Grant], *,
                              issued_at: int | None = None) -> Issued:
        """Write a ``swarm_key`` for the identity log (halo/swarm_keys.py); durable on return."""
        log = self.log
        cred = issue_swarm_key(
            self._device, issuer=self.identity_key, log=self.identity_key, epoch=epoch,
            check=check, grants=grants, parents=log.append_parents(),
            chain=self.device_chain(), issued_at=issued_at,
        )
        return Issued(cred.encode(), await log.append(cred))

    def close(self) -> None:
        """Close the identity log. Idempotent."""
        if self._log is not None:
            self._log.close()
