"""The network manager: one TCP listener, topics, dialing, swarms.

Theory of operation
-------------------
One TCP listener serves every topic. A connection goes through three phases:

1. **Preamble** (plaintext). The dialer sends one 2-byte-length-framed msgpack
   map ``{"v": 1, "topic": <32-byte topic id>}``. The listener reads it with a
   size limit; an unknown topic or a malformed preamble closes the connection
   without a word. The preamble's msgpack bytes become the Noise prologue, so
   a middlebox that rewrites them breaks the handshake.
2. **Handshake** (Noise ``XX``, or ``XXpsk3`` with the topic's PSK), via
   :func:`p2pinvite.net.secure.open_secure_stream`. Phases 1 and 2 share one
   deadline (``handshake_timeout``). While in them a connection is
   *unauthenticated*; at most ``max_unauthenticated`` exist, and a new one
   beyond the cap evicts the **oldest** (a flood of idle sockets cannot lock a
   real peer out: the newest connection always gets its chance).
3. **Accept**. The listener sends one empty application message (the
   *accept*). The dialer counts the connection as established only once it
   has read it: with ``XXpsk3`` the PSK is mixed in by the initiator's last
   message, so the accept is what proves to the dialer that the responder
   holds the PSK too, and that it took the connection (not dropped it as a
   duplicate).

Established connections of a joined topic go to its handler, each in its own
task in the manager's nursery. Per topic there is at most one connection per
remote static key. When a second one appears (both sides dialed at once), both
sides keep the same one: the connection dialed by the *lower* static public
key (bytewise); if both were dialed by the same side, the newer one. The loser
is closed (its handler, if it had started, is cancelled).

Swarms (``join(..., discover=True)``) browse mDNS for the topic and dial each
address found until one connection is established, backing off exponentially
with jitter (capped) between failures. A lost instance stops its dialing.

Nothing that goes wrong on one connection (bad bytes, a handler raising)
reaches another connection or the manager: it is logged (logger
``p2pinvite.net``, never secrets or keys) and that connection is closed.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
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
from .secure import SecureStream, open_secure_stream
from .topics import TOPIC_ID_SIZE, Topic

if TYPE_CHECKING:
    from .discovery import Discovery

__all__ = [
    "ACCEPT",
    "MAX_PREAMBLE",
    "PREAMBLE_VERSION",
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
#: connect() retries a failing hint at most this far apart.
CONNECT_BACKOFF_CAP: Final = 2.0
#: How long closing one connection may take (it is shielded from cancellation).
CLOSE_TIMEOUT: Final = 2.0

Handler = Callable[[SecureStream], Awaitable[None]]
Address = tuple[str, int]

# What a failed dial or handshake may raise; anything else is a bug and propagates.
_DIAL_ERRORS: Final = (P2PInviteError, OSError, trio.BrokenResourceError,
                       trio.ClosedResourceError)


class PeerUnreachable(ConnectionClosed):
    """No peer of the topic completed the handshake in time (``connect``)."""


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


@dataclass(eq=False)
class _Conn:
    stream: SecureStream
    dialer: bytes  # static public key of the side that dialed
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class _Joined:
    topic: Topic
    handler: Handler
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    conns: dict[bytes, _Conn] = field(default_factory=dict)
    # What a dial to an address authenticated as, so a connected peer is not redialed.
    seen_at: dict[Address, bytes] = field(default_factory=dict)


class NetworkManager:
    """Listener, joined topics and their connections. Use :func:`open_network_manager`."""

    def __init__(self, nursery: trio.Nursery, *, static_key: bytes, payload: bytes,
                 addresses: list[Address], discovery: Discovery | None,
                 handshake_timeout: float, max_unauthenticated: int) -> None:
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
        self._pending: OrderedDict[object, trio.CancelScope] = OrderedDict()
        self._topics: dict[bytes, _Joined] = {}

    # -- public API ----------------------------------------------------------

    @property
    def unauthenticated(self) -> int:
        """Connections currently in the preamble or handshake."""
        return len(self._pending)

    def is_joined(self, topic: Topic) -> bool:
        """Whether *topic* is joined (accepted on the listener, advertised if asked)."""
        return topic.id in self._topics

    async def join(self, topic: Topic, handler: Handler, *, advertise: bool = True,
                   discover: bool = False, peers: Sequence[Address] = ()) -> None:
        """Accept connections for *topic* and hand each to *handler*.

        *advertise*: announce the topic over mDNS (ignored when mDNS is off).
        *discover*: swarm mode, dial the peers mDNS finds for the topic.
        *peers*: addresses to dial as part of the swarm (e.g. known members).
        Raises :class:`LocalProtocolError` if the topic is already joined.
        """
        if topic.id in self._topics:
            raise LocalProtocolError(f"topic {topic.short_id} is already joined")
        joined = _Joined(topic, handler)
        self._topics[topic.id] = joined
        if advertise and self._discovery is not None:
            try:
                await self._discovery.advertise(topic, self.addresses[0][1],
                                                addresses=self._advertised_hosts())
            except BaseException:
                self._topics.pop(topic.id, None)
                raise
        if (discover and self._discovery is not None) or peers:
            self._nursery.start_soon(self._swarm, joined, discover, tuple(peers))
        log.debug("joined topic %s (advertise=%s, discover=%s)", topic.short_id,
                  advertise, discover)

    async def leave(self, topic: Topic) -> None:
        """Withdraw *topic*, stop its dialing, close its connections (waits for them)."""
        joined = self._topics.pop(topic.id, None)
        if joined is None:
            return
        joined.scope.cancel()
        conns = list(joined.conns.values())
        for conn in conns:
            conn.scope.cancel()
        if self._discovery is not None:
            await self._discovery.withdraw(topic)
        for conn in conns:
            await conn.done.wait()
        log.debug("left topic %s", topic.short_id)

    async def connect(self, topic: Topic, *, hints: Sequence[Address] = (), mdns: bool = True,
                      timeout: float = 10.0) -> SecureStream:
        """Dial a peer of *topic*: race *hints* and mDNS, return the first established stream.

        Every candidate is dialed concurrently (failed hints are retried with
        backoff); the first connection whose handshake and accept complete
        wins and the others are closed. The stream is the caller's to close.
        Raises :class:`PeerUnreachable` after *timeout* seconds without one.
        """
        use_mdns = mdns and self._discovery is not None
        if not hints and not use_mdns:
            raise PeerUnreachable("no address hints and mDNS is off")
        won: list[SecureStream] = []
        last_error: list[str] = []

        async def attempt(addr: Address) -> None:
            for n in range(1 << 30):
                try:
                    stream = await self._dial(topic, addr)
                except _DIAL_ERRORS as exc:
                    last_error[:] = [_describe(exc)]
                    log.debug("connect %s via %s:%d failed: %s", topic.short_id, *addr,
                              last_error[0])
                    await trio.sleep(_backoff(n, CONNECT_BACKOFF_CAP))
                    continue
                if won:  # another candidate got there first
                    await _close(stream)
                else:
                    won.append(stream)
                    nursery.cancel_scope.cancel()
                return

        async def via_mdns(discovery: Discovery) -> None:
            dialing: set[Address] = set()
            async with discovery.browse(topic) as events:
                async for event in events:
                    if isinstance(event, PeerFound):
                        for addr in event.addresses:
                            if addr not in dialing:
                                dialing.add(addr)
                                nursery.start_soon(attempt, addr)

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for addr in dict.fromkeys(hints):
                    nursery.start_soon(attempt, addr)
                if use_mdns:
                    assert self._discovery is not None
                    nursery.start_soon(via_mdns, self._discovery)
        if not won:
            why = f" (last error: {last_error[0]})" if last_error else ""
            raise PeerUnreachable(
                f"no peer for topic {topic.short_id} answered within {timeout} s{why}")
        return won[0]

    # -- dialing -------------------------------------------------------------

    def _advertised_hosts(self) -> list[str] | None:
        host = self.addresses[0][0]
        return None if host in ("0.0.0.0", "") else [host]  # noqa: S104

    async def _dial(self, topic: Topic, addr: Address,
                    on_handshake: Callable[[bytes], None] | None = None) -> SecureStream:
        """Connect, send the preamble, run the handshake, read the accept."""
        try:
            with trio.fail_after(self._hs_timeout):
                stream = await trio.open_tcp_stream(*addr)
                try:
                    body = encode_preamble(topic.id)
                    secure = await open_secure_stream(
                        stream, initiator=True, static_key=self._static_key, psk=topic.psk,
                        prologue=body, payload=self._payload, timeout=self._hs_timeout,
                        lead=frame(body))
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                try:
                    if secure.remote_static == self.public_key:
                        raise LocalProtocolError("dialed ourselves")
                    if on_handshake is not None:
                        on_handshake(secure.remote_static)
                    if await secure.receive_message() != ACCEPT:
                        raise RemoteProtocolError("expected the accept message")
                except BaseException:
                    await trio.aclose_forcefully(secure)
                    raise
        except trio.TooSlowError:
            raise HandshakeTimeout(f"no accept within {self._hs_timeout} s") from None
        return secure

    async def _swarm(self, joined: _Joined, discover: bool, peers: tuple[Address, ...]) -> None:
        with joined.scope:
            async with trio.open_nursery() as nursery:
                dialing: dict[Address, trio.CancelScope] = {}
                by_instance: dict[str, list[Address]] = {}

                def dial(addr: Address) -> None:
                    if addr not in dialing:
                        dialing[addr] = trio.CancelScope()
                        nursery.start_soon(self._dial_loop, joined, addr, dialing)

                for addr in peers:
                    dial(addr)
                if discover and self._discovery is not None:
                    async with self._discovery.browse(joined.topic) as events:
                        async for event in events:
                            if isinstance(event, PeerFound):
                                by_instance[event.instance] = list(event.addresses)
                                for addr in event.addresses:
                                    dial(addr)
                            elif isinstance(event, PeerLost):
                                for addr in by_instance.pop(event.instance, []):
                                    scope = dialing.pop(addr, None)
                                    if scope is not None:
                                        scope.cancel()

    async def _dial_loop(self, joined: _Joined, addr: Address,
                         dialing: dict[Address, trio.CancelScope]) -> None:
        """Dial *addr* until one connection is established (or the peer is connected)."""
        scope = dialing[addr]
        conn: _Conn | None = None

        def seen(remote: bytes) -> None:
            joined.seen_at[addr] = remote

        try:
            with scope:
                for attempt in range(1 << 30):
                    known = joined.seen_at.get(addr)
                    if known is not None and known in joined.conns:
                        return
                    try:
                        stream = await self._dial(joined.topic, addr, on_handshake=seen)
                    except _DIAL_ERRORS as exc:
                        log.debug("swarm %s: dial %s:%d failed: %s", joined.topic.short_id,
                                  *addr, _describe(exc))
                        await trio.sleep(_backoff(attempt, BACKOFF_CAP))
                        continue
                    conn = await self._adopt(joined, stream, dialer=self.public_key,
                                             accept=False)
                    break
        finally:
            # A later sighting of the address may dial it again.
            if dialing.get(addr) is scope:
                del dialing[addr]
        if conn is not None:
            await self._run_handler(joined, conn)

    # -- accepting -----------------------------------------------------------

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
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
        try:
            with slot, trio.move_on_after(self._hs_timeout) as deadline:
                length = int.from_bytes(await _read_exact(stream, 2), "big")
                if length > MAX_PREAMBLE:
                    raise DecodeError("preamble too large")
                body = await _read_exact(stream, length)
                joined = self._topics.get(decode_preamble(body))
                if joined is None:
                    log.debug("inbound connection for an unknown topic; closed")
                    return
                secure = await open_secure_stream(
                    stream, initiator=False, static_key=self._static_key,
                    psk=joined.topic.psk, prologue=body, payload=self._payload,
                    timeout=max(deadline.deadline - trio.current_time(), 0.0))
        except _DIAL_ERRORS as exc:
            log.debug("inbound connection dropped before authentication: %s", _describe(exc))
        finally:
            self._pending.pop(key, None)
            if secure is None:
                await trio.aclose_forcefully(stream)
        if secure is None or joined is None:
            return
        # The handler runs in this task: trio.serve_listeners closes the
        # socket when this function returns.
        conn = await self._adopt(joined, secure, dialer=secure.remote_static, accept=True)
        if conn is not None:
            await self._run_handler(joined, conn)

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
            log.debug("topic %s: duplicate connection to a peer; keeping the other one",
                      joined.topic.short_id)
            await _close(stream)
            return None
        if accept:
            try:
                with trio.fail_after(self._hs_timeout):
                    await stream.send_message(ACCEPT)
            except (*_DIAL_ERRORS, trio.TooSlowError) as exc:
                log.debug("could not send accept: %s", _describe(exc))
                await _close(stream)
                return None
            # Sending yielded: the topic may have been left, or another connection adopted.
            if self._topics.get(joined.topic.id) is not joined:
                await _close(stream)
                return None
            old = joined.conns.get(remote)
            if old is not None and old.dialer != dialer and old.dialer < dialer:
                await _close(stream)
                return None
        if old is not None:
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
            await _close(conn.stream)
            conn.done.set()


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
) -> AsyncIterator[NetworkManager]:
    """Run a :class:`NetworkManager`: listen on *listen*, mDNS on *mdns_interfaces*.

    *static_key* is our X25519 private key; *payload* goes (encrypted) into
    every handshake we complete. ``mdns_interfaces=None`` turns mDNS off
    (hints only); otherwise it lists interface names or IPv4 addresses, and
    nothing is multicast anywhere else. On exit every connection is closed,
    advertisements are withdrawn and the listener is closed.
    """
    if max_unauthenticated < 1:
        raise LocalProtocolError("max_unauthenticated must be at least 1")
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
            max_unauthenticated=max_unauthenticated)
        await nursery.start(trio.serve_listeners, manager._serve_inbound, listeners)
        try:
            yield manager
        finally:
            nursery.cancel_scope.cancel()
