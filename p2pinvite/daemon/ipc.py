"""The daemon's IPC server: a Unix socket speaking length-prefixed msgpack.

Theory of operation
-------------------
:func:`serve_ipc` binds ``HOME/daemon.sock`` (mode 0600, inside the 0700
home) and accepts connections. Each connection is first checked with
``SO_PEERCRED``: a peer whose uid differs from the daemon's gets one
``permission_denied`` error and is closed. Filesystem permissions already
keep other users out; the uid check is the second lock on the same door.

A connection has one reader task. It feeds bytes to a
:class:`~p2pinvite.wire.FrameDecoder` and, for each frame,

* a frame that is not a valid request -> an error reply (``bad_request``,
  with the request id when it could be read); the connection stays open,
  since the framing is still in step;
* a length above :data:`~p2pinvite.ipc_codec.MAX_IPC_FRAME` -> an error reply
  with a nil id, then close: the stream can no longer be framed;
* a valid request -> a task of its own, so a long stream (a subscription,
  ``invitations.accept``) does not block other requests on the connection.

Handlers receive a :class:`Call` and return the result; a streaming handler
calls :meth:`Call.emit` for each event first. Exceptions become error replies
through :func:`error_for`, so handlers raise the package's typed errors and
never build replies. Writes are serialised under one lock per connection.

When the client disconnects, its in-flight calls are cancelled. A bad
client affects only its own connection; the daemon keeps serving the others.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import trio

from ..errors import (
    CodeError,
    ConnectionClosed,
    CredentialError,
    FrameTooLarge,
    HandshakeTimeout,
    InvitationError,
    IPCError,
    LocalProtocolError,
    RemoteProtocolError,
    StorageError,
)
from ..ipc_codec import (
    ERROR_CODES,
    HEADER,
    MAX_IPC_FRAME,
    BadRequest,
    ErrorReply,
    Event,
    Request,
    Result,
    decode_request,
    encode,
)
from ..wire import FrameDecoder

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_INFLIGHT",
    "Call",
    "CallError",
    "Handler",
    "error_for",
    "peer_uid",
    "serve_ipc",
]

log = logging.getLogger(__name__)

#: Connections served at once; more are answered ``busy`` and closed.
MAX_CONNECTIONS: Final = 64
#: Requests in flight on one connection; more are answered ``busy``.
MAX_INFLIGHT: Final = 32
_RECEIVE_SIZE: Final = 65536
#: How long, and how much, a refused connection is drained before it is closed.
_LINGER_SECONDS: Final = 1.0
_LINGER_BYTES: Final = 4 * MAX_IPC_FRAME


class Call:
    """One request being served: its ``params``, and :meth:`emit` for streaming methods."""

    __slots__ = ("_conn", "id", "method", "params")

    def __init__(self, conn: _Connection, request: Request) -> None:
        self._conn = conn
        self.id = request.id
        self.method = request.method
        self.params = request.params

    async def emit(self, event: Mapping[str, Any]) -> None:
        """Send one event of this call to the client (before its final result)."""
        await self._conn.send(Event(self.id, dict(event)))


Handler = Callable[[Call], Awaitable[Any]]


class CallError(IPCError):
    """An error a handler raises to answer with *code* and extra error-map fields."""

    def __init__(self, message: str, *, code: str, details: Mapping[str, Any] | None = None):
        super().__init__(message, code=code)
        self.details: dict[str, Any] = dict(details or {})


def error_for(exc: Exception) -> ErrorReply:
    """The error reply for *exc* raised by a handler (id filled in by the caller).

    Precise reasons are fine here: the IPC peer is the local owner. Secrets
    never reach exception messages by the package's rules.
    """
    match exc:
        case CallError() if exc.code in ERROR_CODES:
            return ErrorReply(None, exc.code, str(exc), exc.details)
        case IPCError() if exc.code in ERROR_CODES:
            return ErrorReply(None, exc.code, str(exc))
        case InvitationError(reason="wrong_pin"):
            details = {} if exc.attempts_left is None else {"attempts_left": exc.attempts_left}
            return ErrorReply(None, "wrong_pin", str(exc), details)
        case InvitationError(reason="unknown"):
            return ErrorReply(None, "not_found", str(exc))
        case InvitationError():
            return ErrorReply(None, "refused", str(exc), {"reason": exc.reason})
        case CodeError():
            return ErrorReply(None, "invalid_code", str(exc))
        case HandshakeTimeout() | trio.TooSlowError():
            return ErrorReply(None, "timeout", str(exc) or "timed out")
        case ConnectionClosed():
            return ErrorReply(None, "unreachable", str(exc))
        case CredentialError():
            return ErrorReply(None, "refused", str(exc), {"reason": exc.rule})
        case RemoteProtocolError() if not isinstance(exc, LocalProtocolError):
            return ErrorReply(None, "refused", str(exc), {"reason": "protocol_error"})
        case StorageError():
            return ErrorReply(None, "storage", str(exc))
    message = f"internal error ({type(exc).__name__}); see the daemon log"
    return ErrorReply(None, "internal", message)


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The uid of the process on the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


class _Connection:
    """One accepted client: reader loop, request tasks, serialised writes."""

    def __init__(self, stream: trio.SocketStream, methods: Mapping[str, Handler]) -> None:
        self._stream = stream
        self._methods = methods
        self._send_lock = trio.StrictFIFOLock()
        self._inflight: set[int] = set()
        self._closed = False
        self._scope = trio.CancelScope()

    async def send(self, msg: Result | ErrorReply | Event) -> None:
        """Write one message; a vanished client ends the connection (and its calls)."""
        data = encode(msg)
        async with self._send_lock:
            if self._closed:
                raise _Gone()
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._closed = True
                self._scope.cancel()
                raise _Gone() from None

    async def _reply_error(self, rid: int | None, code: str, message: str) -> None:
        with contextlib.suppress(_Gone):
            await self.send(ErrorReply(rid, code, message))

    async def serve(self) -> None:
        """Read and dispatch frames until the client leaves or breaks the framing."""
        decoder = FrameDecoder(header=HEADER, max_frame=MAX_IPC_FRAME)
        linger = False
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    try:
                        linger = await self._read_loop(decoder, nursery)
                    finally:
                        # The client is gone (or must go): so are its calls.
                        nursery.cancel_scope.cancel()
        finally:
            self._closed = True
            if linger:
                await _linger_close(self._stream)
            else:
                await trio.aclose_forcefully(self._stream)

    async def _read_loop(self, decoder: FrameDecoder, nursery: trio.Nursery) -> bool:
        """Dispatch frames until EOF; True when the framing broke (close gracefully)."""
        while not self._closed:
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            if not data:
                return False
            decoder.feed(data)
            try:
                for payload in decoder.frames():
                    await self._dispatch(payload, nursery)
            except FrameTooLarge as exc:
                log.warning("ipc frame too large; closing", extra={"reason": str(exc)})
                await self._reply_error(None, "bad_request", str(exc))
                return True
        return False

    async def _dispatch(self, payload: bytes, nursery: trio.Nursery) -> None:
        try:
            request = decode_request(payload)
        except BadRequest as exc:
            log.info("ipc bad request", extra={"reason": str(exc)})
            await self._reply_error(exc.request_id, "bad_request", str(exc))
            return
        handler = self._methods.get(request.method)
        if handler is None:
            await self._reply_error(
                request.id, "unknown_method", f"this daemon has no method {request.method!r}"
            )
        elif request.id in self._inflight:
            await self._reply_error(
                request.id, "bad_request", f"request id {request.id} is already in flight"
            )
        elif len(self._inflight) >= MAX_INFLIGHT:
            await self._reply_error(request.id, "busy", "too many requests in flight")
        else:
            self._inflight.add(request.id)
            nursery.start_soon(self._run, handler, Call(self, request))

    async def _run(self, handler: Handler, call: Call) -> None:
        try:
            try:
                value = await handler(call)
            except _Gone:
                return
            except Exception as exc:
                reply = error_for(exc)
                if reply.code == "internal":
                    log.error(
                        "ipc handler failed",
                        exc_info=exc,
                        extra={"method": call.method},
                    )
                else:
                    log.info(
                        "ipc request refused",
                        extra={"method": call.method, "error": reply.code},
                    )
                reply = ErrorReply(call.id, reply.code, reply.message, reply.details)
                with contextlib.suppress(_Gone):
                    await self.send(reply)
                return
            with contextlib.suppress(_Gone):
                await self.send(Result(call.id, value))
        finally:
            self._inflight.discard(call.id)


class _Gone(Exception):
    """The client went away while we were writing to it (internal control flow)."""


async def _linger_close(stream: trio.SocketStream) -> None:
    """Close after our last reply has been read: EOF first, drain the peer, then close.

    Closing a Unix socket with unread input resets the connection, and the
    peer may then lose the error reply we just sent. Draining (bounded in
    time and bytes) lets the reply arrive.
    """
    try:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_eof()
            with trio.move_on_after(_LINGER_SECONDS):
                drained = 0
                while drained < _LINGER_BYTES:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        break
                    drained += len(data)
    finally:
        await trio.aclose_forcefully(stream)


async def _refuse(stream: trio.SocketStream, code: str, message: str) -> None:
    try:
        with (
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            trio.move_on_after(_LINGER_SECONDS),
        ):
            await stream.send_all(encode(ErrorReply(None, code, message)))
    finally:
        await _linger_close(stream)


def _bind(path: Path) -> tuple[trio.socket.SocketType, tuple[int, int]]:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask makes the socket 0600 from its first instant; nothing awaits
        # in between, so no other task creates files under this umask.
        old = os.umask(0o177)
        try:
            raw.bind(os.fspath(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        st = path.lstat()
        raw.listen(socket.SOMAXCONN)
    except BaseException:
        raw.close()
        raise
    return trio.socket.from_stdlib_socket(raw), (st.st_dev, st.st_ino)


def _unlink_if(path: Path, ident: tuple[int, int]) -> None:
    """Remove *path* only if it is still the socket we bound (not a successor's)."""
    with contextlib.suppress(OSError):
        st = path.lstat()
        if (st.st_dev, st.st_ino) == ident:
            path.unlink()


async def serve_ipc(
    path: Path,
    methods: Mapping[str, Handler],
    *,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *methods* on a Unix socket at *path* until cancelled.

    The socket is created 0600 (the caller makes sure no daemon is serving
    *path* and a stale file is gone); it is removed when serving ends.
    ``task_status.started(path)`` is called once connections are accepted.
    """
    sock, ident = _bind(path)
    uid = os.geteuid()
    listener = trio.SocketListener(sock)
    active = 0
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            log.info("ipc listening", extra={"socket": str(path)})
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("ipc accept failed", extra={"errno": exc.errno})
                        await trio.sleep(0.1)
                        continue
                    raise
                try:
                    peer = peer_uid(stream.socket)
                except OSError:
                    await stream.aclose()
                    continue
                if peer != uid:
                    log.warning("ipc peer refused", extra={"peer_uid": peer})
                    nursery.start_soon(
                        _refuse, stream, "permission_denied", "this daemon belongs to another user"
                    )
                    continue
                if active >= max_connections:
                    nursery.start_soon(_refuse, stream, "busy", "too many IPC connections")
                    continue

                async def _serve(stream: trio.SocketStream = stream) -> None:
                    nonlocal active
                    try:
                        await _Connection(stream, methods).serve()
                    finally:
                        active -= 1

                # Counted here, not in the task: a burst of connects is accepted
                # before any new task runs, and each must see the ones before it.
                active += 1
                nursery.start_soon(_serve)
    finally:
        _unlink_if(path, ident)  # first: aclose() may raise Cancelled after closing
        await listener.aclose()
