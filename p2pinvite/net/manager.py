"""The network manager: one TCP listener, topics, dialing, swarms.

Theory of operation
-------------------
One TCP listener serves every topic. A connection goes through three phases:

1. **Preamble** (plaintext). The dialer sends one 2-byte-length-framed msgpack
   map ``{"v": 1, "topic": <32-byte topic id>}``. The listener reads it with a
   size limit; an unknown topic or a malformed preamble closes the connection
   without a word. The preamble's msgpack bytes become the Noise prologue, so
   a middlebox that rewrites them breaks the handshake.
2. **Handshake** (Noise ``XX``, or ``XXpsk0`` with the topic's PSK), via
   :func:`p2pinvite.net.secure.open_secure_stream`. Phases 1 and 2 share one
   deadline (``handshake_timeout``). While in them a connection is
   *unauthenticated*; at most ``max_unauthenticated`` exist, and a new one
   beyond the cap evicts the **oldest** (a flood of idle sockets cannot lock a
   real peer out: the newest connection always gets its chance).
3. **Accept**. The listener sends one empty application message (the
   *accept*). The dialer counts the connection as established only once it
   has read it: it says the listener took the connection (did not drop it
   as a duplicate or over a cap).

Topics come in two kinds (:meth:`NetworkManager.join`):

* **Session topics** (``one_per_peer=False``: invitations). Every accepted
  connection is its own session and runs its own handler; nothing ever
  cancels a session in favour of another connection from the same peer (a
  guest's second connection is a second session, and the guest decides which
  one it talks on). Sessions are capped across the daemon
  (``max_sessions``) and per source address (``max_sessions_per_source``);
  a connection over a cap is closed before the accept.
* **Peer topics** (``one_per_peer=True``: member swarms). At most one
  connection per remote static key. When a second one appears (both sides
  dialed at once), both sides keep the same one: the connection dialed by the
  *lower* static public key (bytewise); if both were dialed by the same side,
  the newer one (a dialer never holds two at once, so the older one is a
  connection the dialer already gave up). The loser is closed (its handler,
  if it had started, is cancelled).

Dialing a topic (:meth:`NetworkManager.dial`, the guest side) races every
address hint and every address mDNS finds, **one dial per address** and
**one connection per peer**: the dialer checks the peer's static key and
handshake payload after message 2, before it completes the handshake, and
abandons a dial to a peer it already holds a connection to, or one the
caller's check rejects (the wrong host). Those peers are then never
completed, so the listener never sees a duplicate session.

Swarms (``join(..., discover=True)`` and/or ``peers=``) browse mDNS for the
topic and keep each address found (and each known peer's address) connected:
dial until a connection is established, and when it ends dial again, backing
off exponentially with jitter (capped) between attempts; while the peer is
connected some other way nothing is dialed. A lost mDNS instance stops the
dialing of its addresses.

Nothing that goes wrong on one connection (bad bytes, a handler raising)
reaches another connection or the manager: it is logged (logger
``p2pinvite.net``; every connection's fate at debug level, never secrets or
keys) and that connection is closed.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from ..crypto.noise import public_key
from ..errors import (
    ConnectionClosed,
    DecodeError,
    HandshakeTimeout,
    LocalProtocolError,
    P2PInviteError,
    RemoteProtocolError,
)
from ..wire import expect_bytes, expect_int, expect_map, frame, pack, unpack
from .peers import PeerFound, PeerLost
from .secure import PeerCheck, SecureStream, open_secure_stream
from .topics import TOPIC_ID_SIZE, Topic

if TYPE_CHECKING:
    from .discovery import Discovery

__all__ = [
    "ACCEPT",
    "MAX_PREAMBLE",
    "MAX_SESSIONS",
    "MAX_SESSIONS_PER_SOURCE",
    "PREAMBLE_VERSION",
    "Candidates",
    "Handler",
    "NetworkManager",
    "PeerUnreachable",
    "decode_preamble",
    "encode_preamble",
    "open_network_manager",
]

log = logging.getLogger("p2pinvite.net")

PREAMBLE_VERSION: Final = 1
#: Largest preamble body accepted (the real one is 44 bytes).
MAX_PREAMBLE: Final = 128
#: The accept message: an empty application message.
ACCEPT: Final = b""
#: Dial backoff: first delay, cap (seconds); each delay is jittered to 50-100 %.
BACKOFF_BASE: Final = 0.25
BACKOFF_CAP: Final = 30.0
#: A guest's dials (:meth:`NetworkManager.dial`) retry a failing address at most this far apart.
CONNECT_BACKOFF_CAP: Final = 2.0
#: A swarm connection must last this long (seconds) to reset its dialer's backoff:
#: one the peer's handler drops at once (its member check failed, say) is a
#: failed attempt, or such a peer would be redialed four times a second.
STABLE_CONNECTION: Final = 1.0
#: How long closing one connection may take (it is shielded from cancellation).
CLOSE_TIMEOUT: Final = 2.0
#: Sessions (connections of session topics: invitations) served at once, in
#: all, and from one source address. Each holds at most its protocol's
#: message limit in buffers, so these caps bound the memory guests can pin.
MAX_SESSIONS: Final = 128
MAX_SESSIONS_PER_SOURCE: Final = 32

Handler = Callable[[SecureStream], Awaitable[None]]
Address = tuple[str, int]
#: Opens the byte stream of a path that is not a direct TCP connection (a
#: transit relay pairing us with the peer); the preamble and the Noise
#: handshake then run over it exactly as over TCP.
Opener = Callable[[], Awaitable[trio.abc.Stream]]

# What a failed dial or handshake may raise; anything else is a bug and propagates.
_DIAL_ERRORS: Final = (P2PInviteError, OSError, trio.BrokenResourceError,
                       trio.ClosedResourceError)


class PeerUnreachable(ConnectionClosed):
    """No peer of the topic completed the handshake in time (``connect``)."""


class _Unwanted(ConnectionClosed):
    """Internal: a dial abandoned after message 2, the peer being already connected."""


class _Rejected(_Unwanted):
    """Internal: a dial abandoned after message 2, the peer being one we do not want."""


def encode_preamble(topic_id: bytes) -> bytes:
    """The preamble body (canonical msgpack) a dialer sends for *topic_id*."""
    return pack({"v": PREAMBLE_VERSION, "topic": topic_id})


def decode_preamble(body: bytes) -> bytes:
    """Return the topic id of a preamble *body*; :class:`DecodeError` if malformed.

    Unknown extra keys are ignored (forward compatibility); the version must be 1.
    """
    m = expect_map(unpack(body, max_size=MAX_PREAMBLE, max_items=8), "preamble")
    if expect_int(m, "v") != PREAMBLE_VERSION:
        raise DecodeError("unsupported preamble version")
    return expect_bytes(m, "topic", size=TOPIC_ID_SIZE)


async def _read_exact(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    # receive_some(max_bytes) never over-reads, so the Noise bytes that follow
    # the preamble stay in the socket for the handshake.
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise ConnectionClosed("peer closed the connection in the preamble")
        buf += chunk
    return bytes(buf)


def _backoff(attempt: int, cap: float) -> float:
    # Jitter spreads retries of many peers; it needs no CSPRNG.
    delay: float = min(cap, BACKOFF_BASE * 2.0 ** min(attempt, 16))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311


def _describe(exc: BaseException) -> str:
    # Our errors never carry secrets; the type and message are enough for a log line.
    return f"{type(exc).__name__}: {exc}"


def _peer_id(key: bytes) -> str:
    # A static public key is not a secret; a prefix names a peer in a log line.
    return key.hex()[:12]


def _source(stream: trio.abc.Stream) -> str:
    try:
        return str(stream.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "?"


@dataclass(eq=False)
class _Conn:
    stream: SecureStream
    dialer: bytes  # static public key of the side that dialed
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    source: str | None = None  # counted in the session caps under this address


@dataclass(eq=False)
class _Joined:
    topic: Topic
    handler: Handler
    one_per_peer: bool
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # one_per_peer topics: the connection of each peer; session topics: every session.
    conns: dict[bytes, _Conn] = field(default_factory=dict)
    sessions: set[_Conn] = field(default_factory=set)
    # What a dial to an address authenticated as, so a connected peer is not redialed.
    seen_at: dict[Address, bytes] = field(default_factory=dict)
    # Replaced (after being set) whenever one of its connections ends.
    ended: trio.Event = field(default_factory=trio.Event)
    # Swarms: keep one more address connected (set by the swarm's task).
    dial: Callable[[Address], None] | None = None

    def live(self) -> list[_Conn]:
        return [*self.conns.values(), *self.sessions]


class _Dialer:
    """One swarm address being kept connected; :meth:`lose` stops it (mDNS lost it)."""

    def __init__(self) -> None:
        self.lost = False
        self._scope: trio.CancelScope | None = None

    @contextmanager
    def dialing(self) -> Iterator[None]:
        """The dialing phase: what :meth:`lose` cancels (never a running handler)."""
        with trio.CancelScope() as self._scope:
            yield
        self._scope = None

    def lose(self) -> None:
        self.lost = True
        if self._scope is not None:
            self._scope.cancel()


class Candidates:
    """The peers of one topic as a dialer finds them: :meth:`NetworkManager.dial`.

    Every address (hints, then whatever mDNS finds) is dialed by one task,
    retried with backoff while it fails. A peer is *held* from the moment a
    dial's handshake reveals it (message 2) until the caller releases it;
    while it is held, other dials that reach it are abandoned before they
    complete the handshake, so there is at most one connection per peer. The
    *check_peer* callback rejects peers for good (the wrong host): their
    dials are abandoned the same way and those addresses are not retried.
    """

    def __init__(self, manager: NetworkManager, topic: Topic, nursery: trio.Nursery,
                 check_peer: PeerCheck | None) -> None:
        self._manager = manager
        self._topic = topic
        self._nursery = nursery
        self._check_peer = check_peer
        self._send, self._recv = trio.open_memory_channel[SecureStream](math.inf)
        self._dialing: set[Address] = set()
        self._held: set[bytes] = set()
        self._rejected: set[bytes] = set()
        self._changed = trio.Event()
        #: Dials whose handshake has revealed a wanted peer and not yet ended.
        self.pending = 0
        #: The last failure of any dial (for the error the caller reports).
        self.last_error: str | None = None

    def add(self, addr: Address) -> None:
        """Dial *addr* too (once: an address already being dialed is not dialed twice)."""
        if addr in self._dialing:
            log.debug("dial %s: %s:%d already being dialed", self._topic.short_id, *addr)
            return
        self._dialing.add(addr)
        self._nursery.start_soon(self._dial_loop, addr)

    def add_path(self, label: str, opener: Opener) -> None:
        """Dial once over the stream *opener* gives (a relay), raced with the addresses.

        *label* names the path in logs. Not retried: a relay pairs one
        attempt with the peer's; the caller adds the path again if it wants
        another try.
        """
        self._nursery.start_soon(self._dial_path, label, opener)

    async def _dial_path(self, label: str, opener: Opener) -> None:
        try:
            stream = await self._dial_once((label, 0), opener)
        except _Unwanted as exc:
            log.debug("dial %s over %s abandoned: %s", self._topic.short_id, label, exc.reason)
            return
        except _DIAL_ERRORS as exc:
            self.last_error = f"{label}: {_describe(exc)}"
            log.debug("dial %s over %s failed: %s", self._topic.short_id, label,
                      self.last_error)
            return
        self._send.send_nowait(stream)

    async def next(self) -> SecureStream:
        """The next established connection, to a peer not held already (it is now held)."""
        return await self._recv.receive()

    def release(self, peer: bytes, *, again: bool) -> None:
        """The caller is done with its connection to *peer* (a static public key).

        ``again``: the peer may be dialed again (its session dropped and should
        resume); otherwise it is rejected for the rest of this dial.
        """
        self._held.discard(peer)
        if not again:
            self._rejected.add(peer)
        self._wake()

    def reject(self, peer: bytes) -> None:
        """Never connect to *peer* again in this dial (e.g. it answered like the wrong host)."""
        self.release(peer, again=False)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _claim(self, remote: bytes, payload: bytes) -> None:
        if remote in self._rejected:
            raise _Rejected(f"peer {_peer_id(remote)} was rejected")
        if remote in self._held:
            raise _Unwanted(f"peer {_peer_id(remote)} is already connected")
        if self._check_peer is not None:
            try:
                self._check_peer(remote, payload)
            except P2PInviteError as exc:
                self._rejected.add(remote)
                raise _Rejected(f"peer {_peer_id(remote)} rejected: {exc}") from None
        self._held.add(remote)

    async def _dial_once(self, addr: Address, opener: Opener | None = None) -> SecureStream:
        claimed: list[bytes] = []

        def check(remote: bytes, payload: bytes) -> None:
            self._claim(remote, payload)
            claimed.append(remote)
            self.pending += 1

        try:
            stream = await self._manager._dial(self._topic, addr, check_peer=check,
                                               opener=opener)
        except BaseException:
            if claimed:  # the peer was held for this dial: let the others have it
                self.pending -= 1
                self._held.discard(claimed[0])
                self._wake()
            raise
        self.pending -= 1
        return stream

    async def _dial_loop(self, addr: Address) -> None:
        topic = self._topic
        attempt = 0
        while True:
            changed = self._changed
            log.debug("dial %s: %s:%d", topic.short_id, *addr)
            try:
                stream = await self._dial_once(addr)
            except _Rejected as exc:
                log.debug("dial %s: %s:%d abandoned: %s", topic.short_id, *addr, exc.reason)
                return  # this address speaks for a peer we do not want
            except _Unwanted as exc:
                log.debug("dial %s: %s:%d abandoned: %s", topic.short_id, *addr, exc.reason)
                await changed.wait()  # a duplicate: try again once its peer is released
                continue
            except _DIAL_ERRORS as exc:
                self.last_error = _describe(exc)
                log.debug("dial %s: %s:%d failed: %s", topic.short_id, *addr, self.last_error)
                await trio.sleep(_backoff(attempt, CONNECT_BACKOFF_CAP))
                attempt += 1
                continue
            peer = stream.remote_static
            log.debug("dial %s: %s:%d established with peer %s", topic.short_id, *addr,
                      _peer_id(peer))
            self._send.send_nowait(stream)
            while peer in self._held:  # until the caller is done with this peer
                await self._changed.wait()
            if peer in self._rejected:
                return
            attempt = 0


class NetworkManager:
    """Listener, joined topics and their connections. Use :func:`open_network_manager`."""

    def __init__(self, nursery: trio.Nursery, *, static_key: bytes, payload: bytes,
                 addresses: list[Address], discovery: Discovery | None,
                 handshake_timeout: float, max_unauthenticated: int,
                 max_sessions: int = MAX_SESSIONS,
                 max_sessions_per_source: int = MAX_SESSIONS_PER_SOURCE) -> None:
        self._nursery = nursery
        self._static_key = static_key
        #: Our static public key (X25519).
        self.public_key = public_key(static_key)
        self._payload = payload
        #: The listener's actual addresses (port 0 resolved).
        self.addresses = addresses
        self._discovery = discovery
        self._hs_timeout = handshake_timeout
        self._max_unauth = max_unauthenticated
        self._max_sessions = max_sessions
        self._max_per_source = max_sessions_per_source
        self._pending: OrderedDict[object, trio.CancelScope] = OrderedDict()
        self._topics: dict[bytes, _Joined] = {}
        self._by_source: Counter[str] = Counter()

    # -- public API ----------------------------------------------------------

    @property
    def reachable_addresses(self) -> list[Address]:
        """Where peers can dial us: what we tell them (address hints, member hellos).

        The listener's addresses, except that a wildcard one (``0.0.0.0``, the
        default) stands for the addresses mDNS runs on, at the listener's port;
        with mDNS off a wildcard names no one address and is left out.
        """
        out: list[Address] = []
        for host, port in self.addresses:
            if host in ("0.0.0.0", "::", ""):  # noqa: S104
                if self._discovery is not None:
                    out.extend((a, port) for a in self._discovery.interface_addresses)
            else:
                out.append((host, port))
        return out

    @property
    def unauthenticated(self) -> int:
        """Connections currently in the preamble or handshake."""
        return len(self._pending)

    @property
    def sessions(self) -> int:
        """Sessions (connections of session topics) being served now."""
        return self._by_source.total()

    def is_joined(self, topic: Topic) -> bool:
        """Whether *topic* is joined (accepted on the listener, advertised if asked)."""
        return topic.id in self._topics

    async def join(self, topic: Topic, handler: Handler, *, advertise: bool = True,
                   discover: bool = False, peers: Sequence[Address] = (),
                   one_per_peer: bool = True) -> None:
        """Accept connections for *topic* and hand each to *handler*.

        *advertise*: announce the topic over mDNS (ignored when mDNS is off).
        *discover*: swarm mode, dial the peers mDNS finds for the topic.
        *peers*: addresses to dial as part of the swarm (e.g. known members).
        *one_per_peer*: keep one connection per peer (a swarm); ``False`` makes
        every connection its own session (invitations), under the session caps.
        Raises :class:`LocalProtocolError` if the topic is already joined.
        """
        if topic.id in self._topics:
            raise LocalProtocolError(f"topic {topic.short_id} is already joined")
        joined = _Joined(topic, handler, one_per_peer)
        self._topics[topic.id] = joined
        if advertise and self._discovery is not None:
            try:
                await self._discovery.advertise(topic, self.addresses[0][1],
                                                addresses=self._advertised_hosts())
            except BaseException:
                self._topics.pop(topic.id, None)
                raise
        if one_per_peer:  # a swarm: dial what is found and what is added, keep it connected
            await self._nursery.start(self._swarm, joined, discover, tuple(peers))
        log.debug("joined topic %s (advertise=%s, discover=%s)", topic.short_id,
                  advertise, discover)

    async def leave(self, topic: Topic) -> None:
        """Withdraw *topic*, stop its dialing, close its connections (waits for them)."""
        joined = self._topics.pop(topic.id, None)
        if joined is None:
            return
        joined.scope.cancel()
        conns = joined.live()
        for conn in conns:
            conn.scope.cancel()
        if self._discovery is not None:
            await self._discovery.withdraw(topic)
        for conn in conns:
            await conn.done.wait()
        log.debug("left topic %s", topic.short_id)

    def add_peers(self, topic: Topic, addresses: Sequence[Address]) -> None:
        """Keep *addresses* connected too, in the swarm of the joined peer *topic*."""
        joined = self._topics.get(topic.id)
        if joined is None or joined.dial is None:
            raise LocalProtocolError(f"topic {topic.short_id} is not a joined swarm")
        for addr in addresses:
            joined.dial(addr)

    @asynccontextmanager
    async def dial(self, topic: Topic, *, hints: Sequence[Address] = (), mdns: bool = True,
                   check_peer: PeerCheck | None = None, more_paths: bool = False
                   ) -> AsyncIterator[Candidates]:
        """Dial the peers of *topic*: every hint and every address mDNS finds, raced.

        Yields :class:`Candidates`; ``await candidates.next()`` returns each
        established connection (one per peer at a time, see there). Streams
        handed out are the caller's to close; on exit every dial still in
        progress is stopped. Raises :class:`PeerUnreachable` at once if there
        is nothing to dial (no hints, mDNS off, and not *more_paths*: the
        caller adding addresses or paths as it learns them, from a rendezvous).
        """
        use_mdns = mdns and self._discovery is not None
        if not hints and not use_mdns and not more_paths:
            raise PeerUnreachable("no address hints and mDNS is off")
        async with trio.open_nursery() as nursery:
            candidates = Candidates(self, topic, nursery, check_peer)
            for addr in hints:
                candidates.add(addr)
            if use_mdns:
                assert self._discovery is not None
                nursery.start_soon(self._browse_into, self._discovery, topic, candidates)
            try:
                yield candidates
            finally:
                nursery.cancel_scope.cancel()
                # Established connections nobody took: close them.
                candidates._send.close()
                with trio.CancelScope(shield=True):
                    async for stream in candidates._recv:
                        await _close(stream)

    async def connect(self, topic: Topic, *, hints: Sequence[Address] = (), mdns: bool = True,
                      timeout: float = 10.0, check_peer: PeerCheck | None = None
                      ) -> SecureStream:
        """Dial a peer of *topic* (as :meth:`dial`) and return the first established stream.

        The stream is the caller's to close. Raises :class:`PeerUnreachable`
        after *timeout* seconds without one.
        """
        async with self.dial(topic, hints=hints, mdns=mdns, check_peer=check_peer) as found:
            with trio.move_on_after(timeout):
                return await found.next()
        why = f" (last error: {found.last_error})" if found.last_error else ""
        raise PeerUnreachable(
            f"no peer for topic {topic.short_id} answered within {timeout} s{why}")

    # -- dialing -------------------------------------------------------------

    async def _browse_into(self, discovery: Discovery, topic: Topic,
                           candidates: Candidates) -> None:
        async with discovery.browse(topic) as events:
            async for event in events:
                if isinstance(event, PeerFound):
                    log.debug("dial %s: mDNS found %s", topic.short_id,
                              ", ".join(f"{h}:{p}" for h, p in event.addresses))
                    for addr in event.addresses:
                        candidates.add(addr)

    def _advertised_hosts(self) -> list[str] | None:
        host = self.addresses[0][0]
        return None if host in ("0.0.0.0", "") else [host]  # noqa: S104

    async def _dial(self, topic: Topic, addr: Address,
                    check_peer: PeerCheck | None = None, opener: Opener | None = None
                    ) -> SecureStream:
        """Connect (to *addr*, or over *opener*), send the preamble, handshake, read the accept."""
        def check(remote: bytes, payload: bytes) -> None:
            if remote == self.public_key:
                raise LocalProtocolError("dialed ourselves")
            if check_peer is not None:
                check_peer(remote, payload)

        try:
            with trio.fail_after(self._hs_timeout):
                stream: trio.abc.Stream
                if opener is not None:
                    stream = await opener()
                else:
                    stream = await trio.open_tcp_stream(*addr)
                try:
                    body = encode_preamble(topic.id)
                    secure = await open_secure_stream(
                        stream, initiator=True, static_key=self._static_key, psk=topic.psk,
                        prologue=body, payload=self._payload, timeout=self._hs_timeout,
                        lead=frame(body), check_peer=check)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                try:
                    if await secure.receive_message(max_size=0) != ACCEPT:
                        raise RemoteProtocolError("expected the accept message")
                except BaseException:
                    await trio.aclose_forcefully(secure)
                    raise
        except trio.TooSlowError:
            raise HandshakeTimeout(f"no accept within {self._hs_timeout} s") from None
        return secure

    async def _swarm(self, joined: _Joined, discover: bool, peers: tuple[Address, ...], *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with joined.scope:
            async with trio.open_nursery() as nursery:
                dialers: dict[Address, _Dialer] = {}
                by_instance: dict[str, list[Address]] = {}

                def dial(addr: Address) -> None:
                    if addr not in dialers:
                        dialers[addr] = _Dialer()
                        nursery.start_soon(self._keep_dialing, joined, addr, dialers)

                joined.dial = dial
                for addr in peers:
                    dial(addr)
                task_status.started()
                if not (discover and self._discovery is not None):
                    await trio.sleep_forever()  # only known and added addresses
                else:
                    async with self._discovery.browse(joined.topic) as events:
                        async for event in events:
                            if isinstance(event, PeerFound):
                                by_instance[event.instance] = list(event.addresses)
                                for addr in event.addresses:
                                    dial(addr)
                            elif isinstance(event, PeerLost):
                                for addr in by_instance.pop(event.instance, []):
                                    dialer = dialers.pop(addr, None)
                                    if dialer is not None:
                                        dialer.lose()

    async def _keep_dialing(self, joined: _Joined, addr: Address,
                            dialers: dict[Address, _Dialer]) -> None:
        """Keep one connection to the peer at *addr* for as long as the topic is joined.

        Dials until a connection is established, runs its handler, and when it
        ends dials again (backing off). While the peer is connected some other
        way (it dialed us, or another of its addresses answered) it waits for
        a connection of the topic to end. A lost mDNS instance stops the
        dialing (a connection already up is left alone: it ends by itself).
        """
        dialer = dialers[addr]

        def not_connected(remote: bytes, payload: bytes) -> None:
            # Abandon before message 3: the peer has a connection with us already
            # (it dialed us meanwhile, or another of its addresses answered).
            joined.seen_at[addr] = remote
            if remote in joined.conns:
                raise _Unwanted(f"peer {_peer_id(remote)} is already connected")

        attempt = 0
        try:
            while not dialer.lost:
                ended = joined.ended
                known = joined.seen_at.get(addr)
                if known is not None and known in joined.conns:
                    await ended.wait()
                    continue
                conn: _Conn | None = None
                with dialer.dialing():
                    try:
                        stream = await self._dial(joined.topic, addr, check_peer=not_connected)
                    except _Unwanted:
                        await ended.wait()
                        continue
                    except _DIAL_ERRORS as exc:
                        log.debug("swarm %s: dial %s:%d failed: %s", joined.topic.short_id,
                                  *addr, _describe(exc))
                        await trio.sleep(_backoff(attempt, BACKOFF_CAP))
                        attempt += 1
                        continue
                    conn = await self._adopt(joined, stream, dialer=self.public_key,
                                             accept=False)
                if conn is not None:
                    began = trio.current_time()
                    await self._run_handler(joined, conn)
                    if trio.current_time() - began >= STABLE_CONNECTION:
                        attempt = 0
                # It ended (or lost to a duplicate): dial again, not at once.
                await trio.sleep(_backoff(attempt, BACKOFF_CAP))
                attempt += 1
        finally:
            if dialers.get(addr) is dialer:
                del dialers[addr]

    async def dial_path(self, topic: Topic, label: str, opener: Opener, *,
                        check_peer: PeerCheck | None = None) -> bool:
        """Dial the joined peer *topic* once over *opener*'s stream (a relay); run the connection.

        The counterpart of :meth:`serve_stream` for the side that dials: the
        preamble and handshake run over the stream as over TCP, and the
        connection is registered and handed to the topic's handler exactly as
        one the swarm dialed itself (one per peer: a duplicate is dropped by the
        usual rule). Returns when the connection ends: True if it was
        established, False if the dial failed (logged; *label* names the path).
        """
        joined = self._topics.get(topic.id)
        if joined is None or not joined.one_per_peer:
            raise LocalProtocolError(f"topic {topic.short_id} is not a joined swarm")

        def not_connected(remote: bytes, payload: bytes) -> None:
            if remote in joined.conns:
                raise _Unwanted(f"peer {_peer_id(remote)} is already connected")
            if check_peer is not None:
                check_peer(remote, payload)

        try:
            stream = await self._dial(topic, (label, 0), check_peer=not_connected,
                                      opener=opener)
        except _DIAL_ERRORS as exc:
            log.debug("swarm %s: dial over %s failed: %s", topic.short_id, label,
                      _describe(exc))
            return False
        conn = await self._adopt(joined, stream, dialer=self.public_key, accept=False)
        if conn is None:
            return False
        await self._run_handler(joined, conn)
        return True

    # -- accepting -----------------------------------------------------------

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve *stream* as a connection accepted on our listener; returns when it ends.

        For a path we opened ourselves but answer on: a transit relay joining
        us to a peer that dials through it. The same caps, deadline,
        preamble, handshake and handlers apply; the stream is closed on return.
        """
        try:
            await self._serve_inbound(stream)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_inbound(self, stream: trio.abc.Stream) -> None:
        """Preamble and handshake of one accepted connection, under the cap and deadline."""
        slot = trio.CancelScope()
        key = object()
        if len(self._pending) >= self._max_unauth:
            _, oldest = self._pending.popitem(last=False)
            oldest.cancel()
            log.info("unauthenticated connection limit (%d) reached; evicted the oldest",
                     self._max_unauth)
        self._pending[key] = slot
        secure: SecureStream | None = None
        joined: _Joined | None = None
        source = _source(stream)
        try:
            with slot, trio.move_on_after(self._hs_timeout) as deadline:
                length = int.from_bytes(await _read_exact(stream, 2), "big")
                if length > MAX_PREAMBLE:
                    raise DecodeError("preamble too large")
                body = await _read_exact(stream, length)
                joined = self._topics.get(decode_preamble(body))
                if joined is None:
                    log.debug("inbound from %s: unknown topic; closed", source)
                    return
                secure = await open_secure_stream(
                    stream, initiator=False, static_key=self._static_key,
                    psk=joined.topic.psk, prologue=body, payload=self._payload,
                    timeout=max(deadline.deadline - trio.current_time(), 0.0))
            if secure is None:
                log.debug("inbound from %s: handshake deadline passed or evicted", source)
        except _DIAL_ERRORS as exc:
            log.debug("inbound from %s: dropped before authentication: %s", source,
                      _describe(exc))
        finally:
            self._pending.pop(key, None)
            if secure is None:
                await trio.aclose_forcefully(stream)
        if secure is None or joined is None:
            return
        # The handler runs in this task: trio.serve_listeners closes the
        # socket when this function returns.
        if joined.one_per_peer:
            conn = await self._adopt(joined, secure, dialer=secure.remote_static, accept=True)
        else:
            conn = await self._open_session(joined, secure, source)
        if conn is not None:
            await self._run_handler(joined, conn)

    async def _send_accept(self, joined: _Joined, stream: SecureStream) -> bool:
        """Send the accept; False (the stream closed) if that fails or the topic was left."""
        try:
            with trio.fail_after(self._hs_timeout):
                await stream.send_message(ACCEPT)
        except (*_DIAL_ERRORS, trio.TooSlowError) as exc:
            log.debug("topic %s: could not send the accept: %s", joined.topic.short_id,
                      _describe(exc))
            await _close(stream)
            return False
        # Sending yielded: the topic may have been left meanwhile.
        if self._topics.get(joined.topic.id) is not joined:
            await _close(stream)
            return False
        return True

    async def _open_session(self, joined: _Joined, stream: SecureStream,
                            source: str) -> _Conn | None:
        """Admit a connection of a session topic under the session caps, or close it."""
        peer = _peer_id(stream.remote_static)
        if self.sessions >= self._max_sessions:
            log.info("session limit (%d) reached; connection from %s refused",
                     self._max_sessions, source)
            await _close(stream)
            return None
        if self._by_source[source] >= self._max_per_source:
            log.info("session limit per source (%d) reached; connection from %s refused",
                     self._max_per_source, source)
            await _close(stream)
            return None
        # Counted before the accept's await, so concurrent arrivals see the cap.
        conn = _Conn(stream, stream.remote_static, source=source)
        self._by_source[source] += 1
        if not await self._send_accept(joined, stream):
            self._uncount(conn)
            return None
        joined.sessions.add(conn)
        log.debug("topic %s: session with peer %s from %s", joined.topic.short_id, peer, source)
        return conn

    def _uncount(self, conn: _Conn) -> None:
        if conn.source is not None:
            self._by_source[conn.source] -= 1
            if self._by_source[conn.source] <= 0:
                del self._by_source[conn.source]
            conn.source = None

    async def _adopt(self, joined: _Joined, stream: SecureStream, *, dialer: bytes,
                     accept: bool) -> _Conn | None:
        """Dedupe an authenticated connection; return it registered, or None if closed."""
        remote = stream.remote_static
        if remote == self.public_key or self._topics.get(joined.topic.id) is not joined:
            await _close(stream)
            return None
        old = joined.conns.get(remote)
        # Both ends apply the same rule, so both keep the same connection.
        if old is not None and old.dialer != dialer and old.dialer < dialer:
            log.debug("topic %s: duplicate connection with peer %s; keeping the other one",
                      joined.topic.short_id, _peer_id(remote))
            await _close(stream)
            return None
        if accept:
            if not await self._send_accept(joined, stream):
                return None
            old = joined.conns.get(remote)
            if old is not None and old.dialer != dialer and old.dialer < dialer:
                await _close(stream)
                return None
        if old is not None:
            log.debug("topic %s: newer connection with peer %s replaces the older one",
                      joined.topic.short_id, _peer_id(remote))
            old.scope.cancel()
        conn = _Conn(stream, dialer)
        joined.conns[remote] = conn
        return conn

    async def _run_handler(self, joined: _Joined, conn: _Conn) -> None:
        try:
            with conn.scope:
                await joined.handler(conn.stream)
        except Exception as exc:
            log.warning("topic %s: connection handler failed: %s", joined.topic.short_id,
                        _describe(exc))
        finally:
            if joined.conns.get(conn.stream.remote_static) is conn:
                del joined.conns[conn.stream.remote_static]
            joined.sessions.discard(conn)
            self._uncount(conn)
            await _close(conn.stream)
            conn.done.set()
            joined.ended.set()
            joined.ended = trio.Event()


