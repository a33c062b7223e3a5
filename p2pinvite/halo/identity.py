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
    issue_authorized_device,
    issue_identity_genesis,
)
from .keys import DeviceKeys, SigningKey, load_or_create_device_keys
from .log import InvalidEntries, SpaceLog, entries_from_credentials
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
    """A credential this device issued and the log seq it was durably written at."""

    credential: bytes
    seq: int


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


class _AcceptOnLast:
    """The validator of an import: a :class:`MembershipState` that, once the last
    entry is applied, asks *accept* whether the resulting state may be installed.

    :meth:`SpaceLog.import_entries` checks and applies every entry *before* it
    writes anything, so a log that *accept* refuses is never written: no
    second verification pass and no temporary directory are needed.
    """

    __slots__ = ("_accept", "_applied", "_total", "refused", "state")

    def __init__(self, state: MembershipState, total: int,
                 accept: Callable[[MembershipState], None]) -> None:
        self.state = state
        self._total = total
        self._accept = accept
        self._applied = 0
        self.refused: CredentialError | None = None

    def check(self, credential: bytes, *, verify_signatures: bool) -> object:
        """Delegate to the state."""
        return self.state.check(credential, verify_signatures=verify_signatures)

    def apply(self, checked: object) -> None:
        """Delegate to the state; after the last imported entry, run *accept*."""
        self.state.apply(checked)
        self._applied += 1
        if self._applied == self._total:
            try:
                self._accept(self.state)
            except CredentialError as exc:
                self.refused = exc
                raise

    def snapshot(self) -> bytes:
        """Delegate to the state."""
        return self.state.snapshot()

    def restore(self, data: bytes) -> None:
        """Delegate to the state."""
        self.state.restore(data)


