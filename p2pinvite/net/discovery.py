"""mDNS discovery of peers by topic, with python-zeroconf, bridged into trio.

Theory of operation
-------------------
python-zeroconf runs its own asyncio loop in its own thread. Nothing in that
thread touches trio state; the bridge is two one-way doors:

* trio -> zeroconf: coroutines are submitted with
  :func:`asyncio.run_coroutine_threadsafe`; trio waits on a :class:`trio.Event`
  that the future's completion callback sets through
  :meth:`trio.lowlevel.TrioToken.run_sync_soon` (thread-safe, non-blocking).
* zeroconf -> trio: browse results are handed over the same way and put in a
  bounded :func:`trio.open_memory_channel` with ``send_nowait`` (a full channel
  drops the event and logs it: a flood of mDNS answers cannot block zeroconf
  or grow memory).

Blocking zeroconf calls (start, close) run in a short-lived dedicated thread
that is joined afterwards, so closing leaves no thread behind (trio's worker
thread cache is not used).

One service instance is registered per advertised topic, named
``<tag>-<instance>-<n>._p2pinvite._tcp.local.`` where ``tag`` is the first 8
characters of the topic's public TXT value, lower-cased (:func:`topic_tag`),
and ``instance`` 12 random hex characters per :class:`Discovery` (per daemon
run). Its TXT record holds only ``v=1`` and the topic's public entry
(``k=<discovery key>`` or ``d=<discriminator>``): never a secret or a PSK.

Browsers see every ``_p2pinvite._tcp`` instance on the link but resolve only
those whose name carries the topic's tag, a few at a time, and keep those
whose TXT matches the topic: on a LAN with many daemons, or flooded with fake
instances, a browser does not query every instance it sees. mDNS is
unauthenticated: what it yields are *candidates*; the Noise handshake decides
who a peer is.

Interfaces are always explicit (names or IPv4 addresses). There is no
"all interfaces" default here: the daemon's configuration has to name them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

import ifaddr
import trio
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from ..errors import LocalProtocolError
from .peers import PeerEvent, PeerFound, PeerLost
from .topics import Topic

__all__ = [
    "PROTOCOL_VERSION",
    "RESOLVE_CONCURRENCY",
    "SERVICE_TYPE",
    "Discovery",
    "InterfaceNotFound",
    "PeerEvent",
    "PeerFound",
    "PeerLost",
    "open_discovery",
    "resolve_interfaces",
    "topic_tag",
]

log = logging.getLogger("p2pinvite.net")

SERVICE_TYPE: Final = "_p2pinvite._tcp.local."
PROTOCOL_VERSION: Final = 1
#: Events buffered per browse before new ones are dropped.
BROWSE_BUFFER: Final = 256
#: Most resolutions one browser runs at once.
RESOLVE_CONCURRENCY: Final = 16
#: How long one instance's SRV/TXT/A resolution may take (milliseconds).
RESOLVE_TIMEOUT_MS: Final = 3000

T = TypeVar("T")


class InterfaceNotFound(LocalProtocolError):
    """An mDNS interface name or address that this host does not have."""




def default_interfaces() -> list[str]:
    """Names of every interface with a non-loopback IPv4 address.

    This is the daemon's scope when mDNS is on and no interface was named: on a
    user's machine that is the LAN. Tests never use it; they name interfaces
    inside network namespaces they created.
    """
    names: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            v4 = isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback
            if v4 and adapter.nice_name not in names:
                names.append(adapter.nice_name)
    return names


def resolve_interfaces(interfaces: Sequence[str]) -> list[str]:
    """Map interface names and IPv4 addresses to the IPv4 addresses mDNS binds to.

    Each entry is either an IPv4 address this host has, or an interface name
    whose IPv4 addresses are all used. Raises :class:`InterfaceNotFound` for an
    unknown name, an address not on this host, or an empty list.
    """
    if isinstance(interfaces, str):
        raise LocalProtocolError("interfaces must be a list of names or addresses, not a str")
    adapters = ifaddr.get_adapters()
    by_name: dict[str, list[str]] = {}
    for adapter in adapters:
        v4 = [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)]
        by_name.setdefault(adapter.nice_name, []).extend(v4)
        by_name.setdefault(adapter.name, []).extend(v4)
    local = {a for addrs in by_name.values() for a in addrs}
    result: list[str] = []
    for entry in interfaces:
        try:
            addr = str(ipaddress.IPv4Address(entry))
        except ValueError:
            addrs = by_name.get(entry)
            if not addrs:
                raise InterfaceNotFound(f"no interface {entry!r} with an IPv4 address") from None
        else:
            if addr not in local:
                raise InterfaceNotFound(f"no local interface has address {addr}")
            addrs = [addr]
        result.extend(a for a in addrs if a not in result)
    if not result:
        raise InterfaceNotFound("no mDNS interface given")
    return result


async def _in_thread(fn: Callable[[], T], name: str) -> T:
    """Run blocking *fn* in a dedicated thread, joined before returning.

    Shielded: the thread cannot be interrupted, and abandoning it would leak
    a half-built or half-closed zeroconf instance.
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:
            box.append((False, exc))
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    with trio.CancelScope(shield=True):
        await done.wait()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def topic_tag(topic: Topic) -> str:
    """The public tag that starts the instance names of *topic*'s adverts."""
    return topic.txt_value[:8].lower()


