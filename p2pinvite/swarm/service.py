"""The swarm service: keep every log's member devices connected and in sync.

Theory of operation
-------------------
For each log this device holds with a swarm secret (its identity's HALO and
every space), the service joins the log's member topic
(:meth:`~p2pinvite.net.topics.Topic.for_swarm`) on the network manager as a
*peer topic* (one connection per device pair): advertised and browsed over
mDNS when mDNS is on, and the member devices' last known addresses dialed as
well (:class:`~.peers.KnownPeers`), all raced and kept connected with
back-off by the network manager. Only holders of the swarm secret can find
the topic or finish its handshake.

Every connection, dialed or accepted, then runs the same steps:

1. both sides send a hello at once (:mod:`.hello`): the log, the sender's
   identity and device chain (space logs), its listening addresses;
2. each checks the other's device against the log's current state
   (:meth:`SwarmLogs.check_member`: a device of the identity, or a device of a
   current member); anyone else is dropped with a log line, before a single
   entry is exchanged;
3. the peer's addresses are remembered, and anti-entropy sync
   (:func:`~p2pinvite.sync.driver.run_sync`) runs until the connection ends.
   A local append, or entries arriving from any other peer, reach this peer
   at once through the replica's change notification;
4. each such change checks every live peer again: one whose member was
   removed is closed once it holds its removal (at most a second later).
   When the change removes this device, the swarm is left the same way.

The swarm secret rotates after every removal (halo/swarm_keys.py). After
each change the service asks the logs whether a ``swarm_key`` entry now
opens a newer secret for us (then it moves to that secret's topic once its
peers hold the change), or whether the secret in force must be rotated and
we may (then it writes the rotation, sealed to every member device it has
met, and moves). The secrets a rotation replaced stay joined, accept-only
(not advertised, not dialed): a member that missed the rotation reaches us
there, and we seal the secret in force to it in a grant entry that its sync
then delivers. A removed device reaching us there fails the member check.

What the service needs from the logs is the small :class:`SwarmLogs`
protocol, implemented by the daemon over the halo layer, so this module
knows nothing of credentials or files. Apps follow along through
:meth:`SwarmService.subscribe` (peers coming and going, sync progress, the
log changing) and :meth:`SwarmService.peers`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Protocol

import trio
import trio.lowlevel

from ..errors import P2PInviteError, RemoteProtocolError
from ..fsutil import ensure_private_dir
from ..halo.keys import verify_binding_proof
from ..halo.swarm_keys import Recipient
from ..halo.swarm_secrets import SWARM_DIR, SwarmSecret, SwarmSecrets
from ..net.manager import NetworkManager
from ..net.secure import SecureStream
from ..net.topics import Topic
from ..rendezvous.config import RendezvousStatus
from ..sync.driver import SyncProgress, run_sync
from ..sync.replica import Replica
from .hello import MAX_ADDRS, MAX_HELLO, Address, Hello, NotAMember, decode_hello, encode_hello
from .meeting import meet_members
from .peers import KnownPeers

__all__ = [
    "HELLO_TIMEOUT",
    "PeerInfo",
    "SwarmEvent",
    "SwarmLogs",
    "SwarmService",
]

log = logging.getLogger("p2pinvite.swarm")

#: Longest wait for the peer's hello after the handshake.
HELLO_TIMEOUT: Final = 10.0
#: A removed member's connection lives at most this long (seconds) once the
#: removal is applied here: long enough to hand it the removal itself.
REMOVAL_GRACE: Final = 1.0
#: A member that sees the secret in force must be rotated (a removal written by
#: someone else, or a member leaving) waits a random delay up to this long
#: (seconds) first, so the admins who see it at once do not all rotate;
#: whoever wrote the removal rotates at once.
ROTATION_JITTER: Final = 1.0
#: A known member not met on our topic this long (seconds) after we join or a
#: peer leaves is dialed on our older topics too: our own topic may be one it
#: does not hold (the losing one of two concurrent rotations), and neither
#: side can learn that from a log it cannot sync.
REACH_BACK_AFTER: Final = 2.0
_SUBSCRIBER_BUFFER: Final = 1024


class SwarmLogs(Protocol):
    """What the swarm service needs of the logs this device holds."""

    def hello(self, log_key: bytes) -> Hello:
        """Our hello for *log_key* (without addresses: the service adds them);
        :class:`~.hello.NotAMember` if this device is no longer a member of it."""
        ...

    def check_member(self, log_key: bytes, device: bytes, hello: Hello) -> bytes | None:
        """Raise :class:`~.hello.NotAMember` unless *device* (its hello says *hello*)
        is a current member device of *log_key*; return the member identity (None for
        an identity log, whose members are devices)."""
        ...

    def replica(self, log_key: bytes) -> Replica:
        """The log, as sync reads and extends it."""
        ...

    def key_update(self, log_key: bytes, held: SwarmSecret | None) -> SwarmSecret | None:
        """The secret in force, if the log has one that is not *held* and that opens for us."""
        ...

    def behind(self, log_key: bytes, held: SwarmSecret | None) -> bool:
        """Whether the log has a secret in force that is not *held*."""
        ...

    def needs_rotation(self, log_key: bytes, held: SwarmSecret | None) -> bool:
        """Whether the secret in force must be rotated and this device (holding *held*) may."""
        ...

    async def rotate(self, log_key: bytes, recipients: Sequence[Recipient]) -> SwarmSecret:
        """Write a new secret sealed to us and the current *recipients*; return it."""
        ...

    async def grant(self, log_key: bytes, held: SwarmSecret,
                    recipients: Sequence[Recipient]) -> int:
        """Seal the secret in force to the *recipients* that lack it; how many."""
        ...


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A member device connected now, in one log."""

    log: bytes
    device: bytes
    identity: bytes | None
    addrs: tuple[Address, ...]
    connected_at: float
    last_synced: float | None = None
    entries_received: int = 0
    entries_new: int = 0  # of those, new here and durable
    entries_sent: int = 0


