"""A magic-wormhole mailbox session over trio-websocket (docs/RENDEZVOUS.md §4).

:func:`open_mailbox` connects to a mailbox server, binds our application id
and side, opens one mailbox, and proves the open worked before handing out a
:class:`MailboxSession`::

    names = for_invitation(code_secret)
    async with open_mailbox(url, names.mailbox_id, side=names.side(1)) as mailbox:
        await mailbox.add(PHASE, seal_candidates(names.sealing_key, mine, sender_side=...))
        async for message in mailbox:          # the OTHER side's messages only
            ...

The server never confirms an ``open`` (it only refuses one, with ``crowded``),
so the opening ends with a ``ping``: the server handles a connection's
messages in order, and a ``pong`` with no error before it proves the bind and
the open were accepted. Likewise :meth:`MailboxSession.add` returns once the
server has echoed our message back to us, i.e. once it is stored.

No background task: whichever call needs the next server frame reads it (one
reader at a time) and files it: an echo of ours, a message of the other side
(queued, at most :data:`MAX_INBOX`), a pong, an error. The codec, with its
limits, is :mod:`.mailbox_wire`. Every failure is one of the typed errors of
:mod:`p2pinvite.errors` (``Rendezvous*``, ``Mailbox*``), naming the URL and
never the mailbox id.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Final

import trio
import trio_websocket

from ..errors import (
    DecodeError,
    LocalProtocolError,
    MailboxCrowded,
    MailboxServerError,
    RendezvousError,
    RendezvousProtocolError,
    RendezvousTimeout,
    RendezvousUnreachable,
)
from .mailbox_wire import (
    MAX_SERVER_MESSAGE,
    Ack,
    Closed,
    ErrorReply,
    Ignored,
    Message,
    Mood,
    Pong,
    ServerMessage,
    Welcome,
    check_mailbox_url,
    decode_server_message,
    encode_add,
    encode_bind,
    encode_close,
    encode_open,
    encode_ping,
)
from .names import APPID

__all__ = ["DEFAULT_TIMEOUT", "MAX_INBOX", "MailboxSession", "Message", "open_mailbox"]

#: Seconds to connect and open a mailbox, and for each ``add`` and ``close``.
DEFAULT_TIMEOUT: Final = 10.0
#: Messages of the other side queued and not yet received; more is a flood (an error).
MAX_INBOX: Final = 64
#: Longest wait for the server to answer our WebSocket close frame.
_CLOSE_GRACE: Final = 2.0
#: Frames trio-websocket buffers before it stops reading (and answering pings).
_WS_QUEUE: Final = 16


def _new_id() -> str:
    return secrets.token_hex(8)


class MailboxSession:
    """One open mailbox on one WebSocket connection. Made by :func:`open_mailbox`.

    ``add`` stores a message; ``receive`` (or ``async for``) returns the other
    side's messages, in the server's order, starting with those stored before
    we opened. Our own messages, and those of any other connection bound to
    our side, are never returned. Safe to use from several tasks.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection, *, url: str, mailbox_id: str,
                 side: str, timeout: float) -> None:
        self._ws = ws
        self._url = url
        self._mailbox_id = mailbox_id
        self._side = side
        self._timeout = timeout
        self._inbox: deque[Message] = deque()
        self._awaiting_echo: set[str] = set()
        self._echoed: set[str] = set()
        self._pongs: set[int] = set()
        self._welcome: Welcome | None = None
        self._closed_reply = False
        self._closing = False
        self._failure: RendezvousError | None = None
        self._reading = False
        self._progress = trio.Event()

    def __repr__(self) -> str:  # the mailbox id is a capability: not shown
        return f"<MailboxSession {self._url} side={self._side}>"

    @property
    def url(self) -> str:
        """The mailbox server's URL."""
        return self._url

    @property
    def side(self) -> str:
        """The side this connection is bound to."""
        return self._side

    @property
    def motd(self) -> str | None:
        """The server's message of the day, if its welcome had one (sanitised)."""
        return None if self._welcome is None else self._welcome.motd

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the session can no longer be used)."""
        return self._closing

    # --- public API -------------------------------------------------------------------------

    async def add(self, phase: str, body: bytes) -> None:
        """Store *body* under *phase*; return once the server has stored it.

        Raises :class:`~p2pinvite.errors.RendezvousTimeout` when the server
        does not confirm within the session's timeout (the message may or may
        not be stored), and the session's failure if it has one.
        """
        self._check_open()
        msg_id = _new_id()
        frame = encode_add(phase, body, msg_id)
        self._awaiting_echo.add(msg_id)
        try:
            with self._deadline(self._timeout, "store a message"):
                await self._send(frame)
                await self._pump_until(lambda: msg_id in self._echoed)
        finally:
            self._awaiting_echo.discard(msg_id)
            self._echoed.discard(msg_id)

    async def receive(self, *, timeout: float | None = None) -> Message:
        """The next message of the other side (waiting up to *timeout* seconds, or forever)."""
        self._check_open()
        with self._deadline(timeout, "deliver a message from the other side"):
            await self._pump_until(lambda: bool(self._inbox))
        return self._inbox.popleft()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        if self._closing:
            raise StopAsyncIteration
        return await self.receive()

    async def close(self, mood: Mood = "happy") -> None:
        """Leave the mailbox with *mood* and wait for the server's ``closed``.

        The server deletes a mailbox, messages and all, once every side that
        opened it has closed it. Idempotent; the session cannot be used after.
        """
        if self._closing:
            return
        frame = encode_close(self._mailbox_id, mood, _new_id())
        self._closing = True
        with self._deadline(self._timeout, "confirm the close"):
            await self._send(frame)
            await self._pump_until(lambda: self._closed_reply)

    # --- opening ----------------------------------------------------------------------------

    async def _open(self, frames: list[str], ping: int) -> None:
        """Welcome; bind, open, ping (*frames*); return once the pong proves the open worked."""
        await self._pump_until(lambda: self._welcome is not None)
        for frame in frames:
            await self._send(frame)
        await self._pump_until(lambda: ping in self._pongs)

    # --- the reader -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise LocalProtocolError("this mailbox session is closed")

    @contextlib.contextmanager
    def _deadline(self, timeout: float | None, what: str) -> Iterator[None]:
        if timeout is None:
            yield
            return
        try:
            with trio.fail_after(timeout):
                yield
        except trio.TooSlowError:
            raise RendezvousTimeout(f"the mailbox at {self._url} did not {what} within "
                                    f"{timeout:g} s", service=self._url) from None

    def _fail(self, error: RendezvousError) -> RendezvousError:
        if self._failure is None:
            self._failure = error
        return self._failure

    async def _send(self, frame: str) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            await self._ws.send_message(frame)
        except trio_websocket.ConnectionClosed:
            raise self._fail(RendezvousUnreachable(
                f"the connection to the mailbox at {self._url} was closed",
                service=self._url)) from None

    async def _pump_until(self, done: Callable[[], bool]) -> None:
        """Read and file server frames until *done()*; one reader at a time."""
        while not done():
            if self._failure is not None:
                raise self._failure
            if self._reading:  # another task reads: wait until it filed a frame (or gave up)
                await self._progress.wait()
                continue
            self._reading = True
            try:
                self._file(await self._read())
            finally:
                self._reading = False
                progress, self._progress = self._progress, trio.Event()
                progress.set()

    async def _read(self) -> ServerMessage:
        try:
            frame = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            if exc.reason is not None and exc.reason.code == 1009:
                raise self._fail(RendezvousProtocolError(
                    f"the mailbox at {self._url} sent a message larger than "
                    f"{MAX_SERVER_MESSAGE} characters", service=self._url)) from None
            raise self._fail(RendezvousUnreachable(
                f"the mailbox at {self._url} closed the connection",
                service=self._url)) from None
        try:
            return decode_server_message(frame)
        except DecodeError as exc:
            raise self._fail(RendezvousProtocolError(
                f"the mailbox at {self._url} sent garbage: {exc}", service=self._url)) from None

    def _file(self, msg: ServerMessage) -> None:
        """Record what one server message means for the waiting calls."""
        url = self._url
        if isinstance(msg, Welcome):
            if self._welcome is not None:
                raise self._fail(RendezvousProtocolError(
                    f"the mailbox at {url} sent a second welcome", service=url))
            if msg.error is not None:
                raise self._fail(MailboxServerError(
                    f"the mailbox at {url} refuses service: {msg.error}", service=url,
                    error=msg.error))
            self._welcome = msg
            return
        if self._welcome is None:
            raise self._fail(RendezvousProtocolError(
                f"the mailbox at {url} did not start with a welcome", service=url))
        if isinstance(msg, Message):
            if msg.side != self._side:
                if len(self._inbox) >= MAX_INBOX:
                    raise self._fail(RendezvousProtocolError(
                        f"the mailbox at {url} sent more than {MAX_INBOX} unread messages",
                        service=url))
                self._inbox.append(msg)
            elif msg.id is not None and msg.id in self._awaiting_echo:
                self._echoed.add(msg.id)
            # else: ours from an earlier connection, or another connection of our side
        elif isinstance(msg, Pong):
            self._pongs.add(msg.pong)
        elif isinstance(msg, Closed):
            self._closed_reply = True
        elif isinstance(msg, ErrorReply):
            if msg.error == "crowded":
                raise self._fail(MailboxCrowded(
                    f"the mailbox at {url} already has two other sides (crowded)", service=url))
            raise self._fail(MailboxServerError(
                f"the mailbox at {url} refused our {msg.orig_type or 'message'}: {msg.error}",
                service=url, error=msg.error))
        else:
            assert isinstance(msg, Ack | Ignored)  # nothing to do

    async def _disconnect(self) -> None:
        """Close the WebSocket, waiting at most a short grace for the server's answer."""
        with trio.move_on_after(min(self._timeout, _CLOSE_GRACE)) as scope:
            scope.shield = True
            await self._ws.aclose()


