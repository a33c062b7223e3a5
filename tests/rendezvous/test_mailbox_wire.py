"""The mailbox codec: what we send, what we accept from the server, URLs (sans-IO)."""

from __future__ import annotations

import json

import pytest

from p2pinvite.errors import (
    DecodeError,
    FrameTooLarge,
    LocalProtocolError,
    RendezvousAddressError,
)
from p2pinvite.rendezvous.mailbox_wire import (
    MAX_BODY,
    MAX_SERVER_MESSAGE,
    Ack,
    Closed,
    ErrorReply,
    Ignored,
    Message,
    Pong,
    Welcome,
    check_mailbox_url,
    decode_server_message,
    encode_add,
    encode_bind,
    encode_close,
    encode_open,
    encode_ping,
)


def test_client_messages() -> None:
    assert json.loads(encode_bind("p2pinvite/rendezvous/v1", "p2pinvite_side_0", "i1")) == {
        "type": "bind", "appid": "p2pinvite/rendezvous/v1", "side": "p2pinvite_side_0",
        "client_version": ["p2pinvite", "0.1.0"], "id": "i1"}
    assert json.loads(encode_open("ab" * 32, "i2")) == {"type": "open", "mailbox": "ab" * 32,
                                                         "id": "i2"}
    assert json.loads(encode_add("candidates", b"\x00\xff", "i3")) == {
        "type": "add", "phase": "candidates", "body": "00ff", "id": "i3"}
    assert json.loads(encode_close("m", "lonely", "i4")) == {"type": "close", "mailbox": "m",
                                                             "mood": "lonely", "id": "i4"}
    assert json.loads(encode_ping(7, "i5")) == {"type": "ping", "ping": 7, "id": "i5"}
    # Compact and sorted: the same message is always the same bytes.
    assert encode_ping(7, "i5") == '{"id":"i5","ping":7,"type":"ping"}'


@pytest.mark.parametrize("call", [
    lambda: encode_bind("", "side", "i"),
    lambda: encode_bind("app\n", "side", "i"),
    lambda: encode_bind("app", "a side", "i"),
    lambda: encode_bind("app", "", "i"),
    lambda: encode_open("m" * 129, "i"),
    lambda: encode_open("m", "bad id"),
    lambda: encode_add("phase", b"x" * (MAX_BODY + 1), "i"),
    lambda: encode_add("pha/se", b"", "i"),
    lambda: encode_add("phase", "text", "i"),  # type: ignore[arg-type]
    lambda: encode_close("m", "grumpy", "i"),  # type: ignore[arg-type]
    lambda: encode_ping(-1, "i"),
    lambda: encode_ping(2**31, "i"),
    lambda: encode_ping(True, "i"),
])
def test_we_refuse_to_send_what_we_would_not_accept(call: object) -> None:
    with pytest.raises(LocalProtocolError):
        call()  # type: ignore[operator]


def _frame(**fields: object) -> str:
    return json.dumps({"server_tx": 1796524339.5, **fields})


def test_server_messages_as_the_real_server_sends_them() -> None:
    welcome = _frame(type="welcome", welcome={"your-address": {"port": 1, "ipv4": "127.0.0.1"},
                                              "motd": "hello\x1b[31m"})
    assert decode_server_message(welcome) == Welcome(motd="hello?[31m")
    assert decode_server_message(_frame(type="welcome", welcome={"error": "go away"})) == \
        Welcome(error="go away")
    assert decode_server_message(_frame(type="ack", id="i1")) == Ack("i1")
    assert decode_server_message(_frame(type="ack", id=None)) == Ack(None)
    assert decode_server_message(_frame(type="ack", id=[1])) == Ack(None)  # not one of ours
    msg = _frame(type="message", side="s", phase="p", body="00FFab", id="i3", server_rx=1.0)
    assert decode_server_message(msg) == Message("s", "p", b"\x00\xff\xab", "i3")
    assert decode_server_message(_frame(type="closed")) == Closed()
    err = _frame(type="error", error="crowded", orig={"type": "open", "mailbox": "m"})
    assert decode_server_message(err) == ErrorReply("crowded", "open")
    assert decode_server_message(_frame(type="error", error="x" * 500, orig="?")) == \
        ErrorReply("x" * 200, None)
    assert decode_server_message(_frame(type="pong", pong=5)) == Pong(5)
    assert decode_server_message(_frame(type="nameplates", nameplates=[])) == \
        Ignored("nameplates")


@pytest.mark.parametrize("frame", [
    b'{"type": "ack"}',                       # binary frame
    "not json",
    "[1, 2]",
    '"welcome"',
    "{}",
    '{"type": 5}',
    '{"type": "ack", "id": NaN}',             # not JSON, though Python would take it
    '{"type": "pong", "pong": Infinity}',
    "[" * 100_00 + "]" * 100_00,              # deep nesting (RecursionError inside json)
    '{"type": "welcome"}',
    '{"type": "welcome", "welcome": []}',
    '{"type": "welcome", "welcome": {"error": 1}}',
    '{"type": "message", "side": "s", "phase": "p"}',
    '{"type": "message", "side": "s", "phase": "p", "body": "0"}',
    '{"type": "message", "side": "s", "phase": "p", "body": "zz"}',
    '{"type": "message", "side": "s", "phase": "p", "body": "00 11"}',
    '{"type": "message", "side": 1, "phase": "p", "body": ""}',
    '{"type": "message", "side": "s", "phase": null, "body": ""}',
    json.dumps({"type": "message", "side": "s" * 257, "phase": "p", "body": ""}),
    json.dumps({"type": "message", "side": "s", "phase": "p", "body": "00" * (MAX_BODY + 1)}),
    '{"type": "error"}',
    '{"type": "pong", "pong": "1"}',
    '{"type": "pong", "pong": true}',
])
def test_malformed_server_messages_are_decode_errors(frame: str | bytes) -> None:
    with pytest.raises(DecodeError):
        decode_server_message(frame)


def test_oversized_server_messages_are_refused_before_parsing() -> None:
    with pytest.raises(FrameTooLarge):
        decode_server_message(" " * (MAX_SERVER_MESSAGE + 1))


@pytest.mark.parametrize("url", [
    "ws://relay.magic-wormhole.io:4000/v1",
    "wss://mailbox.example.net/v1",
    "ws://127.0.0.1:4000/v1",
    "ws://[::1]:4000/v1",
    "ws://host",
])
def test_good_urls(url: str) -> None:
    assert check_mailbox_url(url) == url


@pytest.mark.parametrize("url", [
    "", "http://host/v1", "host:4000", "ws:///v1", "ws://user:pw@host/v1", "ws://user@host/v1",
    "ws://host/v1?x=1", "ws://host/v1#frag", "ws://host:99999/v1", "ws://host:0/v1",
    "ws://host/ v1", "ws://host/v1\n", "ws://" + "h" * 3000, "ws://[::1/v1", None,
])
def test_bad_urls(url: str) -> None:
    with pytest.raises(RendezvousAddressError):
        check_mailbox_url(url)
    assert issubclass(RendezvousAddressError, ValueError)  # what a CLI parser catches
