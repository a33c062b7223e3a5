"""A TCP proxy for tests that breaks the bytes between two daemons on purpose.

Adversarial suite, fault part (issue 18). :class:`FaultProxy` listens on
loopback and forwards every connection it accepts to one upstream address,
applying the current :class:`FaultPlan` on the way: at a chosen point of one
direction it drops the connection, delays, truncates (forwards part of a
frame, then closes), duplicates a frame or corrupts (flips) a byte.

Every p2pinvite TCP connection is a sequence of frames, a 2-byte big-endian
length then the body (PROTOCOL Part 2 §2, Part 5 §3): the dialer's preamble,
the three Noise handshake messages, then one Noise transport message per
application message (``SecureStream.send_messages`` seals each message on
its own). The proxy parses both directions into those frames, so a plan can
name a protocol *step* as "the k-th frame the dialer (``UP``) or the
listener (``DOWN``) sends"; a plan can also name a byte offset in a
direction's stream. Frames are forwarded whole, in order, one direction
never waiting for the other.

Each accepted connection is recorded (:class:`ConnectionRecord`: the body
length of every frame per direction, and the faults applied), so a clean run
through the proxy tells a test which steps a protocol has.

:class:`FaultProxy` is trio-native (``await nursery.start(proxy.run)``);
:class:`ThreadedProxy` runs one in a trio loop of its own thread, for
synchronous tests that drive daemon processes.
"""

from __future__ import annotations

import copy
import enum
import ipaddress
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final, TypeVar

import trio

__all__ = [
    "ConnectionRecord",
    "Direction",
    "Fault",
    "FaultPlan",
    "FaultProxy",
    "ThreadedProxy",
    "running_proxy",
]

Address = tuple[str, int]
T = TypeVar("T")

#: Bytes of the length prefix of every frame on a p2pinvite TCP connection.
LENGTH_PREFIX: Final = 2
#: Noise transport overhead: a message whose plaintext is empty (the
#: authenticated end of stream, PROTOCOL Part 5 §5) is this long on the wire.
TAG: Final = 16


class Direction(enum.Enum):
    """Which side's bytes: ``UP`` is what the dialer sends, ``DOWN`` what the listener sends."""

    UP = "up"
    DOWN = "down"


class Fault(enum.Enum):
    """What the proxy does at the chosen point."""

    #: Close both connections; the frame (and everything after it) is never forwarded.
    DROP = "drop"
    #: Hold the frame for :attr:`FaultPlan.delay` seconds, then go on normally.
    DELAY = "delay"
    #: Forward the first half of the frame (its length prefix and part of its
    #: body, or the bytes up to the offset), then close both connections.
    TRUNCATE = "truncate"
    #: Forward the frame twice.
    DUPLICATE = "duplicate"
    #: Flip every bit of one byte of the frame's body (the middle one, or the
    #: byte at the offset), then go on normally.
    CORRUPT = "corrupt"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """One fault: *fault* at the *frame*-th frame (0-based) or at byte *offset* of *direction*.

    ``connections``: how many connections get it, counted in the order they
    reach the point (``1``: a transient fault, later connections are clean;
    ``None``: every connection).
    """

    fault: Fault
    direction: Direction
    frame: int | None = None
    offset: int | None = None
    delay: float = 1.0
    connections: int | None = 1

    def __post_init__(self) -> None:
        if (self.frame is None) == (self.offset is None):
            raise ValueError("a fault plan names a frame or a byte offset, not both")
        if (self.frame or 0) < 0 or (self.offset or 0) < 0 or self.delay < 0:
            raise ValueError("frame, offset and delay are not negative")

    def __str__(self) -> str:
        where = f"frame {self.frame}" if self.frame is not None else f"byte {self.offset}"
        times = "every connection" if self.connections is None else f"x{self.connections}"
        return f"{self.fault.value} {self.direction.value} {where} ({times})"