@asynccontextmanager
async def open_mailbox(url: str, mailbox_id: str, *, side: str | None = None,
                       appid: str = APPID,
                       timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[MailboxSession]:
    """Connect to the mailbox server at *url* and open *mailbox_id* as *side*.

    *side* should be the fixed side of our role (:meth:`RendezvousNames.side`):
    the server refuses a third side for the life of the mailbox, so a party
    that comes back must come back as the same side. ``None`` draws a random
    one (a one-shot exchange only). *timeout* bounds connecting and opening,
    and each later ``add`` and ``close``.

    On leaving the block normally the mailbox is closed (mood ``happy``)
    unless :meth:`MailboxSession.close` was called; on an exception the
    connection is dropped without a ``close``. Raises
    :class:`~p2pinvite.errors.RendezvousAddressError` for a bad URL,
    :class:`~p2pinvite.errors.RendezvousUnreachable` when no connection can be
    made, :class:`~p2pinvite.errors.RendezvousTimeout` when the server does not
    answer in time, :class:`~p2pinvite.errors.MailboxCrowded`,
    :class:`~p2pinvite.errors.MailboxServerError` and
    :class:`~p2pinvite.errors.RendezvousProtocolError`.
    """
    check_mailbox_url(url)
    if side is None:
        side = os.urandom(8).hex()
    # Encode the opening first: a bad argument is our bug, found before any traffic.
    ping = secrets.randbelow(2**31)
    opening = [encode_bind(appid, side, _new_id()), encode_open(mailbox_id, _new_id()),
               encode_ping(ping, _new_id())]
    deadline = trio.current_time() + timeout
    connected = False
    # trio-websocket's own connect_timeout raises, but then waits for its reader
    # task, which waits for the server: a server that accepts TCP and never
    # answers the upgrade would hang us. Our own deadline cancels both; once
    # connected it is lifted, and the session's own deadlines take over.
    with trio.CancelScope(deadline=deadline) as connecting:
        try:
            async with trio_websocket.open_websocket_url(
                    url, connect_timeout=timeout + _CLOSE_GRACE,
                    disconnect_timeout=min(timeout, _CLOSE_GRACE),
                    max_message_size=MAX_SERVER_MESSAGE, message_queue_size=_WS_QUEUE) as ws:
                connected = True
                connecting.deadline = math.inf
                session = MailboxSession(ws, url=url, mailbox_id=mailbox_id, side=side,
                                         timeout=timeout)
                try:
                    with session._deadline(max(deadline - trio.current_time(), 0.0),
                                           "open the mailbox"):
                        await session._open(opening, ping)
                    yield session
                    if session._failure is None:
                        await session.close("happy")
                except BaseException:
                    # Cancelled (a join that ended) or failed: nobody reads the
                    # server's answer to a close any more, so waiting for it
                    # would only cost the grace. Drop the connection now.
                    await trio.aclose_forcefully(ws)
                    raise
                else:
                    await session._disconnect()
        except Exception as exc:
            # Once connected, errors are ours or the caller's (we closed the WebSocket
            # ourselves, so trio-websocket's own close has nothing left to fail).
            if connected:
                raise
            raise _connect_error(url, timeout, exc) from None
    if connecting.cancelled_caught and not connected:
        raise RendezvousTimeout(f"the mailbox at {url} did not answer within {timeout:g} s",
                                service=url)


def _connect_error(url: str, timeout: float, exc: Exception) -> RendezvousError:
    """Our error for what trio-websocket raised before the upgrade completed."""
    if not isinstance(exc, trio_websocket.HandshakeError):
        # An HTTP answer trio-websocket cannot parse escapes from it (0.12.2) as h11's or
        # wsproto's own errors, not as a HandshakeError.
        return RendezvousProtocolError(f"the server at {url} broke the WebSocket handshake",
                                       service=url)
    if isinstance(exc, trio_websocket.ConnectionTimeout):
        return RendezvousTimeout(f"the mailbox at {url} did not answer within {timeout:g} s",
                                 service=url)
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return RendezvousProtocolError(f"the server at {url} refused the WebSocket upgrade "
                                       f"(HTTP {exc.status_code})", service=url)
    cause = exc.__cause__
    why = (str(cause) or type(cause).__name__) if isinstance(cause, OSError) else "failed"
    return RendezvousUnreachable(f"cannot connect to the mailbox at {url}: {why}", service=url)