async def _close(stream: trio.abc.AsyncResource) -> None:
    """Close gracefully (end marker) if it can be done quickly; shielded from cancellation."""
    with trio.CancelScope(shield=True):
        with trio.move_on_after(CLOSE_TIMEOUT):
            await stream.aclose()
            return
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def open_network_manager(
    *,
    static_key: bytes,
    payload: bytes = b"",
    listen: tuple[str, int] = ("127.0.0.1", 0),
    mdns_interfaces: Sequence[str] | None = None,
    handshake_timeout: float = 10.0,
    max_unauthenticated: int = 64,
    max_sessions: int = MAX_SESSIONS,
    max_sessions_per_source: int = MAX_SESSIONS_PER_SOURCE,
) -> AsyncIterator[NetworkManager]:
    """Run a :class:`NetworkManager`: listen on *listen*, mDNS on *mdns_interfaces*.

    *static_key* is our X25519 private key; *payload* goes (encrypted) into
    every handshake we complete. ``mdns_interfaces=None`` turns mDNS off
    (hints only); otherwise it lists interface names or IPv4 addresses, and
    nothing is multicast anywhere else. *max_sessions* and
    *max_sessions_per_source* cap the sessions of session topics. On exit
    every connection is closed, advertisements are withdrawn and the
    listener is closed.
    """
    if max_unauthenticated < 1 or max_sessions < 1 or max_sessions_per_source < 1:
        raise LocalProtocolError("connection and session caps must be at least 1")
    host, port = listen
    async with AsyncExitStack() as stack:
        discovery = None
        if mdns_interfaces is not None:
            from .discovery import open_discovery  # zeroconf loads only when mDNS is on

            discovery = await stack.enter_async_context(open_discovery(mdns_interfaces))
        # An ASCII host (an address, usually) needs no IDNA processing: as bytes,
        # trio does not load the stdlib's IDNA codec just to encode "127.0.0.1".
        listen_host: str | bytes = host.encode("ascii") if host and host.isascii() else host
        listeners = await trio.open_tcp_listeners(port, host=listen_host)
        for listener in listeners:
            stack.push_async_callback(listener.aclose)
        addresses: list[Address] = []
        for listener in listeners:
            ip, lport = listener.socket.getsockname()[:2]
            addresses.append((str(ip), int(lport)))
        nursery = await stack.enter_async_context(trio.open_nursery())
        manager = NetworkManager(
            nursery, static_key=static_key, payload=payload,
            addresses=addresses,
            discovery=discovery, handshake_timeout=handshake_timeout,
            max_unauthenticated=max_unauthenticated, max_sessions=max_sessions,
            max_sessions_per_source=max_sessions_per_source)
        await nursery.start(trio.serve_listeners, manager._serve_inbound, listeners)
        try:
            yield manager
        finally:
            nursery.cancel_scope.cancel()