@dataclass
class ConnectionRecord:
    """What one accepted connection carried: frame body lengths per direction, faults."""

    index: int
    frames: dict[Direction, list[int]] = field(
        default_factory=lambda: {Direction.UP: [], Direction.DOWN: []})
    #: Every frame as ``(direction, index)``, in the order the proxy read them.
    order: list[tuple[Direction, int]] = field(default_factory=list)
    #: One line per fault applied, e.g. ``"corrupt up frame 4"``.
    faults: list[str] = field(default_factory=list)
    #: The upstream could not be reached (nothing was forwarded).
    refused: bool = False


class FaultProxy:
    """Forward loopback TCP connections to *upstream*, applying :attr:`plan`.

    The plan is read live: setting a new one (:meth:`set_plan`) applies to
    every frame from then on, on connections old and new, and restarts its
    count of faulted connections.
    """

    def __init__(self, upstream: Address, *, host: str = "127.0.0.1") -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the fault proxy listens on loopback only")
        self.upstream = upstream
        self._host = host
        #: Where the proxy listens (set once :meth:`run` has started).
        self.address: Address = ("", 0)
        self.plan: FaultPlan | None = None
        self._fired = 0
        #: Every connection accepted so far, in order.
        self.connections: list[ConnectionRecord] = []
        self._live: set[trio.CancelScope] = set()
        self._gate: trio.Event | None = None

    # -- control (on the proxy's trio thread) ---------------------------------------------

    def set_plan(self, plan: FaultPlan | None) -> None:
        """Apply *plan* from now on (``None``: forward cleanly)."""
        self.plan = plan
        self._fired = 0

    @property
    def fired(self) -> int:
        """How many connections the current plan has faulted."""
        return self._fired

    def hold(self) -> None:
        """Accept new connections but forward nothing until :meth:`release`."""
        if self._gate is None:
            self._gate = trio.Event()

    def release(self) -> None:
        """Let held connections (and new ones) through."""
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    def cut(self) -> int:
        """Close every live connection now; return how many there were."""
        for scope in self._live:
            scope.cancel()
        return len(self._live)

    # -- serving --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Listen and forward until cancelled; ``task_status.started`` gets the address."""
        [listener] = await trio.open_tcp_listeners(0, host=self._host)
        host, port = listener.socket.getsockname()[:2]
        self.address = (str(host), int(port))
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, [listener])
            task_status.started(self.address)

    async def _handle(self, client: trio.SocketStream) -> None:
        record = ConnectionRecord(len(self.connections))
        self.connections.append(record)
        scope = trio.CancelScope()
        self._live.add(scope)
        try:
            with scope:
                if self._gate is not None:
                    await self._gate.wait()
                try:
                    upstream = await trio.open_tcp_stream(*self.upstream)
                except OSError:
                    record.refused = True
                    return
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, upstream, Direction.UP, record,
                                           scope)
                        nursery.start_soon(self._pump, upstream, client, Direction.DOWN, record,
                                           scope)
                finally:
                    await _close(upstream)
        finally:
            self._live.discard(scope)
            await _close(client)

    def _take(self, direction: Direction, index: int, start: int, length: int) -> Fault | None:
        """The fault of the current plan for this frame, if any (and count it)."""
        plan = self.plan
        if plan is None or plan.direction is not direction:
            return None
        if plan.frame is not None:
            hit = plan.frame == index
        else:
            assert plan.offset is not None
            hit = start <= plan.offset < start + length
        if not hit or (plan.connections is not None and self._fired >= plan.connections):
            return None
        self._fired += 1  # no await between the check and the count
        return plan.fault

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, direction: Direction,
                    record: ConnectionRecord, conn: trio.CancelScope) -> None:
        """Forward *src* to *dst* frame by frame, applying the plan; EOF is passed on."""
        buf = bytearray()
        start = 0  # offset in this direction's stream of buf[0]
        index = 0  # index of the next frame
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    if buf:  # a torn last frame is forwarded as torn
                        await dst.send_all(bytes(buf))
                    await dst.send_eof()
                    return
                buf += data
                while len(buf) >= LENGTH_PREFIX:
                    size = LENGTH_PREFIX + int.from_bytes(buf[:LENGTH_PREFIX], "big")
                    if len(buf) < size:
                        break
                    frame = bytes(buf[:size])
                    del buf[:size]
                    record.frames[direction].append(size - LENGTH_PREFIX)
                    record.order.append((direction, index))
                    fault = self._take(direction, index, start, size)
                    if fault is not None:
                        record.faults.append(f"{fault.value} {direction.value} frame {index}")
                        if not await self._apply(fault, frame, start, dst):
                            conn.cancel()  # the fault ends the connection, both ways
                            return
                    else:
                        await dst.send_all(frame)
                    start += size
                    index += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.cancel()  # one side is gone: so is the other, as a real relay would do

    async def _apply(self, fault: Fault, frame: bytes, start: int,
                     dst: trio.SocketStream) -> bool:
        """Forward *frame* (at *start* in its direction) as *fault* says; False: close."""
        plan = self.plan
        assert plan is not None
        at = plan.offset - start if plan.offset is not None else None
        if fault is Fault.DROP:
            return False
        if fault is Fault.TRUNCATE:
            cut = at if at is not None else LENGTH_PREFIX + (len(frame) - LENGTH_PREFIX) // 2
            if cut:
                await dst.send_all(frame[:cut])
            return False
        if fault is Fault.DELAY:
            await trio.sleep(plan.delay)
            await dst.send_all(frame)
        elif fault is Fault.DUPLICATE:
            await dst.send_all(frame + frame)
        else:
            assert fault is Fault.CORRUPT
            pos = at if at is not None else LENGTH_PREFIX + (len(frame) - LENGTH_PREFIX) // 2
            flipped = bytearray(frame)
            flipped[min(pos, len(frame) - 1)] ^= 0xFF
            await dst.send_all(bytes(flipped))
        return True


