"""The IPC server and codec in-process: trio server on a temp socket, real clients."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite import ipc_codec
from p2pinvite.client import (
    AcceptEvent,
    AsyncClient,
    Client,
    JoinResult,
    RequestError,
)
from p2pinvite.daemon import ipc
from p2pinvite.daemon.ipc import Call, Handler, error_for, serve_ipc
from p2pinvite.errors import (
    CodeError,
    ConnectionClosed,
    DecodeError,
    HandshakeTimeout,
    InvitationError,
    IPCError,
    StorageError,
)

# -- codec -------------------------------------------------------------------------------


def test_codec_roundtrip_every_message() -> None:
    msgs: list[ipc_codec.Request | ipc_codec.Reply] = [
        ipc_codec.Result(3, {"a": [1, "x"]}),
        ipc_codec.Event(3, {"state": "connecting"}),
        ipc_codec.ErrorReply(3, "wrong_pin", "no", {"attempts_left": 2}),
        ipc_codec.ErrorReply(None, "bad_request", "bad"),
    ]
    for m in msgs:
        framed = ipc_codec.encode(m)
        assert int.from_bytes(framed[:4], "big") == len(framed) - 4
        assert ipc_codec.decode_reply(framed[4:]) == m
    req = ipc_codec.Request(7, "spaces.create", {"name": "x"})
    assert ipc_codec.decode_request(ipc_codec.encode(req)[4:]) == req


@pytest.mark.parametrize(
    ("value", "request_id"),
    [
        ([1, 2], None),
        ({"method": "status"}, None),
        ({"id": -1, "method": "status"}, None),
        ({"id": True, "method": "status"}, None),
        ({"id": 5}, 5),
        ({"id": 5, "method": ""}, 5),
        ({"id": 5, "method": "x" * 65}, 5),
        ({"id": 5, "method": "status", "params": [1]}, 5),
        ({"id": 5, "method": "status", "extra": 1}, 5),
    ],
)
def test_codec_refuses_bad_requests(value: Any, request_id: int | None) -> None:
    with pytest.raises(ipc_codec.BadRequest) as info:
        ipc_codec.decode_request(msgpack.packb(value))
    assert info.value.request_id == request_id


def test_codec_request_params_default_to_empty() -> None:
    req = ipc_codec.decode_request(msgpack.packb({"id": 1, "method": "status"}))
    assert req.params == {}


def test_codec_refuses_bad_replies() -> None:
    for value in ({"id": 1}, {"result": 1}, {"id": 1, "event": 3},
                  {"id": 1, "error": {"code": 1, "message": "x"}}, {"id": "x", "error": {}}):
        with pytest.raises(DecodeError):
            ipc_codec.decode_reply(msgpack.packb(value))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_codec_decode_request_raises_only_bad_request(data: bytes) -> None:
    with contextlib.suppress(ipc_codec.BadRequest):
        ipc_codec.decode_request(data)


def test_error_codes_for_typed_exceptions() -> None:
    cases: list[tuple[Exception, str, dict[str, Any]]] = [
        (IPCError("x", code="not_found"), "not_found", {}),
        (IPCError("x", code="made_up"), "internal", {}),
        (InvitationError("w", reason="wrong_pin", attempts_left=2), "wrong_pin",
         {"attempts_left": 2}),
        (InvitationError("e", reason="expired"), "refused", {"reason": "expired"}),
        (CodeError("bad"), "invalid_code", {}),
        (HandshakeTimeout("slow"), "timeout", {}),
        (trio.TooSlowError(), "timeout", {}),
        (ConnectionClosed("gone"), "unreachable", {}),
        (StorageError("disk"), "storage", {}),
        (KeyError("secret-ish detail"), "internal", {}),
    ]
    for exc, code, details in cases:
        reply = error_for(exc)
        assert (reply.code, reply.details) == (code, details), exc
        assert reply.code in ipc_codec.ERROR_CODES
    # An unexpected exception's text (which might hold anything) is not sent.
    assert "secret-ish" not in error_for(KeyError("secret-ish detail")).message


# -- a server with test handlers --------------------------------------------------------


async def _echo(call: Call) -> Any:
    return {"method": call.method, "params": call.params}


async def _slow(call: Call) -> Any:
    await trio.sleep(float(call.params.get("seconds", 3600)))
    return "slept"


async def _boom(call: Call) -> Any:
    raise RuntimeError("kaboom with a secret 123456")


async def _not_found(call: Call) -> Any:
    raise IPCError("no such thing", code="not_found")


async def _accept(call: Call) -> Any:
    for state in ("connecting", "connected", "authenticating"):
        await call.emit({"state": state})
    if call.params.get("pin") != "424242":
        raise InvitationError("wrong PIN", reason="wrong_pin", attempts_left=2)
    await call.emit({"state": "admitted", "kind": "space"})
    return {"kind": "space", "identity_key": "aa" * 32, "space_id": "bb" * 32,
            "space_name": "Photos", "role": "editor"}


class _Probe:
    def __init__(self) -> None:
        self.cancelled = trio.Event()
        self.started = trio.Event()

    async def hang(self, call: Call) -> Any:
        self.started.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()


def _methods(probe: _Probe | None = None) -> dict[str, Handler]:
    table: dict[str, Handler] = {
        "echo": _echo, "slow": _slow, "boom": _boom, "missing": _not_found,
        "invitations.accept": _accept,
    }
    if probe is not None:
        table["hang"] = probe.hang
    return table


ServerStarter = Callable[..., Awaitable[Path]]


@pytest.fixture
async def server(nursery: trio.Nursery, short_tmp: Path) -> AsyncIterator[ServerStarter]:
    async def start(methods: dict[str, Handler] | None = None, **kw: Any) -> Path:
        home = short_tmp / "home"
        home.mkdir(mode=0o700)
        path = home / ipc_codec.SOCKET_NAME
        await nursery.start(lambda task_status: serve_ipc(
            path, methods if methods is not None else _methods(), task_status=task_status, **kw))
        return path

    return start


async def _raw(path: Path) -> trio.SocketStream:
    return await trio.open_unix_socket(str(path))


async def _read_reply(stream: trio.SocketStream, buf: bytearray) -> ipc_codec.Reply | None:
    while True:
        if len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if len(buf) >= 4 + n:
                payload = bytes(buf[4 : 4 + n])
                del buf[: 4 + n]
                return ipc_codec.decode_reply(payload)
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data


async def _request(stream: trio.SocketStream, rid: int, method: str, **params: Any) -> None:
    await stream.send_all(ipc_codec.encode(ipc_codec.Request(rid, method, params)))


async def test_socket_is_private_and_removed_on_exit(short_tmp: Path) -> None:
    home = short_tmp / "home"
    home.mkdir(mode=0o700)
    path = home / "daemon.sock"
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            await n.start(serve_ipc, path, _methods())
            st_ = path.lstat()
            assert stat.S_ISSOCK(st_.st_mode)
            assert stat.S_IMODE(st_.st_mode) == 0o600
            n.cancel_scope.cancel()
    assert not path.exists()


async def test_request_result_and_errors(server: ServerStarter) -> None:
    path = await server()
    with trio.fail_after(10):
        s = await _raw(path)
        buf = bytearray()
        await _request(s, 1, "echo", x=1)
        assert await _read_reply(s, buf) == ipc_codec.Result(
            1, {"method": "echo", "params": {"x": 1}})
        await _request(s, 2, "nope")
        r = await _read_reply(s, buf)
        assert isinstance(r, ipc_codec.ErrorReply)
        assert (r.id, r.code) == (2, "unknown_method")
        await _request(s, 3, "missing")
        r = await _read_reply(s, buf)
        assert isinstance(r, ipc_codec.ErrorReply)
        assert (r.id, r.code) == (3, "not_found")
        await _request(s, 4, "boom")
        r = await _read_reply(s, buf)
        assert isinstance(r, ipc_codec.ErrorReply)
        assert (r.id, r.code) == (4, "internal")
        assert "123456" not in r.message
        assert "kaboom" not in r.message
        await s.aclose()


async def test_streaming_events_then_error_and_result(server: ServerStarter) -> None:
    path = await server()
    with trio.fail_after(10):
        s = await _raw(path)
        buf = bytearray()
        await _request(s, 1, "invitations.accept", code="c", pin="000000")
        states = []
        while isinstance(r := await _read_reply(s, buf), ipc_codec.Event):
            states.append(r.event["state"])
        assert states == ["connecting", "connected", "authenticating"]
        assert isinstance(r, ipc_codec.ErrorReply)
        assert (r.id, r.code, r.details) == (1, "wrong_pin", {"attempts_left": 2})
        await s.aclose()


async def test_slow_request_does_not_block_others_on_same_connection(
    server: ServerStarter, autojump_clock: trio.testing.MockClock
) -> None:
    path = await server()
    with trio.fail_after(100):
        s = await _raw(path)
        buf = bytearray()
        await _request(s, 1, "slow", seconds=50)
        await _request(s, 2, "echo")
        first = await _read_reply(s, buf)
        assert isinstance(first, ipc_codec.Result)
        assert first.id == 2
        second = await _read_reply(s, buf)
        assert second == ipc_codec.Result(1, "slept")
        # A duplicate id while the first is in flight is refused.
        await _request(s, 3, "slow", seconds=10)
        await _request(s, 3, "echo")
        dup = await _read_reply(s, buf)
        assert isinstance(dup, ipc_codec.ErrorReply)
        assert (dup.id, dup.code) == (3, "bad_request")
        assert await _read_reply(s, buf) == ipc_codec.Result(3, "slept")
        await s.aclose()


async def test_too_many_inflight_requests_are_busy(server: ServerStarter) -> None:
    path = await server()
    with trio.fail_after(10):
        s = await _raw(path)
        buf = bytearray()
        for i in range(ipc.MAX_INFLIGHT + 1):
            await _request(s, i, "slow")
        r = await _read_reply(s, buf)
        assert isinstance(r, ipc_codec.ErrorReply)
        assert (r.id, r.code) == (ipc.MAX_INFLIGHT, "busy")
        await s.aclose()


async def test_disconnect_cancels_inflight_calls(server: ServerStarter) -> None:
    probe = _Probe()
    path = await server(_methods(probe))
    with trio.fail_after(10):
        s = await _raw(path)
        await _request(s, 1, "hang")
        await probe.started.wait()
        await s.aclose()
        await probe.cancelled.wait()


async def test_garbage_and_oversized_frames(server: ServerStarter) -> None:
    path = await server()
    with trio.fail_after(10):
        s = await _raw(path)
        buf = bytearray()
        await s.send_all((3).to_bytes(4, "big") + b"\x91\xc1\x00")
        r = await _read_reply(s, buf)
        assert isinstance(r, ipc_codec.ErrorReply)
        assert (r.id, r.code) == (None, "bad_request")
        await s.send_all(ipc_codec.encode(ipc_codec.Request(8, "echo", {})))
        assert await _read_reply(s, buf) == ipc_codec.Result(8, {"method": "echo", "params": {}})
        await s.send_all((2**32 - 1).to_bytes(4, "big") + b"\x00" * 10_000)
        r = await _read_reply(s, buf)
        assert isinstance(r, ipc_codec.ErrorReply)
        assert r.code == "bad_request"
        assert await _read_reply(s, buf) is None
        await s.aclose()
        # Others are still served.
        other = await _raw(path)
        await _request(other, 1, "echo")
        assert isinstance(await _read_reply(other, bytearray()), ipc_codec.Result)
        await other.aclose()


async def test_connection_cap_answers_busy(server: ServerStarter) -> None:
    path = await server(max_connections=2)
    with trio.fail_after(10):
        keep = [await _raw(path), await _raw(path)]
        for k in keep:  # make sure both are being served
            await _request(k, 1, "echo")
            assert isinstance(await _read_reply(k, bytearray()), ipc_codec.Result)
        third = await _raw(path)
        r = await _read_reply(third, bytearray())
        assert isinstance(r, ipc_codec.ErrorReply)
        assert r.code == "busy"
        await third.aclose()
        for k in keep:
            await k.aclose()


async def test_foreign_uid_refused(server: ServerStarter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal path; tests/daemon/test_client_cli.py runs it as a real other user."""
    path = await server()
    monkeypatch.setattr(ipc, "peer_uid", lambda sock: os.geteuid() + 1)
    with trio.fail_after(10):
        s = await _raw(path)
        r = await _read_reply(s, bytearray())
        assert isinstance(r, ipc_codec.ErrorReply)
        assert (r.id, r.code) == (None, "permission_denied")
        assert await _read_reply(s, bytearray()) is None
        await s.aclose()


