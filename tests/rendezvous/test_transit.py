"""relay_connect against fake relays (in-process, 127.0.0.1), and relay addresses.

The real relay is in test_transit_live.py; here each way a relay can answer
(or not) gives its typed error in time, and the bytes the partner sends right
after ``ok`` stay in the stream we return.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from p2pinvite.errors import (
    LocalProtocolError,
    RelayRefused,
    RendezvousAddressError,
    RendezvousError,
    RendezvousProtocolError,
    RendezvousTimeout,
    RendezvousUnreachable,
)
from p2pinvite.rendezvous.names import SIDES
from p2pinvite.rendezvous.transit import (
    format_relay_address,
    parse_relay_address,
    relay_connect,
    relay_line,
)

TOKEN = bytes(range(32))
TIMEOUT = 1.0
SLACK = 2.0


async def _fake_relay(nursery: trio.Nursery,
                      answer: Callable[[trio.SocketStream, bytes], Awaitable[None]]) -> int:
    """A relay on 127.0.0.1 that reads the handshake line, then runs *answer*."""
    async def handler(stream: trio.SocketStream) -> None:
        line = b""
        while not line.endswith(b"\n"):
            chunk = await stream.receive_some(1)
            if not chunk:
                return
            line += chunk
        await answer(stream, line)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0,
                                                      host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _expect(error: type[RendezvousError], port: int) -> str:
    start = trio.current_time()
    with pytest.raises(error) as info:
        await relay_connect("127.0.0.1", port, TOKEN, SIDES[0], timeout=TIMEOUT)
    assert trio.current_time() - start < TIMEOUT + SLACK
    assert info.value.service == f"127.0.0.1:{port}"
    assert TOKEN.hex() not in str(info.value)
    return str(info.value)


def test_the_handshake_line() -> None:
    assert relay_line(TOKEN, "p2pinvite_side_0") == (
        b"please relay " + TOKEN.hex().encode() + b" for side p2pinvite_side_0\n")
    for token, side in ((b"short", SIDES[0]), (TOKEN, "short"), (TOKEN, "p2pinvite side 0"),
                        (TOKEN, "p2pinvite-side-0"), (TOKEN * 2, SIDES[0])):
        with pytest.raises(LocalProtocolError):
            relay_line(token, side)


async def test_ok_and_the_partners_first_bytes_stay_in_the_stream() -> None:
    seen: list[bytes] = []

    async def ok(stream: trio.SocketStream, line: bytes) -> None:
        seen.append(line)
        await stream.send_all(b"ok\npartner spoke first")  # one segment: no gap after ok
        assert await stream.receive_some(100) == b"and we answer"
        await stream.send_all(b"!")

    async with trio.open_nursery() as nursery:
        port = await _fake_relay(nursery, ok)
        stream = await relay_connect("127.0.0.1", port, TOKEN, SIDES[1], timeout=TIMEOUT)
        got = b""
        while len(got) < len(b"partner spoke first"):
            got += await stream.receive_some(100)
        assert got == b"partner spoke first"
        await stream.send_all(b"and we answer")
        assert await stream.receive_some(100) == b"!"
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert seen == [relay_line(TOKEN, SIDES[1])]


@pytest.mark.parametrize(("reply", "error", "words"), [
    (b"bad handshake\n", RelayRefused, "bad handshake"),
    (b"impatient\n", RelayRefused, "impatient"),
    (b"", RelayRefused, "hung up"),                      # closes without a word (redundant)
    (b"okay\n", RendezvousProtocolError, "unexpected"),
    (b"o", RendezvousProtocolError, "garbled"),          # a partial line, then EOF
    (b"x" * 100, RendezvousProtocolError, "garbled"),    # no newline within the limit
    (b"\xff\xfe\n", RendezvousProtocolError, "unexpected"),
])
async def test_refusals_and_garbage(reply: bytes, error: type[RendezvousError],
                                    words: str) -> None:
    async def answer(stream: trio.SocketStream, line: bytes) -> None:
        if reply:
            await stream.send_all(reply)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await _fake_relay(nursery, answer)
        text = await _expect(error, port)
        assert words in text
        nursery.cancel_scope.cancel()


async def test_refused_answers_carry_what_the_relay_said() -> None:
    async def bad(stream: trio.SocketStream, line: bytes) -> None:
        await stream.send_all(b"bad handshake\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await _fake_relay(nursery, bad)
        with pytest.raises(RelayRefused) as info:
            await relay_connect("127.0.0.1", port, TOKEN, SIDES[0], timeout=TIMEOUT)
        assert info.value.answer == "bad handshake"
        nursery.cancel_scope.cancel()


async def test_a_relay_that_never_answers_times_out() -> None:
    async def silent(stream: trio.SocketStream, line: bytes) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await _fake_relay(nursery, silent)
        text = await _expect(RendezvousTimeout, port)
        assert "did not pair us" in text
        nursery.cancel_scope.cancel()


async def test_nobody_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = await _expect(RendezvousUnreachable, port)
    assert "cannot connect" in text


@pytest.mark.parametrize(("text", "expected"), [
    ("relay.example.net:4001", ("relay.example.net", 4001)),
    ("127.0.0.1:1", ("127.0.0.1", 1)),
    ("[::1]:4001", ("::1", 4001)),
    ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
    ("localhost:4001", ("localhost", 4001)),
])
def test_relay_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_relay_address(text) == expected
    assert format_relay_address(*expected) == text


@pytest.mark.parametrize("text", [
    "", "relay", "relay:", ":4001", "relay:0", "relay:65536", "relay:-1", "relay:4001x",
    "::1:4001", "[::1]", "[nope]:4001", "rel ay:4001", "relay:123456", "-relay:1",
    "relay_x:1", None,
])
def test_bad_relay_addresses(text: str) -> None:
    with pytest.raises(RendezvousAddressError):
        parse_relay_address(text)