class _Browser:
    """One topic's browser. Lives on the zeroconf loop; talks to trio only via *deliver*."""

    def __init__(self, zc: Zeroconf, topic: Topic, own_prefix: str | None,
                 deliver: Callable[[PeerEvent], None]) -> None:
        self._zc = zc
        self._want = {b"v": str(PROTOCOL_VERSION).encode(),
                      topic.txt_key.encode(): topic.txt_value.encode()}
        self._tag = topic_tag(topic) + "-"
        # Resolutions at once: each one sends queries; thousands at once (a
        # flood of instances with our tag) would drown the answers we wait for.
        self._resolving = asyncio.Semaphore(RESOLVE_CONCURRENCY)
        self._own_prefix = own_prefix
        self._deliver = deliver
        self._reported: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._browser: AsyncServiceBrowser | None = None

    def start(self) -> None:
        self._browser = AsyncServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_change])

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if not name.lower().startswith(self._tag):
            return  # another topic's advert: not worth a query
        if self._own_prefix is not None and name.startswith(self._own_prefix):
            return
        if state_change is ServiceStateChange.Removed:
            if name in self._reported:
                self._reported.discard(name)
                self._deliver(PeerLost(name))
            return
        task = asyncio.ensure_future(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not info.load_from_cache(self._zc):
            async with self._resolving:
                if not await info.async_request(self._zc, RESOLVE_TIMEOUT_MS):
                    log.debug("mDNS: could not resolve %s", name)
                    return
        props = info.properties
        if any(props.get(k) != v for k, v in self._want.items()) or not info.port:
            return
        addrs = tuple((ip, info.port) for ip in info.parsed_addresses(IPVersion.V4Only))
        if addrs:
            self._reported.add(name)
            self._deliver(PeerFound(name, addrs))


class Discovery:
    """A running mDNS responder and browser on an explicit set of interfaces.

    Use :func:`open_discovery`. All methods are called from trio.
    """

    def __init__(self, zc: Zeroconf, addresses: list[str]) -> None:
        self._zc = zc
        self._loop: asyncio.AbstractEventLoop = zc.loop  # type: ignore[assignment]
        self._token = trio.lowlevel.current_trio_token()
        #: Random per run; prefixes every instance name this daemon registers.
        self.instance = secrets.token_hex(6)
        #: The IPv4 addresses mDNS runs on (and advertises by default).
        self.interface_addresses = list(addresses)
        self._counter = itertools.count(1)
        self._adverts: dict[bytes, AsyncServiceInfo] = {}
        # The announcement repeats still to be sent, per topic (zeroconf loop futures).
        self._announcing: dict[bytes, asyncio.Future[Any]] = {}
        self._browsers: set[_Browser] = set()
        self._closed = False

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* on zeroconf's loop and wait for it from trio."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done = trio.Event()
        token = self._token

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        fut.add_done_callback(wake)
        try:
            await done.wait()
        finally:
            if not fut.done():
                fut.cancel()
        return fut.result()

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("discovery is closed")

    async def advertise(self, topic: Topic, port: int, *,
                        addresses: Sequence[str] | None = None) -> None:
        """Announce *topic* at TCP *port* on *addresses* (default: the mDNS interfaces).

        Probing is skipped (``cooperating_responders``): instance names carry
        48 random bits per run, so a name conflict is not a practical concern,
        and a conflict would only cost discovery, never authentication. The
        first announcement is sent before this returns; zeroconf repeats it
        twice more (225 ms apart).
        """
        self._check_open()
        if topic.id in self._adverts:
            raise LocalProtocolError(f"topic {topic.short_id} is already advertised")
        if not 0 < port < 65536:
            raise LocalProtocolError("port out of range")
        addrs = list(addresses) if addresses is not None else self.interface_addresses
        name = f"{topic_tag(topic)}-{self.instance}-{next(self._counter)}.{SERVICE_TYPE}"
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=port,
            properties={"v": str(PROTOCOL_VERSION), **topic.txt},
            server=f"{self.instance}.local.",
            addresses=[socket.inet_aton(a) for a in addrs],
        )
        self._adverts[topic.id] = info

        async def register() -> asyncio.Future[Any]:
            announcing = await self._zc.async_register_service(info, cooperating_responders=True)
            return asyncio.ensure_future(announcing)

        try:
            self._announcing[topic.id] = await self._on_loop(register())
        except BaseException:
            self._adverts.pop(topic.id, None)
            raise
        log.debug("mDNS: advertising topic %s as %s port %d", topic.short_id, name, port)

    async def withdraw(self, topic: Topic) -> None:
        """Stop advertising *topic*: goodbye packets (TTL 0) tell browsers at once.

        The first goodbye is sent before this returns; zeroconf repeats it
        twice (125 ms apart). Withdrawing a topic that is not advertised is a
        no-op.
        """
        info = self._adverts.pop(topic.id, None)
        announcing = self._announcing.pop(topic.id, None)
        if info is None or self._closed:
            return

        async def unregister() -> None:
            # zeroconf would go on repeating the announcement after the
            # goodbye and resurrect the service in every browser's cache.
            if announcing is not None:
                announcing.cancel()
            await self._zc.async_unregister_service(info)

        await self._on_loop(unregister())
        log.debug("mDNS: withdrew topic %s", topic.short_id)

    @contextlib.asynccontextmanager
    async def browse(self, topic: Topic, *, include_self: bool = False,
                     ) -> AsyncIterator[trio.MemoryReceiveChannel[PeerEvent]]:
        """Browse for *topic*: yields a channel of :class:`PeerFound` / :class:`PeerLost`.

        Instances already in zeroconf's cache are reported at once, the rest
        as they answer or announce. This daemon's own instances are skipped
        unless *include_self*.
        """
        self._check_open()
        send, recv = trio.open_memory_channel[PeerEvent](BROWSE_BUFFER)
        token = self._token

        def push(event: PeerEvent) -> None:  # trio thread
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                log.warning("mDNS: browse queue for %s full; dropping an event", topic.short_id)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

        def deliver(event: PeerEvent) -> None:  # zeroconf thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(push, event)

        own = None if include_self else f"{topic_tag(topic)}-{self.instance}-"
        browser = _Browser(self._zc, topic, own, deliver)

        async def start() -> None:
            browser.start()

        self._browsers.add(browser)
        try:
            await self._on_loop(start())
            async with recv:
                yield recv
        finally:
            send.close()
            with trio.CancelScope(shield=True):
                await self._stop_browser(browser)

    async def _stop_browser(self, browser: _Browser) -> None:
        if browser in self._browsers:
            self._browsers.discard(browser)
            await self._on_loop(browser.stop())

    async def aclose(self) -> None:
        """Stop browsing, send goodbyes for every advertisement, close zeroconf.

        Idempotent. Returns after zeroconf's thread has ended.
        """
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                for browser in list(self._browsers):
                    await self._stop_browser(browser)
                self._adverts.clear()
                announcing = list(self._announcing.values())
                self._announcing.clear()

                async def goodbye() -> None:
                    for fut in announcing:
                        fut.cancel()
                    await self._zc.async_unregister_all_services()

                await self._on_loop(goodbye())
            finally:
                await _in_thread(self._zc.close, "p2pinvite-zeroconf-close")


@contextlib.asynccontextmanager
async def open_discovery(interfaces: Sequence[str]) -> AsyncIterator[Discovery]:
    """Start mDNS on exactly *interfaces* (names or IPv4 addresses); close on exit.

    IPv4 only. Nothing is sent on any interface not listed.
    """
    addresses = resolve_interfaces(interfaces)

    def start() -> Zeroconf:
        return Zeroconf(interfaces=list(addresses), ip_version=IPVersion.V4Only,
                        use_asyncio=False)

    zc = await _in_thread(start, "p2pinvite-zeroconf-start")
    disc = Discovery(zc, addresses)
    try:
        await disc._on_loop(zc.async_wait_for_start())
        yield disc
    finally:
        await disc.aclose()