def test_peer_uid_reads_so_peercred() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert ipc.peer_uid(trio.socket.from_stdlib_socket(a)) == os.geteuid()


# -- clients against the in-process server -------------------------------------------------


async def test_async_client_accept_and_wrong_pin(server: ServerStarter) -> None:
    path = await server()
    with trio.fail_after(10):
        async with await AsyncClient.connect(path.parent) as c:
            items = [x async for x in c.invitations.accept("code", pin="424242")]
            assert [i.state for i in items if isinstance(i, AcceptEvent)] == [
                "connecting", "connected", "authenticating", "admitted"]
            assert items[-1] == JoinResult(kind="space", identity_key="aa" * 32,
                                           space_id="bb" * 32, space_name="Photos",
                                           role="editor")
            with pytest.raises(RequestError) as info:
                async for _ in c.invitations.accept("code", pin="111111"):
                    pass
            assert (info.value.code, info.value.attempts_left) == ("wrong_pin", 2)
            # Multiplexing: a slow call and a fast one on one connection.
            async with trio.open_nursery() as n:
                n.start_soon(c.call, "slow", {"seconds": 0.2})
                assert (await c.call("echo"))["method"] == "echo"


async def test_blocking_client_accept_and_errors(server: ServerStarter) -> None:
    path = await server()

    def use_blocking() -> list[Any]:
        with Client.connect(path.parent, timeout=10) as c:
            out: list[Any] = list(c.invitations.accept("code", pin="424242"))
            try:
                list(c.invitations.accept("code"))
            except RequestError as exc:
                out.append((exc.code, exc.attempts_left))
            try:
                c.call("missing")
            except RequestError as exc:
                out.append(exc.code)
            return out

    with trio.fail_after(20):
        out = await trio.to_thread.run_sync(use_blocking)
    assert isinstance(out[-3], JoinResult)
    assert out[-3].role == "editor"
    assert out[-2:] == [("wrong_pin", 2), "not_found"]


async def test_blocking_client_times_out(server: ServerStarter) -> None:
    path = await server()

    def call_slow() -> str:
        with Client.connect(path.parent, timeout=0.2) as c:
            try:
                c.call("slow")
            except IPCError as exc:
                return exc.code
        return "no error"

    with trio.fail_after(20):
        assert await trio.to_thread.run_sync(call_slow) == "timeout"
