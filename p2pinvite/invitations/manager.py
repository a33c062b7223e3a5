"""The invitation manager: create, list, revoke, validate, accept, and host.

Theory of operation
-------------------
One :class:`InvitationManager` per daemon. It owns no protocol logic: it
ties the durable :class:`~.store.InvitationStore`, this device's identity and
spaces, and the :class:`~p2pinvite.net.manager.NetworkManager` together.

* **Hosting.** Every usable invitation is joined on the network manager under
  its topic, as a *session topic* (every connection its own session, never
  cancelled for another one): link invitations under
  ``Topic.from_secret(secret)`` (XXpsk0, advertised over mDNS when mDNS is
  on), short codes under ``Topic.for_discriminator``. Each connection on the
  topic runs :func:`~.handlers.serve_guest`. An invitation that finishes
  (revoked, expired, exhausted, locked) keeps its topic for
  :data:`HOSTING_GRACE` (10 minutes) after it finished, so a guest can still
  resume a dropped admission and a late one is told "not available" at once
  instead of finding no host; then the topic is left and its mDNS
  advertisement withdrawn. Revoking also cancels the handshakes in progress
  (their guests are told the uniform refusal). A restart hosts what is usable
  or still within that grace (every finish time is in the record).
* **Accepting.** :meth:`accept` turns a code into a :class:`~.handlers.GuestPlan`,
  runs :func:`~.handlers.run_guest` in the manager's nursery and streams its
  events through a channel, so abandoning the iterator (or :meth:`cancel`)
  stops the attempt cleanly.
* **Restart.** Entering the manager reconciles the store's use counters with
  the logs (an admission whose log record was fsynced but whose use was not
  yet committed when the daemon died is counted now), prunes, then re-hosts
  every usable invitation.
* **Retention.** Finished invitations (revoked, expired, exhausted, locked)
  stay in ``list(include_all=True)`` for ``retention`` seconds (30 days by
  default), so the owner can see what became of them; then their records are
  deleted (:meth:`~.store.InvitationStore.prune`), at start -- after the
  reconcile, which may still count a use -- and once a day from a background
  task. Invitations with a handshake in progress are left alone. A pruned
  invitation still hosted (a retention shorter than the grace) has its topic
  left; nothing else is sent to peers or subscribers.

Time comes from the injected ``clock`` (unix seconds), so tests drive expiry
with trio's autojump clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from ..errors import (
    CodeError,
    InvitationError,
    LocalProtocolError,
    P2PInviteError,
    StorageError,
)
from ..halo.credentials import Role
from ..halo.identity import IdentityService
from ..halo.keys import DeviceKeys, Signer
from ..halo.spaces import SpaceService
from ..halo.swarm_secrets import SwarmSecrets
from ..net.manager import NetworkManager
from ..net.topics import Topic
from ..rendezvous.config import RendezvousConfig, RendezvousStatus
from .codes import LINK_PREFIX, MAX_HINTS, LinkCode, ShortCode, parse_pin
from .handlers import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_STEP_TIMEOUT,
    AcceptEvent,
    GuestPlan,
    HostContext,
    InvitationEvent,
    run_guest,
    serve_guest,
)
from .meeting import host_meetings
from .model import AuthMethod, Invitation, InvitationKind, InvitationStatus
from .protocol import State
from .store import InvitationPruneFailed, InvitationStore, finished_at

__all__ = [
    "DEFAULT_RETENTION",
    "HOSTING_GRACE",
    "PRUNE_INTERVAL",
    "CreatedInvitation",
    "InvitationManager",
    "ValidationResult",
]

log = logging.getLogger("p2pinvite.invitations")

_ADMITTERS: Final = frozenset({Role.OWNER, Role.ADMIN})
_SUBSCRIBER_BUFFER: Final = 1024
#: How long a finished invitation's record is kept before it is deleted: 30 days.
DEFAULT_RETENTION: Final = 30 * 86400.0
#: How often a running manager prunes finished records (trio clock seconds).
PRUNE_INTERVAL: Final = 86400.0
#: At most this many ids are named in the "pruned" log line.
_LOG_IDS: Final = 16
#: How long a finished invitation still answers on its topic (seconds of the
#: manager's clock) before the topic is left and its mDNS advertisement
#: withdrawn. Long enough for a guest whose connection dropped after its
#: admission to resume it, and for a late guest to be told the invitation is
#: not available instead of finding no host; short enough that the LAN does
#: not keep seeing adverts of invitations nobody can use.
HOSTING_GRACE: Final = 600.0
#: A finished invitation past its grace with a handshake still running (a
#: resume) is looked at again this often; the handshake ends within its step
#: timeouts, and cutting it would turn a resume into a lost admission.
_BUSY_RECHECK: Final = 5.0


@dataclass(frozen=True, slots=True)
class CreatedInvitation:
    """A new invitation and what to hand the guest: the code, and the PIN for auth pin."""

    invitation: Invitation
    code: str = field(repr=False)
    pin: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """What :meth:`InvitationManager.validate` found, without consuming anything.

    ``reason`` is precise (this is for the local user): ``invalid_code``,
    ``expired``, ``revoked``, ``locked``, ``exhausted``, ``already_has_identity``,
    ``no_identity``, ``already_member``. ``local`` is true when the code is one
    of this device's own invitations (then ``status`` is the record's status).
    """

    valid: bool
    reason: str | None = None
    kind: InvitationKind | None = None
    invitation_id: bytes | None = None
    auth: AuthMethod | None = None
    expires_at: float | None = None
    local: bool = False
    status: InvitationStatus | None = None
    detail: str = ""


def _hint_ok(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not addr.is_unspecified and not (isinstance(addr, ipaddress.IPv6Address)
                                            and addr.scope_id is not None)


class InvitationManager:
    """Invitations of this device, host and guest side. Use ``async with manager:``.

    *clock* returns unix seconds (default :func:`time.time`). *secrets*: the
    device's swarm secrets (a guest stores the one its admission hands over; a
    host seals its own to the guest). *mdns*: whether
    the network manager runs mDNS (advertise link topics, look short codes up).
    *retention*: seconds a finished invitation stays listed before its record
    is deleted (default :data:`DEFAULT_RETENTION`, 30 days; must be > 0).
    """

    def __init__(
        self,
        home: Path,
        keys: DeviceKeys,
        identity: IdentityService,
        spaces: SpaceService,
        network: NetworkManager,
        store: InvitationStore,
        clock: Callable[[], float] = time.time,
        *,
        secrets: SwarmSecrets,
        mdns: bool = False,
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retention: float = DEFAULT_RETENTION,
        rendezvous: RendezvousStatus | None = None,
        on_admitted: Callable[[bytes, bytes, bytes, bytes], None] | None = None,
    ) -> None:
        if (not isinstance(retention, int | float) or isinstance(retention, bool)
                or not math.isfinite(retention) or retention <= 0):
            raise LocalProtocolError("retention must be a finite number of seconds > 0")
        self.home = home
        self._keys = keys
        self._identity = identity
        self._spaces = spaces
        self._network = network
        self._store = store
        self._clock = clock
        self._mdns = mdns
        self._step_timeout = step_timeout
        self._connect_timeout = connect_timeout
        self._retention = float(retention)
        # Set when an invitation is created: wakes the daily pass of an empty store.
        self._created = trio.Event()
        self._subscribers: set[trio.MemorySendChannel[InvitationEvent]] = set()
        self._secrets = secrets
        self._ctx = HostContext(keys=keys, identity=identity, spaces=spaces, secrets=secrets,
                                store=store, clock=clock, emit=self._emit,
                                step_timeout=step_timeout, on_admitted=on_admitted)
        self._hosted: dict[bytes, Topic] = {}
        # Beyond the LAN (--mailbox): each hosted link invitation also waits
        # for guests at the mailbox, in a task cancelled when it is unhosted.
        self._rendezvous = rendezvous
        self._meetings: dict[bytes, trio.CancelScope] = {}
        # When each hosted invitation's topic is to be left, and the same as a
        # heap of (when, id); a heap entry that no longer matches the dict is stale.
        # Only the invitation that changed is looked at: an admission costs O(log n).
        self._leave_at: dict[bytes, float] = {}
        self._leave_queue: list[tuple[float, bytes]] = []
        # Set when an earlier departure was scheduled: the sleeper re-arms.
        self._hosting_changed = trio.Event()
        self._accepting: dict[int, tuple[bytes | str, trio.CancelScope]] = {}
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> InvitationManager:
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        try:
            await self.start()
            await self._nursery.start(self._prune_periodically)
            await self._nursery.start(self._leave_finished)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        try:
            for topic in list(self._hosted.values()):
                await self._network.leave(topic)
            self._hosted.clear()
        finally:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            self._nursery = None
            if stack is not None:
                await stack.aclose()

    async def start(self) -> None:
        """Reconcile use counters with the logs, prune, then host every usable invitation
        (and every finished one still within :data:`HOSTING_GRACE`)."""
        now = self._clock()
        for inv in self._store.list(now, include_all=True):
            try:
                self._reconcile(inv)
            except P2PInviteError as exc:
                log.warning("invitation %s: could not reconcile uses: %s", inv.id.hex()[:8], exc)
        await self._prune_logged()
        now = self._clock()
        for inv in self._store.list(now, include_all=True):
            if self._hosted_until(inv, now) > now:
                await self._host(inv)

    # -- retention -------------------------------------------------------------------

    async def prune(self) -> list[bytes]:
        """Delete the records of invitations finished for at least the retention period.

        Returns the ids deleted. Invitations with a handshake in progress are
        kept. Raises :class:`~p2pinvite.errors.StorageError`
        (:class:`~.store.InvitationPruneFailed`) if a record cannot be deleted.
        """
        now = self._clock()  # read on the trio thread: the clock may be trio's
        busy = frozenset(inv_id for inv_id, scopes in self._ctx.active.items() if scopes)
        removed = await trio.to_thread.run_sync(
            lambda: self._store.prune(now, retention=self._retention, skip=busy))
        for inv_id in removed:
            # A finished invitation holds its topic for HOSTING_GRACE, which may
            # outlast a short retention; a deleted one has nothing to answer with.
            await self._unhost(inv_id)
        if removed:
            self._log_pruned(removed)
        return removed

    async def _prune_logged(self) -> None:
        """:meth:`prune`, turning a storage failure into a warning: housekeeping
        that fails must not stop the daemon (the next pass retries)."""
        try:
            await self.prune()
        except StorageError as exc:
            if isinstance(exc, InvitationPruneFailed) and exc.removed:
                self._log_pruned(list(exc.removed))
            log.warning("could not prune finished invitation records: %s", exc)

    async def _prune_periodically(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The schedule is fixed before the manager is entered: the first pass is
        # due one interval after the start pass, whoever runs first.
        deadline = trio.current_time() + PRUNE_INTERVAL
        task_status.started()
        while True:
            if len(self._store) == 0:
                # Nothing can become prunable before an invitation is created: no
                # timer, so a daemon without invitations never wakes up for this.
                # (A fresh event per wait: create() sets the current one.)
                self._created = trio.Event()
                await self._created.wait()
                deadline = trio.current_time() + PRUNE_INTERVAL
            await trio.sleep_until(deadline)
            await self._prune_logged()
            deadline = trio.current_time() + PRUNE_INTERVAL

    # -- hosting finished invitations ------------------------------------------------------

    def _hosted_until(self, inv: Invitation, now: float) -> float:
        """Until when (manager clock) *inv* answers on its topic: :data:`HOSTING_GRACE`
        after it finished.

        A usable invitation counts as finishing at its expiry (a use, a lock or
        a revocation may end it sooner, and reschedules it); a finished one at
        the time :func:`~.store.finished_at` gives (revoked, locked, exhausted,
        expired alike, so a guest arriving late is told at once, also after a
        restart).
        """
        finished = finished_at(inv, now)
        return (inv.expires_at if finished is None else finished) + HOSTING_GRACE

    def _schedule_leave(self, inv_id: bytes, when: float) -> None:
        # Wake the sleeper only for a departure earlier than the heap's first
        # entry: it sleeps until that one at the latest.
        if self._leave_at.get(inv_id) == when:
            return
        earliest = self._leave_queue[0][0] if self._leave_queue else math.inf
        self._leave_at[inv_id] = when
        heapq.heappush(self._leave_queue, (when, inv_id))
        if when < earliest:
            self._hosting_changed.set()

    def _reschedule_leave(self, inv_id: bytes) -> None:
        """Recompute when hosted *inv_id* leaves its topic (after a use, a lock)."""
        if inv_id in self._hosted and inv_id in self._store:
            self._schedule_leave(inv_id, self._hosted_until(self._store.get(inv_id),
                                                            self._clock()))

    async def _leave_finished(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Leave the topic of each hosted invitation once :meth:`_hosted_until` has passed.

        Sleeps until the earliest departure, or until an earlier one is
        scheduled; with nothing hosted it arms no timer at all.
        """
        task_status.started()
        queue = self._leave_queue
        while True:
            # A fresh event per pass, made before reading the queue, so that a
            # change during the pass (even during an await below) wakes the next wait.
            self._hosting_changed = trio.Event()
            now = self._clock()
            while queue:
                when, inv_id = queue[0]
                if self._leave_at.get(inv_id) != when:
                    heapq.heappop(queue)  # stale: rescheduled, or no longer hosted
                    continue
                if when > now:
                    break
                heapq.heappop(queue)
                # Due. Look again: the record is the truth, the schedule a forecast.
                until = (self._hosted_until(self._store.get(inv_id), now)
                         if inv_id in self._store else -math.inf)
                if until > now:
                    self._schedule_leave(inv_id, until)
                elif self._ctx.active.get(inv_id):
                    self._schedule_leave(inv_id, now + _BUSY_RECHECK)
                else:
                    log.info("invitation %s finished: no longer hosted", inv_id.hex()[:8])
                    await self._unhost(inv_id)
                    now = self._clock()
            wake = queue[0][0] if queue else math.inf
            with trio.move_on_after(wake - now):
                await self._hosting_changed.wait()

    def _log_pruned(self, removed: list[bytes]) -> None:
        shown = ", ".join(inv_id.hex()[:8] for inv_id in removed[:_LOG_IDS])
        more = f", and {len(removed) - _LOG_IDS} more" if len(removed) > _LOG_IDS else ""
        log.info("pruned %d finished invitation record(s) older than %g days: %s%s",
                 len(removed), self._retention / 86400, shown, more)

    def _redeemers(self, inv: Invitation) -> list[bytes]:
        """Subjects the log admitted through *inv* (applied admissions), in resolved order."""
        if inv.kind is InvitationKind.DEVICE:
            if not self._identity.has_identity:
                return []
            return self._identity.state.redeemers(inv.id)
        if not self._spaces.has_space(inv.target):
            return []
        return self._spaces.open_space(inv.target).state.redeemers(inv.id)

    def _reconcile(self, inv: Invitation) -> None:
        redeemed = self._redeemers(inv)
        missing = len(redeemed) - inv.uses
        if missing <= 0:
            return
        log.info("invitation %s: counting %d admission(s) found in the log", inv.id.hex()[:8],
                 missing)
        for subject in redeemed[-missing:]:
            try:
                res = self._store.reserve_use(inv.id, self._clock())
            except InvitationError as exc:
                log.warning("invitation %s: cannot count a use (%s)", inv.id.hex()[:8],
                            exc.reason)
                return
            try:
                self._store.commit_use(res, subject, self._clock())
            finally:
                self._store.release(res)

    # -- host side ---------------------------------------------------------------------

    def _topic(self, inv: Invitation) -> Topic:
        if inv.auth is AuthMethod.SHORT:
            assert inv.short_discriminator is not None
            return Topic.for_discriminator(inv.short_discriminator)
        return Topic.from_secret(inv.secret)

    async def _host(self, inv: Invitation) -> None:
        if inv.id in self._hosted:
            return
        topic = self._topic(inv)
        ctx, inv_id = self._ctx, inv.id

        async def handler(stream: object) -> None:
            from ..net.secure import SecureStream
            assert isinstance(stream, SecureStream)
            await serve_guest(stream, ctx, inv_id)

        await self._network.join(topic, handler, advertise=self._mdns, one_per_peer=False)
        self._hosted[inv.id] = topic
        self._schedule_leave(inv.id, self._hosted_until(inv, self._clock()))
        status = self._rendezvous
        if (status is not None and status.config is not None and inv.auth is not AuthMethod.SHORT
                and self._nursery is not None):
            # Short codes stay on the LAN: their secret is too small to name
            # a public mailbox safely.
            scope = trio.CancelScope()
            self._meetings[inv.id] = scope
            self._nursery.start_soon(self._meet_guests, inv, status.config, status, scope)

    async def _meet_guests(self, inv: Invitation, config: RendezvousConfig,
                           status: RendezvousStatus, scope: trio.CancelScope) -> None:
        with scope:
            await host_meetings(config, inv.secret, self._network, status,
                                label=inv.id.hex()[:8], clock=self._clock)

    async def _unhost(self, inv_id: bytes) -> None:
        meeting = self._meetings.pop(inv_id, None)
        if meeting is not None:
            meeting.cancel()
        for scope in list(self._ctx.active.get(inv_id, ())):
            scope.cancel()
        self._leave_at.pop(inv_id, None)  # its queue entries are stale now
        topic = self._hosted.pop(inv_id, None)
        if topic is not None:
            await self._network.leave(topic)

    def _hosted_discriminators(self) -> set[str]:
        """The short-code discriminators of the invitations hosted now, usable or not."""
        out = set()
        for inv_id in self._hosted:
            if inv_id in self._store:
                disc = self._store.get(inv_id).short_discriminator
                if disc is not None:
                    out.add(disc)
        return out

    def _emit(self, event: InvitationEvent) -> None:
        if event.type in ("admitted", "locked", "revoked"):  # each may finish it
            self._reschedule_leave(event.invitation_id)
        for chan in list(self._subscribers):
            try:
                chan.send_nowait(event)
            except trio.WouldBlock:
                log.warning("invitation event subscriber is not keeping up; event dropped")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(chan)

    def _identity_key(self) -> bytes:
        if not self._identity.has_identity:
            raise InvitationError("this device has no identity yet", reason="no_identity")
        if self._identity.device_removed:
            raise InvitationError("this device was removed from its identity",
                                  reason="device_removed")
        return self._identity.identity_key

    async def create(
        self,
        *,
        kind: InvitationKind | str,
        space_id: bytes | None = None,
        role: str | None = None,
        auth: AuthMethod | str = AuthMethod.NONE,
        max_uses: int | None = 1,
        expires_in: float | None = None,
        note: str = "",
        admission_key: bytes | None = None,
        max_attempts: int | None = None,
    ) -> CreatedInvitation:
        """Create an invitation, start hosting it, and return it with its code.

        *kind* ``device`` invites a new device into our identity; ``space``
        invites another identity into *space_id* with *role* (``reader`` by
        default; ``admin`` needs us to be OWNER). Only an OWNER or ADMIN of
        the space may create space invitations (``InvitationError`` with
        reason ``not_admin``). *auth*: ``none``, ``pin`` (a PIN is generated
        and returned), ``short`` (the short code is the code) or ``key``
        (*admission_key* names the guest's Ed25519 admission public key).
        *expires_in*: seconds (default 7 days, 15 minutes for short codes).
        """
        kind = InvitationKind(kind)
        auth = AuthMethod(auth)
        me = self._identity_key()
        now = self._clock()
        if kind is InvitationKind.DEVICE:
            if space_id is not None or role is not None:
                raise LocalProtocolError("a device invitation has no space and no role")
            target = me
        else:
            if space_id is None:
                raise LocalProtocolError("a space invitation needs a space_id")
            state = self._spaces.open_space(space_id).state
            mine = state.role_of(me)
            if mine not in _ADMITTERS:
                raise InvitationError("only an OWNER or ADMIN of the space may invite",
                                      reason="not_admin")
            role = (role or "reader").lower()
            if role in ("admin", "owner") and mine is not Role.OWNER:
                raise InvitationError("only an OWNER may invite an ADMIN",
                                      reason="owner_required")
            target = space_id
        expires_at = None if expires_in is None else now + expires_in
        # A finished short invitation may still hold its discriminator's topic.
        taken = self._hosted_discriminators() if auth is AuthMethod.SHORT else set()
        inv = await trio.to_thread.run_sync(lambda: self._store.create(
            kind=kind, target=target, created_by=me, now=now, role=role, auth=auth,
            expires_at=expires_at, max_uses=max_uses, max_attempts=max_attempts, note=note,
            admission_key=admission_key, taken_discriminators=taken))
        self._created.set()
        await self._host(inv)
        self._emit(InvitationEvent("created", inv.id))
        if auth is AuthMethod.SHORT:
            assert inv.short_discriminator is not None
            assert inv.short_secret is not None
            code = ShortCode(inv.short_discriminator, inv.short_secret).encode()
        else:
            hints = tuple(a for a in self._network.reachable_addresses
                          if _hint_ok(a[0]))[:MAX_HINTS]
            cfg = None if self._rendezvous is None else self._rendezvous.config
            code = LinkCode.for_invitation(inv, host_device_key=self._keys.device_public,
                                           hints=hints,
                                           mailbox=None if cfg is None else cfg.mailbox).encode()
        return CreatedInvitation(inv, code, inv.pin)

    def list(self, *, include_all: bool = False) -> list[Invitation]:
        """Usable invitations (pending/accepted), or every record with *include_all*."""
        return self._store.list(self._clock(), include_all=include_all)

    def get(self, invitation_id: bytes) -> Invitation:
        """The record of *invitation_id* (``InvitationError(reason="unknown")``)."""
        return self._store.get(invitation_id)

    async def revoke(self, invitation_id: bytes) -> Invitation:
        """Revoke: keep a tombstone and stop its handshakes in progress (their guests are
        told the uniform refusal). Its topic still answers, with that refusal, for
        :data:`HOSTING_GRACE`, like any finished invitation's."""
        me = self._identity_key()
        now = self._clock()  # read on the trio thread: the clock may be trio's
        inv = await trio.to_thread.run_sync(
            lambda: self._store.revoke(invitation_id, by=me, now=now))
        for scope in list(self._ctx.active.get(invitation_id, ())):
            scope.cancel()
        # An admission already in its reserve -> append -> commit section runs to
        # completion (shielded): wait for it, so the record returned counts every
        # use, and a revoke that came too late for a guest says so (uses, accepted_by).
        while self._store.reserved(invitation_id):  # noqa: ASYNC110 - the store has no event
            await trio.sleep(0.01)
        inv = self._store.get(invitation_id)
        self._emit(InvitationEvent("revoked", invitation_id))
        return inv

    async def subscribe(self) -> AsyncIterator[InvitationEvent]:
        """Host-side events of every invitation, from now on, until the iterator is closed."""
        send, recv = trio.open_memory_channel[InvitationEvent](_SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        try:
            async with recv:
                async for event in recv:
                    yield event
        finally:
            self._subscribers.discard(send)
            send.close()

    # -- codes -----------------------------------------------------------------------------

    def validate(self, code: str) -> ValidationResult:
        """Decode *code* and check it without consuming anything (see :class:`ValidationResult`)."""
        now = self._clock()
        try:
            parsed: LinkCode | ShortCode = self._parse(code)
        except CodeError as exc:
            return ValidationResult(False, "invalid_code", detail=str(exc))
        if isinstance(parsed, ShortCode):
            mine = [i for i in self._store.find_short(parsed.discriminator, now)
                    if i.short_secret == parsed.secret]
            if mine:
                return self._local_result(mine[0], now)
            kind = (InvitationKind.SPACE if self._identity.has_identity
                    else InvitationKind.DEVICE)
            return ValidationResult(True, kind=kind, auth=AuthMethod.SHORT)
        if parsed.invitation_id in self._store:
            return self._local_result(self._store.get(parsed.invitation_id), now)
        reason = self._guest_refusal(parsed.kind, parsed.target)
        if reason is None and parsed.expires_at <= now:
            reason = "expired"
        return ValidationResult(reason is None, reason, parsed.kind, parsed.invitation_id,
                                parsed.auth, float(parsed.expires_at))

    @staticmethod
    def _local_result(inv: Invitation, now: float) -> ValidationResult:
        status = inv.status(now)
        usable = inv.is_usable(now)
        return ValidationResult(usable, None if usable else status.value, inv.kind, inv.id,
                                inv.auth, inv.expires_at, local=True, status=status)

    def _guest_refusal(self, kind: InvitationKind, target: bytes | None) -> str | None:
        has = self._identity.has_identity
        if kind is InvitationKind.DEVICE:
            return "already_has_identity" if has else None
        if not has:
            return "no_identity"
        if self._identity.device_removed:
            return "device_removed"
        if target is not None and self._spaces.has_space(target):
            return "already_member"
        return None

    @staticmethod
    def _parse(code: str) -> LinkCode | ShortCode:
        if not isinstance(code, str):
            raise CodeError("not a valid p2pinvite code: not a string")
        if code.strip()[: len(LINK_PREFIX)].lower() == LINK_PREFIX:
            return LinkCode.parse(code)
        return ShortCode.parse(code)

    # -- guest side ------------------------------------------------------------------------

    def _plan(self, code: str, pin: str | None, name: str | None,
              admission_key: Signer | None) -> GuestPlan | AcceptEvent:
        """The guest plan for *code*, or the final event explaining why there is none."""
        def fail(reason: str, state: State = State.ERROR) -> AcceptEvent:
            return AcceptEvent(state, reason=reason)

        try:
            parsed = self._parse(code)
        except CodeError:
            return fail("invalid_code")
        if isinstance(parsed, ShortCode):
            kind = (InvitationKind.SPACE if self._identity.has_identity
                    else InvitationKind.DEVICE)
            if self._identity.device_removed:
                return fail("device_removed")
            topic = Topic.for_discriminator(parsed.discriminator)
            plan = GuestPlan(kind, AuthMethod.SHORT, topic, password=parsed.password)
        else:
            reason = self._guest_refusal(parsed.kind, parsed.target)
            if reason is not None:
                return fail(reason)
            if parsed.expires_at <= self._clock():
                return fail("expired", State.EXPIRED)
            password = None
            if parsed.auth is AuthMethod.PIN:
                if pin is None:
                    return fail("pin_required")
                try:
                    password = parse_pin(pin).encode("ascii")
                except CodeError:
                    return fail("invalid_pin")
            if parsed.auth is AuthMethod.KEY and admission_key is None:
                return fail("admission_key_required")
            plan = GuestPlan(parsed.kind, parsed.auth, Topic.from_secret(parsed.secret),
                             invitation_id=parsed.invitation_id, target=parsed.target,
                             host_device=parsed.host_device_key, hints=parsed.hints,
                             password=password, mailbox=parsed.mailbox,
                             secret=parsed.secret if parsed.mailbox is not None else None)
        if name is None:
            name = self._identity.name if plan.kind is InvitationKind.SPACE else ""
        return dataclasses.replace(plan, admission_key=admission_key, name=name)

    async def accept(self, code: str, *, pin: str | None = None, name: str | None = None,
                     admission_key: Signer | None = None) -> AsyncIterator[AcceptEvent]:
        """Accept *code* as the guest; yield an :class:`AcceptEvent` per state.

        The last event is final (``event.final``): SUCCESS with the result, or
        a failure with a reason (``wrong_pin`` with ``attempts_left``, the
        uniform refusal, ``expired``, ``host unreachable ...``). A retry after a
        lost connection resumes where the host got to.
        """
        plan = self._plan(code, pin, name, admission_key)
        if isinstance(plan, AcceptEvent):
            yield plan
            return
        nursery = self._nursery
        if nursery is None:
            raise LocalProtocolError("the invitation manager is not running (use async with)")
        send, recv = trio.open_memory_channel[AcceptEvent](math.inf)
        scope = trio.CancelScope()
        token = id(scope)
        key: bytes | str = plan.invitation_id or plan.topic.txt_value
        self._accepting[token] = (key, scope)

        async def produce() -> None:
            # The consumer may vanish at any point (an IPC client that hit Ctrl-C):
            # its closed channel must end this join, never the daemon's nursery.
            async with send:
                last: AcceptEvent | None = None

                def report(ev: AcceptEvent) -> None:
                    nonlocal last
                    last = ev
                    try:
                        send.send_nowait(ev)
                    except trio.BrokenResourceError:
                        scope.cancel()  # nobody listens any more: give the join up

                with scope:
                    await run_guest(plan, self._identity, self._spaces, self._secrets,
                                    self._network,
                                    mdns=self._mdns, report=report,
                                    step_timeout=self._step_timeout,
                                    connect_timeout=self._connect_timeout)
                if scope.cancelled_caught and (last is None or not last.final):
                    with contextlib.suppress(trio.BrokenResourceError):
                        send.send_nowait(AcceptEvent(State.CANCELLED, reason="cancelled"))

        nursery.start_soon(produce)
        try:
            async with recv:
                async for ev in recv:
                    yield ev
        finally:
            scope.cancel()
            self._accepting.pop(token, None)

    def cancel(self, invitation_id: bytes | None = None) -> int:
        """Cancel accepts in progress (of *invitation_id*, or all) and, as host, the
        handshakes in progress for *invitation_id* (without revoking it).

        Returns how many were cancelled.
        """
        n = 0
        for key, scope in list(self._accepting.values()):
            if invitation_id is None or key == invitation_id:
                scope.cancel()
                n += 1
        if invitation_id is not None:
            for scope in list(self._ctx.active.get(invitation_id, ())):
                scope.cancel()
                n += 1
        return n
