"""The fault proxy itself (tests/net/faultproxy.py), over loopback TCP with plain frames.

An upstream that records every byte it receives and answers each frame with
the same frame lets each test see exactly what one direction delivered.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from .faultproxy import (
    ConnectionRecord,
    Direction,
    Fault,
    FaultPlan,
    FaultProxy,
    running_proxy,
)

FRAMES = [bytes([i]) * (10 + i) for i in range(4)]


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


WIRE = b"".join(framed(f) for f in FRAMES)


class Echo:
    """Upstream: keeps what it received per connection and echoes it back."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.address: tuple[str, int] = ("", 0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = listener.socket.getsockname()[:2]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, [listener])
            task_status.started()

    async def _serve(self, stream: trio.SocketStream) -> None:
        got = bytearray()
        self.received.append(got)
        try:
            while data := await stream.receive_some(65536):
                got += data
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


@asynccontextmanager
async def setup() -> AsyncIterator[tuple[Echo, FaultProxy]]:
    async with trio.open_nursery() as nursery:
        echo = Echo()
        await nursery.start(echo.run)
        proxy = FaultProxy(echo.address)
        await nursery.start(proxy.run)
        yield echo, proxy
        nursery.cancel_scope.cancel()


async def exchange(proxy: FaultProxy, wire: bytes = WIRE) -> bytes:
    """Send *wire* through the proxy, half-close, return everything that came back."""
    stream = await trio.open_tcp_stream(*proxy.address)
    back = bytearray()
    with trio.fail_after(5):
        await stream.send_all(wire)
        await stream.send_eof()
        try:
            while data := await stream.receive_some(65536):
                back += data
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return bytes(back)


async def test_clean_forwarding_is_recorded_frame_by_frame() -> None:
    async with setup() as (echo, proxy):
        assert await exchange(proxy) == WIRE
        [record] = proxy.connections
        assert record.frames == {Direction.UP: [10, 11, 12, 13],
                                 Direction.DOWN: [10, 11, 12, 13]}
        assert record.faults == []
        assert bytes(echo.received[0]) == WIRE


@pytest.mark.parametrize(("fault", "expected"), [
    # The frame and everything after it are gone, the connection closed.
    (Fault.DROP, framed(FRAMES[0]) + framed(FRAMES[1])),
    # The length prefix and half the body of frame 2, then nothing.
    (Fault.TRUNCATE, framed(FRAMES[0]) + framed(FRAMES[1]) + framed(FRAMES[2])[:2 + 6]),
    (Fault.DUPLICATE, framed(FRAMES[0]) + framed(FRAMES[1]) + framed(FRAMES[2]) * 2
     + framed(FRAMES[3])),
    # The middle byte of the body, every bit flipped; the rest intact.
    (Fault.CORRUPT, WIRE[:2 + 10 + 2 + 11 + 2 + 6] + bytes([2 ^ 0xFF])
     + WIRE[2 + 10 + 2 + 11 + 2 + 7:]),
    (Fault.DELAY, WIRE),
])
async def test_each_fault_at_the_third_frame_up(fault: Fault, expected: bytes) -> None:
    async with setup() as (echo, proxy):
        proxy.set_plan(FaultPlan(fault, Direction.UP, frame=2, delay=0.3))
        start = trio.current_time()
        await exchange(proxy)
        assert bytes(echo.received[0]) == expected
        assert proxy.fired == 1
        assert proxy.connections[0].faults == [f"{fault.value} up frame 2"]
        if fault is Fault.DELAY:
            assert trio.current_time() - start >= 0.3


async def test_a_fault_down_leaves_the_way_up_alone() -> None:
    async with setup() as (echo, proxy):
        proxy.set_plan(FaultPlan(Fault.CORRUPT, Direction.DOWN, frame=0))
        back = await exchange(proxy)
        assert bytes(echo.received[0]) == WIRE
        assert back != WIRE
        assert back[2 + 10:] == WIRE[2 + 10:]


async def test_a_byte_offset_names_one_byte() -> None:
    async with setup() as (echo, proxy):
        proxy.set_plan(FaultPlan(Fault.CORRUPT, Direction.UP, offset=1))  # a length prefix
        await exchange(proxy)
        assert echo.received[0][1] == WIRE[1] ^ 0xFF
        assert echo.received[0][2:] == WIRE[2:]
        proxy.set_plan(FaultPlan(Fault.TRUNCATE, Direction.UP, offset=len(WIRE) - 1))
        await exchange(proxy)
        assert bytes(echo.received[1]) == WIRE[:-1]


async def test_a_transient_fault_hits_one_connection_a_persistent_one_all() -> None:
    async with setup() as (_, proxy):
        proxy.set_plan(FaultPlan(Fault.DROP, Direction.UP, frame=0))
        assert await exchange(proxy) == b""
        assert await exchange(proxy) == WIRE
        proxy.set_plan(FaultPlan(Fault.DROP, Direction.UP, frame=0, connections=None))
        for _ in range(3):
            assert await exchange(proxy) == b""
        assert proxy.fired == 3


async def test_hold_release_and_cut() -> None:
    async with setup() as (_, proxy):
        proxy.hold()
        stream = await trio.open_tcp_stream(*proxy.address)
        await stream.send_all(WIRE)
        with trio.move_on_after(0.3):
            await stream.receive_some(1)
            pytest.fail("a held connection forwarded something")
        proxy.release()
        with trio.fail_after(5):
            got = b""
            while len(got) < len(WIRE):
                got += await stream.receive_some(65536)
        assert got == WIRE
        assert proxy.cut() == 1
        # A reset is as good as an EOF here.
        with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
            assert await stream.receive_some(1) == b""
        await stream.aclose()


async def test_an_unreachable_upstream_is_recorded() -> None:
    async with trio.open_nursery() as nursery:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        dead = listener.socket.getsockname()[:2]
        await listener.aclose()  # nobody listens there any more
        proxy = FaultProxy(dead)
        await nursery.start(proxy.run)
        assert await exchange(proxy) == b""
        assert proxy.connections == [ConnectionRecord(0, refused=True)]
        nursery.cancel_scope.cancel()


def test_loopback_only_and_plans_are_checked() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(("127.0.0.1", 1), host="0.0.0.0")
    with pytest.raises(ValueError, match="not both"):
        FaultPlan(Fault.DROP, Direction.UP)
    with pytest.raises(ValueError, match="not both"):
        FaultPlan(Fault.DROP, Direction.UP, frame=1, offset=1)


def test_the_threaded_proxy_serves_synchronous_code() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with running_proxy(server.getsockname()[:2]) as proxy:
            proxy.set_plan(FaultPlan(Fault.DUPLICATE, Direction.UP, frame=1))
            with socket.create_connection(proxy.address, timeout=5) as client:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(5)
                    client.sendall(WIRE)
                    client.shutdown(socket.SHUT_WR)
                    got = b""
                    while data := conn.recv(65536):
                        got += data
            assert got == WIRE[:2 + 10 + 2 + 11] + framed(FRAMES[1]) + WIRE[2 + 10 + 2 + 11:]
            assert proxy.fired() == 1
            [record] = proxy.connections()
            assert record.faults == ["duplicate up frame 1"]