def install_log(
    parent: Path,
    directory: str,
    log_name: str,
    entries: Sequence[bytes],
    state: MembershipState,
    *,
    accept: Callable[[MembershipState], None] = lambda state: None,
    durable_dir: bool = False,
) -> tuple[Path, SpaceLog]:
    """Verify *entries* into the new log ``parent/directory/log_name``, atomically.

    Every entry is checked (signatures, rules) into the fresh *state*, then
    *accept* may refuse the final state by raising ``CredentialError``; only
    then is the file written, appearing whole or not at all
    (:meth:`SpaceLog.import_entries`: temporary file, fsync, link, directory
    fsync). The directory is created if missing, and *parent* is fsynced so
    its entry is durable -- also when the directory was found in place,
    since a crashed process may have made it without that fsync -- unless
    *durable_dir*: the caller made it exist, private and durable earlier in
    this process (:func:`prepare_install_dir`), so neither mkdir nor parent
    fsync is needed (if it has vanished since, it is made again as above).
    A crash can leave at most an empty directory, which holds no log and is
    reused. Raises :class:`FileExistsError` if the log exists,
    ``InvalidEntries`` for entries that do not verify (or an empty list),
    and *accept*'s error. On failure a directory created here is removed; a
    prepared one is left for its preparer to discard.
    Returns the directory and the open log (its validator wraps *state*).
    """
    if not entries:
        raise InvalidEntries("an imported log cannot be empty", index=0)
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
    guard = _AcceptOnLast(state, len(entries), accept)
    try:
        log = SpaceLog.import_entries(path, entries, guard)
    except BaseException as exc:
        if created:
            with contextlib.suppress(OSError):
                final.rmdir()  # only if still empty
        if isinstance(exc, InvalidEntries) and guard.refused is not None \
                and exc.__cause__ is guard.refused:
            raise guard.refused from None
        if isinstance(exc, StorageError) and path.exists():
            raise FileExistsError(path) from None  # someone installed it meanwhile
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
        self._state: MembershipState | None = None
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
            state = service._new_state()
            log = SpaceLog.open(path, state)
            if not state.is_device(device.device_public):
                log.close()
                raise StorageError(f"{path} does not authorize this device's key")
            service._log, service._state = log, state
        else:
            # An empty identity/ is what a join that failed before a crash left.
            with contextlib.suppress(OSError):
                (home / IDENTITY_DIR).rmdir()
        return service

    def _new_state(self, key: bytes | None = None) -> MembershipState:
        return MembershipState(kind=LogKind.IDENTITY, key=key, verifier=self.verifier)

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
        return self._state is not None

    @property
    def state(self) -> MembershipState:
        """The identity log's state; :class:`NoIdentity` if there is none."""
        if self._state is None:
            raise NoIdentity("this device has no identity yet")
        return self._state

    @property
    def log(self) -> SpaceLog:
        """The identity's HALO log; :class:`NoIdentity` if there is none."""
        if self._log is None:
            raise NoIdentity("this device has no identity yet")
        return self._log

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

    def raw_entries(self, start: int = 0) -> list[bytes]:
        """The HALO log's encoded entries from seq *start* (what a joining device imports)."""
        return self.log.raw_entries(start)

    # -- changes ----------------------------------------------------------------------

    def create_identity(self, name: str, *, issued_at: int | None = None) -> bytes:
        """Create a new identity owning this device; return the identity key.

        A fresh identity key signs the genesis and this device's
        ``AuthorizedDevice``, and is then dropped: from now on the identity
        acts only through its devices. Raises :class:`IdentityExists`.
        """
        if self._state is not None:
            raise IdentityExists("this device already has an identity")
        identity_key = SigningKey.generate()
        public = identity_key.public_key
        creds = [
            issue_identity_genesis(identity_key, name=name, issued_at=issued_at).encode(),
            issue_authorized_device(
                identity_key, identity=public, device=self._device.device_public,
                issued_at=issued_at,
            ).encode(),
        ]
        # Python cannot wipe the key's memory; dropping the last reference is
        # what "discarded" can mean here (docs/PROTOCOL.md Part 8).
        del identity_key
        self._install(entries_from_credentials(creds), key=public)
        return public

    def join_identity_from_entries(self, entries: Sequence[bytes]) -> bytes:
        """Adopt the identity whose HALO log *entries* a host sent after a device invitation.

        Every entry is verified; the log must authorize this device's key
        (else ``CredentialError(rule="device_not_authorized")``). Raises
        :class:`IdentityExists` if this device already has an identity, and
        ``InvalidEntries`` (halo.log) for entries that do not verify.
        Returns the identity key.
        """
        if self._state is not None:
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
        if self._state is not None:
            return
        if prepare_install_dir(self._home, IDENTITY_DIR, IDENTITY_LOG):
            self._prepared = True

    def discard_prepared_join(self) -> None:
        """Undo :meth:`prepare_join` after a join that failed: remove the directory if empty.

        Best effort, never raises ``OSError``; an identity that was installed
        is never touched. Do not call it while a join is in progress.
        """
        self._prepared = False
        if self._state is None:
            discard_install_dir(self._home, IDENTITY_DIR)

    def _install(self, entries: Sequence[bytes], *, key: bytes | None) -> None:
        device = self._device.device_public

        def accept(state: MembershipState) -> None:
            if not state.is_device(device):
                raise CredentialError(
                    "the identity log does not authorize this device", rule="device_not_authorized"
                )

        state = self._new_state(key)
        try:
            _, log = install_log(self._home, IDENTITY_DIR, IDENTITY_LOG, entries, state,
                                 accept=accept, durable_dir=self._prepared)
        except FileExistsError:
            raise IdentityExists("this device already has an identity") from None
        self._log, self._state = log, state
        self._prepared = False

    async def authorize_device(
        self, device: bytes, *, invitation: bytes | None = None, issued_at: int | None = None
    ) -> Issued:
        """Authorize another *device* for this identity (host side of a device invitation).

        Signed by this device with its chain, appended durably. Raises
        ``CredentialError`` (rule ``already_device``, ``chain_too_deep``, ...)
        when the rules refuse it.
        """
        cred = issue_authorized_device(
            self._device, identity=self.identity_key, device=device,
            chain=self.device_chain(), invitation=invitation, issued_at=issued_at,
        ).encode()
        seq = await self.log.append(cred)
        return Issued(cred, seq)

    def close(self) -> None:
        """Close the identity log. Idempotent."""
        if self._log is not None:
            self._log.close()