async def _close(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        await stream.aclose()


class ThreadedProxy:
    """A :class:`FaultProxy` in a trio loop of its own thread, for synchronous tests.

    Every method hands its work to the proxy's thread and waits for it, so the
    proxy's state is only ever touched there. Use :func:`running_proxy`.
    """

    def __init__(self, proxy: FaultProxy, token: trio.lowlevel.TrioToken) -> None:
        self._proxy = proxy
        self._token = token

    def _call(self, fn: Callable[[], T]) -> T:
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    @property
    def address(self) -> Address:
        """Where the proxy listens."""
        return self._proxy.address

    def set_plan(self, plan: FaultPlan | None) -> None:
        """See :meth:`FaultProxy.set_plan`."""
        self._call(lambda: self._proxy.set_plan(plan))

    def fired(self) -> int:
        """See :attr:`FaultProxy.fired`."""
        return self._call(lambda: self._proxy.fired)

    def hold(self) -> None:
        """See :meth:`FaultProxy.hold`."""
        self._call(self._proxy.hold)

    def release(self) -> None:
        """See :meth:`FaultProxy.release`."""
        self._call(self._proxy.release)

    def cut(self) -> int:
        """See :meth:`FaultProxy.cut`."""
        return self._call(self._proxy.cut)

    def connections(self) -> list[ConnectionRecord]:
        """A copy of the records of every connection accepted so far."""
        return self._call(lambda: copy.deepcopy(self._proxy.connections))


@contextmanager
def running_proxy(upstream: Address) -> Iterator[ThreadedProxy]:
    """Run a :class:`FaultProxy` to *upstream* in a thread until the block ends."""
    proxy = FaultProxy(upstream)
    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        stop = trio.Event()
        state["token"] = trio.lowlevel.current_trio_token()
        state["stop"] = stop
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            ready.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    def thread() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test below, never lost
            state["error"] = exc
        finally:
            ready.set()

    worker = threading.Thread(target=thread, name="fault-proxy", daemon=True)
    worker.start()
    ready.wait(10)
    if "error" in state or "token" not in state:
        raise RuntimeError(f"the fault proxy did not start: {state.get('error')!r}")
    token = state["token"]
    stop = state["stop"]
    assert isinstance(token, trio.lowlevel.TrioToken)
    assert isinstance(stop, trio.Event)
    try:
        yield ThreadedProxy(proxy, token)
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        worker.join(10)
        error = state.get("error")
        if isinstance(error, BaseException):
            raise RuntimeError("the fault proxy failed") from error
