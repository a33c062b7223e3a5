"""The mailbox client against servers that misbehave: each gives a typed error, in time.

The misbehaving servers are in-process trio servers on 127.0.0.1: a port with
nobody listening, a TCP server that accepts and then says nothing, an HTTP
server that is not a WebSocket, and fake WebSocket servers (trio-websocket's
``serve_websocket``) that send garbage, refuse, or stop answering.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio_websocket

from p2pinvite.errors import (
    LocalProtocolError,
    MailboxCrowded,
    MailboxServerError,
    RendezvousAddressError,
    RendezvousError,
    RendezvousProtocolError,
    RendezvousTimeout,
    RendezvousUnreachable,
)
from p2pinvite.rendezvous.mailbox import open_mailbox
from p2pinvite.rendezvous.mailbox_wire import MAX_SERVER_MESSAGE

TIMEOUT = 1.0
#: How late past its timeout a typed error may come (a loaded 2-core machine).
SLACK = 2.0
MAILBOX_ID = "ab" * 32
Handler = Callable[[trio_websocket.WebSocketConnection], Awaitable[None]]


def _closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _expect(error: type[RendezvousError], url: str, *, side: str | None = None) -> str:
    """Open a mailbox at *url*; assert it fails with *error* within the timeout."""
    start = trio.current_time()
    with pytest.raises(error) as info:
        async with open_mailbox(url, MAILBOX_ID, side=side, timeout=TIMEOUT):
            pass
    assert trio.current_time() - start < TIMEOUT + SLACK
    assert info.value.service == url
    assert MAILBOX_ID not in str(info.value)
    return str(info.value)


async def _serve_ws(nursery: trio.Nursery, handler: Handler) -> str:
    async def accept(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(trio_websocket.ConnectionClosed):  # the client left
            await handler(ws)

    server = await nursery.start(trio_websocket.serve_websocket, accept, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/v1"


async def _serve_tcp(nursery: trio.Nursery, handler: Callable[[trio.SocketStream],
                                                              Awaitable[None]]) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0,
                                                      host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _welcome(ws: trio_websocket.WebSocketConnection) -> None:
    await ws.send_message(json.dumps({"type": "welcome", "welcome": {}}))


async def test_nobody_listening_is_unreachable() -> None:
    text = await _expect(RendezvousUnreachable, f"ws://127.0.0.1:{_closed_port()}/v1")
    assert "cannot connect" in text


async def test_an_unknown_host_is_unreachable() -> None:
    await _expect(RendezvousUnreachable, "ws://no-such-host.invalid/v1")


@pytest.mark.slow
async def test_a_server_that_accepts_and_never_answers_times_out() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await _serve_tcp(nursery, silent)
        text = await _expect(RendezvousTimeout, f"ws://127.0.0.1:{port}/v1")
        assert f"did not answer within {TIMEOUT:g} s" in text
        nursery.cancel_scope.cancel()


async def test_an_http_server_that_is_not_a_websocket() -> None:
    async def http(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await _serve_tcp(nursery, http)
        text = await _expect(RendezvousProtocolError, f"ws://127.0.0.1:{port}/v1")
        assert "HTTP 404" in text
        nursery.cancel_scope.cancel()


async def test_a_server_that_answers_http_garbage() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"\x00\xffthis is not HTTP\r\n\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await _serve_tcp(nursery, garbage)
        await _expect(RendezvousError, f"ws://127.0.0.1:{port}/v1")
        nursery.cancel_scope.cancel()


async def _sends(*frames: str | bytes) -> Handler:
    async def handler(ws: trio_websocket.WebSocketConnection) -> None:
        for frame in frames:
            await ws.send_message(frame)
        while True:  # read (and ignore) what the client says, so that its close is answered
            await ws.get_message()
    return handler


@pytest.mark.parametrize(("frames", "error", "words"), [
    (["garbage"], RendezvousProtocolError, "not JSON"),
    ([b"\x00\x01binary"], RendezvousProtocolError, "binary"),
    (['{"type": "ack", "id": null}'], RendezvousProtocolError, "welcome"),
    (['{"type": "welcome", "welcome": {}}', '{"type": "welcome", "welcome": {}}'],
     RendezvousProtocolError, "second welcome"),
    (['{"type": "welcome", "welcome": {"error": "closed for repairs"}}'], MailboxServerError,
     "closed for repairs"),
    (['{"type": "welcome", "welcome": {}}', '{"type": "error", "error": "crowded", '
      '"orig": {"type": "open"}}'], MailboxCrowded, "crowded"),
    (['{"type": "welcome", "welcome": {}}', '{"type": "error", "error": "must bind first", '
      '"orig": {"type": "open"}}'], MailboxServerError, "must bind first"),
    (['{"type": "welcome", "welcome": {}}', '{"type": "message", "side": "x", "body": "zz"}'],
     RendezvousProtocolError, "garbage"),
    (['{"type": "welcome", "welcome": {}}', "x" * (MAX_SERVER_MESSAGE + 1)],
     RendezvousProtocolError, "larger than"),
    (['{"type": "welcome", "welcome": {}}'], RendezvousTimeout, "open the mailbox"),
    ([], RendezvousTimeout, "open the mailbox"),
])
async def test_fake_websocket_servers(frames: list[str | bytes], error: type[RendezvousError],
                                      words: str) -> None:
    async with trio.open_nursery() as nursery:
        url = await _serve_ws(nursery, await _sends(*frames))
        text = await _expect(error, url)
        assert words in text
        nursery.cancel_scope.cancel()


async def test_a_server_that_hangs_up_after_the_welcome() -> None:
    async def rude(ws: trio_websocket.WebSocketConnection) -> None:
        await _welcome(ws)
        await ws.aclose()

    async with trio.open_nursery() as nursery:
        url = await _serve_ws(nursery, rude)
        text = await _expect(RendezvousUnreachable, url)
        assert "closed" in text
        nursery.cancel_scope.cancel()


async def test_a_server_that_floods_us_with_messages() -> None:
    """Peer messages nobody reads are capped: a flood ends the session, memory stays bounded."""
    async def flood(ws: trio_websocket.WebSocketConnection) -> None:
        await _welcome(ws)
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] == "ping":
                await ws.send_message(json.dumps({"type": "pong", "pong": frame["ping"]}))
            if frame["type"] == "add":
                for i in range(1000):
                    await ws.send_message(json.dumps(
                        {"type": "message", "side": "other", "phase": "p", "body": "",
                         "id": str(i)}))

    async with trio.open_nursery() as nursery:
        url = await _serve_ws(nursery, flood)
        with pytest.raises(RendezvousProtocolError, match="unread messages"):
            async with open_mailbox(url, MAILBOX_ID, timeout=TIMEOUT) as session:
                await session.add("p", b"hello")
        nursery.cancel_scope.cancel()


async def test_a_server_that_never_confirms_an_add() -> None:
    async def forgetful(ws: trio_websocket.WebSocketConnection) -> None:
        await _welcome(ws)
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] == "ping":
                await ws.send_message(json.dumps({"type": "pong", "pong": frame["ping"]}))

    async with trio.open_nursery() as nursery:
        url = await _serve_ws(nursery, forgetful)
        async with open_mailbox(url, MAILBOX_ID, timeout=TIMEOUT) as session:
            with pytest.raises(RendezvousTimeout, match="store a message"):
                await session.add("p", b"hello")
            with pytest.raises(RendezvousTimeout, match="deliver a message"):
                await session.receive(timeout=0.2)
            with pytest.raises(RendezvousTimeout, match="confirm the close"):
                await session.close()
        nursery.cancel_scope.cancel()


async def test_bad_arguments_fail_before_any_traffic() -> None:
    url = f"ws://127.0.0.1:{_closed_port()}/v1"  # would be Unreachable if we dialled it
    for kwargs in ({"mailbox_id": "not a mailbox id"}, {"mailbox_id": MAILBOX_ID, "side": ""},
                   {"mailbox_id": MAILBOX_ID, "side": "bad side"},
                   {"mailbox_id": MAILBOX_ID, "appid": ""}):
        with pytest.raises(LocalProtocolError):
            async with open_mailbox(url, **kwargs):  # type: ignore[arg-type]
                pass
    with pytest.raises(RendezvousAddressError):
        async with open_mailbox("http://127.0.0.1/v1", MAILBOX_ID):
            pass