@dataclass(frozen=True, slots=True)
class SwarmEvent:
    """A change for apps: ``peer_connected``, ``peer_left``, ``synced`` or ``changed``.

    ``changed``: the log gained entries (a local append or sync); ``synced``:
    a peer and we hold the same heads (``peer`` says which).
    """

    type: str
    log: bytes
    peer: PeerInfo | None = None


@dataclass(eq=False)
class _Live:
    """One checked member connection: its hello (to check it again) and its scope."""

    hello: Hello
    scope: trio.CancelScope
    recipient: Recipient
    #: Its member was removed: it closes once in sync (it has learned of its
    #: removal) or at the deadline set on ``scope``, whichever comes first.
    closing: bool = False


@dataclass(eq=False)
class _Swarm:
    topic: Topic
    secret: SwarmSecret
    known: KnownPeers
    #: Topics of the secrets the one in force replaced: accept-only.
    old_topics: tuple[Topic, ...] = ()
    peers: dict[bytes, PeerInfo] = field(default_factory=dict)
    #: The live connection behind each entry of ``peers``. A connection that
    #: replaced an older one to the same device registers before the older
    #: one's handler has finished unwinding: that one must not touch the entry.
    live: dict[bytes, _Live] = field(default_factory=dict)
    unsubscribe: Callable[[], None] | None = None
    #: This device is no longer a member: the swarm is being left.
    leaving: bool = False
    #: A key check is running; ``key_again``: the log changed meanwhile
    #: (``key_changed`` is set then too, to wake a check waiting to rotate).
    keying: bool = False
    key_again: bool = False
    key_changed: trio.Event = field(default_factory=trio.Event)
    #: When the log last changed (clock time): a peer synced since holds it.
    changed_at: float = 0.0
    #: Addresses dialed on the old topics too (_reach_back).
    reached_back: set[Address] = field(default_factory=set)
    #: A check for members missing from the current topic is scheduled.
    missing_check: bool = False
    #: Meeting the member devices at the rendezvous (swarm/meeting.py), if configured.
    meeting: trio.CancelScope | None = None


class SwarmService:
    """The member swarms of this device's logs. Use ``async with service:``.

    *mdns*: advertise and browse the swarm topics (else known addresses only).
    *clock*: unix seconds for ``connected_at`` and ``last_synced``.
    *rendezvous* (with a mailbox configured) and *device* (our device key):
    meet the member devices met before at their pair mailboxes too, and
    through the transit relay if need be (swarm/meeting.py).
    """

    def __init__(self, home: Path, network: NetworkManager, secrets: SwarmSecrets,
                 logs: SwarmLogs, *, mdns: bool, clock: Callable[[], float] = time.time,
                 hello_timeout: float = HELLO_TIMEOUT,
                 rendezvous: RendezvousStatus | None = None,
                 device: bytes | None = None) -> None:
        self._dir = ensure_private_dir(home / SWARM_DIR)
        self._network = network
        self._secrets = secrets
        self._logs = logs
        self._mdns = mdns
        self._clock = clock
        self._hello_timeout = hello_timeout
        self._rendezvous = rendezvous
        self._device = device
        self._swarms: dict[bytes, _Swarm] = {}
        # Per log: joining, moving and leaving one at a time; and one key
        # change (opening a grant, or rotating) at a time.
        self._join_locks: defaultdict[bytes, trio.Lock] = defaultdict(trio.Lock)
        self._key_locks: defaultdict[bytes, trio.Lock] = defaultdict(trio.Lock)
        self._subscribers: set[trio.MemorySendChannel[SwarmEvent]] = set()
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> SwarmService:
        self._stack = AsyncExitStack()
        # For work a log change starts (leaving a swarm we were removed from).
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        try:
            for secret in self._secrets.all():
                await self.join(secret.log)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            for key in list(self._swarms):
                await self.leave(key)
        finally:
            stack, nursery = self._stack, self._nursery
            self._stack = self._nursery = None
            if nursery is not None:
                nursery.cancel_scope.cancel()
            if stack is not None:
                await stack.aclose()

    # -- joining -------------------------------------------------------------------------

    def joined(self) -> list[bytes]:
        """The logs whose swarm we are in."""
        return list(self._swarms)

    def topic(self, log_key: bytes) -> Topic | None:
        """The member topic of *log_key*, if joined."""
        swarm = self._swarms.get(log_key)
        return None if swarm is None else swarm.topic

    async def join(self, log_key: bytes) -> bool:
        """Join the swarm of *log_key* with its current secret; True if (re)joined.

        Does nothing if this device holds no secret for it, is no longer a
        member of it (:meth:`SwarmLogs.hello` says), or is in the swarm with
        that secret already. Another secret moves to its topic.
        """
        async with self._join_locks[log_key]:
            return await self._join(log_key)

    async def _join(self, log_key: bytes) -> bool:
        secret = self._secrets.get(log_key)
        if secret is None:
            return False
        swarm = self._swarms.get(log_key)
        if swarm is not None and swarm.secret.secret == secret.secret:
            return False
        if swarm is not None:
            await self._leave(log_key)
        try:
            self._logs.hello(log_key)
        except NotAMember as exc:  # removed, or left: keep away from its members
            log.info("not joining the swarm of %s: %s", log_key.hex()[:12], exc)
            return False
        try:
            replica = self._logs.replica(log_key)
        except P2PInviteError as exc:  # a secret outliving its log: nothing to serve
            log.warning("not joining the swarm of %s: %s", log_key.hex()[:12], exc)
            return False
        topic = Topic.for_swarm(secret.secret)
        known = KnownPeers(self._dir / f"{log_key.hex()}.peers")
        old = tuple(Topic.for_swarm(p.secret) for p in self._secrets.previous(log_key))
        swarm = _Swarm(topic, secret, known, old)
        self._swarms[log_key] = swarm

        async def handler(stream: SecureStream) -> None:
            await self._serve(log_key, swarm, stream)

        async def old_handler(stream: SecureStream) -> None:
            await self._serve(log_key, swarm, stream, behind=True)

        swarm.unsubscribe = replica.subscribe(lambda: self._changed(log_key, swarm))
        await self._network.join(topic, handler, advertise=self._mdns, discover=self._mdns,
                                 peers=known.addresses(), one_per_peer=True)
        for t in old:
            await self._network.join(t, old_handler, advertise=False, discover=False)
        log.info("joined the member swarm of %s (epoch %d, topic %s)", log_key.hex()[:12],
                 secret.epoch, topic.short_id)
        self._check_key_soon(log_key, swarm)  # a rotation may have come while we were away
        self._reach_back_if_missing_soon(swarm)
        self._meet_soon(swarm)
        return True

    def _meet_soon(self, swarm: _Swarm) -> None:
        """Meet the swarm's known member devices at the rendezvous, if one is configured."""
        status, device = self._rendezvous, self._device
        if status is None or status.config is None or device is None or self._nursery is None:
            return
        config = status.config
        swarm.meeting = scope = trio.CancelScope()

        async def meet() -> None:
            with scope:
                await meet_members(
                    config, swarm.secret.secret, device, self._network, swarm.topic, status,
                    devices=lambda: [p.device for p in swarm.known.peers()],
                    connected=lambda d: d in swarm.live, label=swarm.topic.short_id,
                    clock=self._clock)

        self._nursery.start_soon(meet)

    async def leave(self, log_key: bytes) -> None:
        """Leave the swarm of *log_key*: its connections close, nothing is advertised."""
        async with self._join_locks[log_key]:
            await self._leave(log_key)

    async def _leave(self, log_key: bytes) -> None:
        swarm = self._swarms.pop(log_key, None)
        if swarm is None:
            return
        if swarm.unsubscribe is not None:
            swarm.unsubscribe()
        if swarm.meeting is not None:
            swarm.meeting.cancel()
        for t in swarm.old_topics:
            await self._network.leave(t)
        await self._network.leave(swarm.topic)

    def know(self, log_key: bytes, device: bytes, static: bytes, member: bytes,
             addrs: tuple[Address, ...] = ()) -> None:
        """Remember a member device met outside the swarm: at an admission, either side.

        It becomes a dial candidate (*addrs*), a recipient of our next
        rotation, and a device to meet at the rendezvous, before it ever
        connects here; the member check still decides when it does. The file
        is written once the caller yields (a host is sending the admission).
        """
        def remember() -> None:
            swarm = self._swarms.get(log_key)
            known = swarm.known if swarm is not None else KnownPeers(
                self._dir / f"{log_key.hex()}.peers")
            try:
                known.seen(device, addrs, self._clock(), static=static, member=member)
            except OSError as exc:  # only a dial candidate
                log.warning("swarm of %s: could not remember device %s: %s",
                            log_key.hex()[:12], device.hex()[:12], exc)

        if self._nursery is None or log_key not in self._swarms:
            remember()  # a guest, before it joins: the join reads the file
            return

        async def later() -> None:
            await trio.lowlevel.checkpoint()
            remember()

        self._nursery.start_soon(later)

    def add_peers(self, log_key: bytes, addrs: tuple[Address, ...]) -> None:
        """Dial *addrs* too in the swarm of *log_key* (e.g. the host that just admitted us)."""
        swarm = self._swarms.get(log_key)
        if swarm is not None:
            self._network.add_peers(swarm.topic, addrs)

    # -- queries and events ---------------------------------------------------------------

    def peers(self, log_key: bytes | None = None) -> list[PeerInfo]:
        """Member devices connected now (in *log_key*, or in every log)."""
        swarms = [self._swarms[log_key]] if log_key in self._swarms else (
            [] if log_key is not None else list(self._swarms.values()))
        return [p for s in swarms for p in s.peers.values()]

    async def subscribe(self) -> AsyncIterator[SwarmEvent]:
        """Events of every swarm, from now on, until the iterator is closed."""
        send, recv = trio.open_memory_channel[SwarmEvent](_SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        try:
            async with recv:
                async for event in recv:
                    yield event
        finally:
            self._subscribers.discard(send)
            send.close()

    def _changed(self, log_key: bytes, swarm: _Swarm) -> None:
        """The log gained entries: tell apps, and check every connected peer again.

        A removal (or a leave) applied here, by a local command or by sync,
        closes the connections of the devices it concerns, whichever side
        dialed, as soon as they hold it (at most :data:`REMOVAL_GRACE` later);
        if it concerns this device, the swarm is left the same way -- every
        swarm, when the change removed this device from its identity.
        """
        swarm.changed_at = self._clock()
        self._emit(SwarmEvent("changed", log_key))
        self._check_key_soon(log_key, swarm)
        if self._leave_unless_member(log_key, swarm):
            # Our identity's log can end our membership of the others too.
            for other_key, other in list(self._swarms.items()):
                if other is not swarm:
                    self._leave_unless_member(other_key, other)
            return
        for device, live in list(swarm.live.items()):
            try:
                self._logs.check_member(log_key, device, live.hello)
            except NotAMember as exc:
                if live.closing:
                    continue
                log.info("swarm %s: device %s is no longer a member device: %s; closing",
                         swarm.topic.short_id, device.hex()[:12], exc)
                # Not at once: the removal itself goes out first, so the removed
                # device knows (its own invitations for the log stop), and
                # nothing else, since the connection ends when the peer holds
                # our heads -- or after REMOVAL_GRACE, whatever it does.
                live.closing = True
                live.scope.deadline = trio.current_time() + REMOVAL_GRACE
                try:
                    swarm.known.forget(device)
                except OSError as err:  # only dial candidates
                    log.warning("swarm %s: could not forget a removed device's addresses: %s",
                                swarm.topic.short_id, err)
            except P2PInviteError as exc:  # the log cannot answer: keep the peer
                log.warning("swarm %s: could not check peer %s again: %s",
                            swarm.topic.short_id, device.hex()[:12], exc)

    def _leave_unless_member(self, log_key: bytes, swarm: _Swarm) -> bool:
        """Start leaving *swarm* if this device is no longer a member of it; True then."""
        try:
            self._logs.hello(log_key)
        except NotAMember as exc:  # this device was removed, or left
            if not swarm.leaving and self._nursery is not None:
                log.info("leaving the swarm of %s: %s", log_key.hex()[:12], exc)
                swarm.leaving = True
                self._nursery.start_soon(self._leave_after_handover, log_key, swarm)
            return True
        return False

    # -- the swarm secret in force -------------------------------------------------------

    def _check_key_soon(self, log_key: bytes, swarm: _Swarm) -> None:
        if swarm.keying:
            swarm.key_again = True
            swarm.key_changed.set()
        elif self._nursery is not None and not swarm.leaving:
            swarm.keying = True
            self._nursery.start_soon(self._keep_key, log_key, swarm)

    async def _keep_key(self, log_key: bytes, swarm: _Swarm) -> None:
        """Follow the log's secret in force: open a grant to us, or rotate, then move."""
        try:
            while self._swarms.get(log_key) is swarm:
                swarm.key_again = False
                try:
                    moved = await self._follow_key(log_key, swarm, jitter=ROTATION_JITTER)
                except P2PInviteError as exc:  # e.g. removed meanwhile: the next change decides
                    log.warning("swarm %s: could not follow the swarm key in force: %s",
                                swarm.topic.short_id, exc)
                    moved = False
                if moved or not swarm.key_again:
                    return
        finally:
            swarm.keying = False

    def _rotation_due(self, log_key: bytes) -> bool:
        held = self._secrets.get(log_key)
        return (self._logs.key_update(log_key, held) is None
                and self._logs.needs_rotation(log_key, held))

    async def _follow_key(self, log_key: bytes, swarm: _Swarm, *, jitter: float) -> bool:
        """One check of the secret in force; True if this swarm moved to another topic."""
        if jitter and self._rotation_due(log_key):
            # Wait a moment, unless the log changes first (most likely with
            # the rotation we would write): then look again.
            swarm.key_changed = trio.Event()
            # Spreading work, not a secret: the stdlib generator is fine.
            with trio.move_on_after(random.uniform(0.1, 1.0) * jitter):  # noqa: S311
                await swarm.key_changed.wait()
            swarm.key_again = False
        async with self._key_locks[log_key]:
            if self._swarms.get(log_key) is not swarm:
                return False  # moved meanwhile: the new swarm checks again
            held = self._secrets.get(log_key)
            update = self._logs.key_update(log_key, held)
            if update is None and self._logs.needs_rotation(log_key, held):
                update = await self._logs.rotate(log_key, self._recipients(swarm))
                log.info("swarm %s: rotated the swarm key to epoch %d",
                         swarm.topic.short_id, update.epoch)
            if update is not None:
                await trio.to_thread.run_sync(self._secrets.put, update)
            else:
                if self._logs.behind(log_key, held):
                    self._reach_back(swarm, swarm.known.addresses())
                if held is None or held.secret == swarm.secret.secret:
                    return False
                # We hold a newer secret than the topic we are on: a rotation
                # made for the swarm we were leaving, while the move to the one
                # before it was still handing over. Follow it now.
        await self._move_after_handover(log_key, swarm)
        return True

    def _reach_back_if_missing_soon(self, swarm: _Swarm) -> None:
        if swarm.old_topics and not swarm.missing_check and self._nursery is not None:
            swarm.missing_check = True
            self._nursery.start_soon(self._reach_back_if_missing, swarm)

    async def _reach_back_if_missing(self, swarm: _Swarm) -> None:
        """Dial on the old topics the known members not met on ours for a while.

        They may be offline; or on a topic we cannot reach while we are on
        one they cannot (an island around the losing one of two concurrent
        rotations, its writer and whoever it admitted since), and neither side
        can learn that from a log it cannot sync.
        """
        await trio.sleep(REACH_BACK_AFTER)
        swarm.missing_check = False
        if self._swarms.get(swarm.secret.log) is swarm:
            missing = [a for p in swarm.known.peers() if p.device not in swarm.live
                       for a in p.addrs]
            self._reach_back(swarm, missing)

    def _reach_back(self, swarm: _Swarm, addrs: list[Address]) -> None:
        """Dial *addrs* on our older topics too (behind, or members missing).

        Members ahead accept there and grant us the secret in force. Our own
        topic may be reached by nobody: the losing one of two concurrent
        rotations, say, whose writer the winner never met.
        """
        new = [a for a in dict.fromkeys(addrs) if a not in swarm.reached_back]
        if not new or not swarm.old_topics:
            return
        swarm.reached_back.update(new)
        log.info("swarm %s: dialing %d address(es) of members on %d older topic(s)",
                 swarm.topic.short_id, len(new), len(swarm.old_topics))
        for t in swarm.old_topics:
            self._network.add_peers(t, new)

    async def rotate_now(self, log_key: bytes) -> int | None:
        """Rotate the secret of *log_key* now if it must be (after our own removal of a member).

        Returns the epoch in force afterwards, None if this swarm is not joined.
        """
        for _ in range(3):  # a concurrent move replaced the swarm: look at the new one
            swarm = self._swarms.get(log_key)
            if swarm is None:
                return None
            try:
                await self._follow_key(log_key, swarm, jitter=0)
            except P2PInviteError as exc:  # the removal stands; another admin will rotate
                log.warning("swarm %s: could not rotate the swarm key: %s",
                            swarm.topic.short_id, exc)
                break
            if self._swarms.get(log_key) in (swarm, None):
                break
        secret = self._secrets.get(log_key)
        return None if secret is None else secret.epoch

    def _recipients(self, swarm: _Swarm) -> list[Recipient]:
        """Every member device met: live ones first, then remembered ones with known keys."""
        out = {d: live.recipient for d, live in swarm.live.items()}
        for p in swarm.known.peers():
            if p.device not in out and p.static is not None and p.member is not None:
                out[p.device] = Recipient(p.member, p.device, p.static)
        return list(out.values())

    async def _grant(self, log_key: bytes, swarm: _Swarm, recipient: Recipient) -> None:
        """Seal the secret in force to a member that reached us on an older topic."""
        try:
            # One key change at a time: a device redialing on the old topic
            # twice at once is granted once.
            async with self._key_locks[log_key]:
                held = self._secrets.get(log_key)
                if held is None or self._swarms.get(log_key) is not swarm:
                    return
                granted = await self._logs.grant(log_key, held, [recipient])
            if granted:
                log.info("swarm %s: granted the swarm key in force to device %s, which was behind",
                         swarm.topic.short_id, recipient.device.hex()[:12])
        except P2PInviteError as exc:
            log.warning("swarm %s: could not grant the swarm key in force: %s",
                        swarm.topic.short_id, exc)

    async def _move_after_handover(self, log_key: bytes, swarm: _Swarm) -> None:
        """Move to the secret now held once our peers hold our heads (at most REMOVAL_GRACE).

        The peers must learn of the new secret (its entry) over the connection
        we are about to close; the ones that miss it catch up on the old topic.
        A peer that reported being in sync after the log's last change holds it.
        """
        since = swarm.changed_at
        with trio.move_on_after(REMOVAL_GRACE):
            while any((p.last_synced or 0) < since  # noqa: ASYNC110 - progress updates them
                      for d, p in swarm.peers.items()
                      if (live := swarm.live.get(d)) is not None and not live.closing):
                await trio.sleep(0.01)
        # Whichever swarm of this log is current now moves to the secret we
        # hold: ours, or the one that replaced it while we handed over (it
        # may have been joined with the secret before ours).
        current = self._swarms.get(log_key)
        if current is not None and not current.leaving:
            await self.join(log_key)

    async def _leave_after_handover(self, log_key: bytes, swarm: _Swarm) -> None:
        """Leave the swarm once our peers hold our last entries (at most REMOVAL_GRACE).

        Our own leave (or the removal we just received) must still reach the
        members: each live connection closes when the peer holds our heads.
        """
        for live in swarm.live.values():
            live.closing = True
            live.scope.deadline = min(live.scope.deadline,
                                      trio.current_time() + REMOVAL_GRACE)
        with trio.move_on_after(REMOVAL_GRACE):
            while swarm.live:  # noqa: ASYNC110 - the handlers end on their own
                await trio.sleep(0.01)
        if self._swarms.get(log_key) is swarm:
            await self.leave(log_key)

    def _emit(self, event: SwarmEvent) -> None:
        for chan in list(self._subscribers):
            try:
                chan.send_nowait(event)
            except trio.WouldBlock:
                log.warning("swarm event subscriber is not keeping up; event dropped")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(chan)

    # -- one member connection --------------------------------------------------------------

    def _our_hello(self, log_key: bytes) -> Hello:
        addrs = tuple(self._network.reachable_addresses[:MAX_ADDRS])
        return replace(self._logs.hello(log_key), addrs=addrs)

    async def _serve(self, log_key: bytes, swarm: _Swarm, stream: SecureStream, *,
                     behind: bool = False) -> None:
        """One member connection; *behind*: it came on the topic of an older secret."""
        peer_id = stream.remote_static.hex()[:12]
        try:
            ours = self._our_hello(log_key)
        except NotAMember:
            return  # this device is no longer a member: the swarm is being left
        try:
            device = verify_binding_proof(stream.remote_payload, stream.remote_static)
            with trio.fail_after(self._hello_timeout):
                await stream.send_message(encode_hello(ours))
                hello = decode_hello(await stream.receive_message(MAX_HELLO))
            if hello.log != log_key:
                raise NotAMember("its hello names another log")
            identity = self._logs.check_member(log_key, device, hello)
        except trio.TooSlowError:
            log.info("swarm %s: peer %s sent no hello in time; dropped", swarm.topic.short_id,
                     peer_id)
            return
        except NotAMember as exc:
            log.info("swarm %s: peer %s is not a member device: %s; dropped",
                     swarm.topic.short_id, peer_id, exc)
            return
        except (P2PInviteError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("swarm %s: peer %s failed its hello: %s", swarm.topic.short_id, peer_id,
                     exc)
            return
        info = PeerInfo(log_key, device, identity, hello.addrs, self._clock())
        recipient = Recipient(log_key if identity is None else identity, device,
                              stream.remote_static)
        token = _Live(hello, trio.CancelScope(), recipient)
        if behind and self._nursery is not None:
            self._nursery.start_soon(self._grant, log_key, swarm, recipient)
        swarm.peers[device] = info
        swarm.live[device] = token
        self._emit(SwarmEvent("peer_connected", log_key, info))
        in_sync = False

        def progress(p: SyncProgress) -> None:
            nonlocal in_sync
            old = swarm.peers.get(device)
            if old is None or swarm.live.get(device) is not token:
                return
            new = replace(old, last_synced=p.last_synced,
                          entries_received=p.stats.entries_received,
                          entries_new=p.stats.entries_new,
                          entries_sent=p.stats.entries_sent)
            swarm.peers[device] = new
            if token.closing and p.synced:
                token.scope.cancel()  # the removed device holds its removal: done
                return
            # "synced" once per catching up, not at every message while in sync.
            if p.synced and not in_sync:
                self._emit(SwarmEvent("synced", log_key, new))
            in_sync = p.synced

        # Everything from the registration on is inside the try: a connection
        # replaced (cancelled) at any await must still take its entry away.
        try:
            with token.scope:
                await self._sync(log_key, swarm, stream, recipient, hello, progress)
        except RemoteProtocolError as exc:
            log.info("swarm %s: peer %s broke the sync protocol: %s; dropped",
                     swarm.topic.short_id, peer_id, exc)
        finally:
            log.debug("swarm %s: connection with device %s closed", swarm.topic.short_id,
                      device.hex()[:12])
            if swarm.live.get(device) is token:
                del swarm.live[device]
                gone = swarm.peers.pop(device)
                self._emit(SwarmEvent("peer_left", log_key, gone))
                self._reach_back_if_missing_soon(swarm)

    async def _sync(self, log_key: bytes, swarm: _Swarm, stream: SecureStream,
                    peer: Recipient, hello: Hello,
                    progress: Callable[[SyncProgress], None]) -> None:
        """Remember where the peer listens and its keys, then sync until the connection ends."""
        device = peer.device
        keys = {"static": peer.static, "member": peer.member}
        if not swarm.known.is_news(device, hello.addrs, **keys):
            swarm.known.seen(device, hello.addrs, self._clock())  # the time only: no I/O
        else:
            try:
                await trio.to_thread.run_sync(
                    lambda: swarm.known.seen(device, hello.addrs, self._clock(), **keys))
            except OSError as exc:  # only dial candidates: never a reason to drop a peer
                log.warning("swarm %s: could not remember a peer's addresses: %s",
                            swarm.topic.short_id, exc)
        result = await run_sync(stream, self._logs.replica(log_key), on_progress=progress,
                                clock=self._clock)
        log.debug("swarm %s: sync with %s ended: %s", swarm.topic.short_id,
                  device.hex()[:12], result.end)
