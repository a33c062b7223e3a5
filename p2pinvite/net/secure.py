"""A Noise-encrypted trio stream: the thin driver around :mod:`p2pinvite.crypto.noise`.

Theory of operation
-------------------
:func:`open_secure_stream` runs one Noise ``XX`` (or ``XXpsk0``) handshake
over any :class:`trio.abc.Stream` under a single deadline, then returns a
:class:`SecureStream`. Every Noise message travels as a frame: a 2-byte
big-endian length, then the message (docs/PROTOCOL.md Part 5 has the exact
bytes).

After the handshake the stream carries a *byte stream*: ``send_all`` cuts the
bytes into transport messages of at most 65519 plaintext bytes and
``receive_some`` returns decrypted bytes with no boundaries. On top of that
byte stream ``send_message`` / ``receive_message`` put a 4-byte big-endian
length before each application message, so message boundaries survive the
chunking. A transport message with an *empty* plaintext is the authenticated
end-of-stream marker (``send_eof``/``aclose`` send it); an EOF of the
transport without it is reported as a broken connection, so an attacker who
cuts the TCP connection cannot pass a truncated stream off as complete.

The stream follows trio's stream contract (``trio.testing.check_half_closeable_stream``
passes): concurrent ``send_all`` / ``receive_some`` raise
:class:`trio.BusyResourceError`, using a stream after *we* closed it raises
:class:`trio.ClosedResourceError`, and a transport that breaks or ends raises
:class:`ConnectionBroken` -- both a :class:`~p2pinvite.errors.ConnectionClosed`
and a :class:`trio.BrokenResourceError`. A peer that sends garbage, replays
or reorders ciphertext gets its connection closed and the reader sees the
typed error (:class:`~p2pinvite.errors.BadTag`,
:class:`~p2pinvite.errors.DecodeError`); the stream stays dead afterwards.

``send_message`` (unlike ``send_all``) may be called from several tasks at
once: whole messages go out in FIFO order under a :class:`trio.StrictFIFOLock`.
"""

from __future__ import annotations

import operator
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

import trio

from ..crypto.noise import MAX_MESSAGE, MAX_PLAINTEXT, TAG, HandshakeState, NoiseTransport
from ..errors import (
    ConnectionClosed,
    DecodeError,
    FrameTooLarge,
    HandshakeError,
    HandshakeTimeout,
    LocalProtocolError,
    P2PInviteError,
)
from ..wire import frame

__all__ = [
    "MAX_APP_MESSAGE",
    "MAX_HANDSHAKE_PAYLOAD",
    "PROLOGUE_PREFIX",
    "PROTOCOL_XX",
    "PROTOCOL_XXPSK0",
    "ConnectionBroken",
    "MessageTooLarge",
    "PeerCheck",
    "SecureStream",
    "full_prologue",
    "open_secure_stream",
]

PROTOCOL_XX: Final = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
#: With a PSK it is mixed in first (``psk0``): every key of the handshake depends on
#: it, so a responder learns at message 1 whether the initiator holds it and
#: never reveals its static key (message 2) to one that does not.
PROTOCOL_XXPSK0: Final = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
#: Every prologue starts with this: our protocol and its version.
PROLOGUE_PREFIX: Final = b"p2pinvite/1\x00"
#: Largest application message of send_message / receive_message (1 MiB).
MAX_APP_MESSAGE: Final = 1 << 20
#: Largest handshake payload: what fits XX message 2 (65535 - e - s+tag - tag).
MAX_HANDSHAKE_PAYLOAD: Final = MAX_MESSAGE - 32 - (32 + TAG) - TAG

# Large reads amortize the per-call cost of trio and the kernel.
_RECEIVE_SIZE: Final = 256 * 1024
# A reader that needs less still reads up to one whole framed Noise message,
# so pipelined small messages cost one read, and what it buffers beyond its
# need stays within one frame.
_MIN_READ: Final = 2 + MAX_MESSAGE
# A long send_all is sealed and written this many Noise messages at a time,
# so memory stays bounded (~1 MiB) whatever the caller passes.
_SEND_BATCH: Final = 16
# aclose() tries this long to deliver the end-of-stream marker.
_CLOSE_NOTIFY_TIMEOUT: Final = 2.0
_LEN4: Final = struct.Struct(">I")
_LEN2: Final = struct.Struct(">H")
_FRAME_OVERHEAD: Final = 2 + TAG

#: Called with the peer's static public key and handshake payload as soon as the
#: peer's last handshake message has been read, before we write ours (if any);
#: raising aborts the handshake (the transport is closed, the error propagates).
PeerCheck: TypeAlias = Callable[[bytes, bytes], None]


class ConnectionBroken(ConnectionClosed, trio.BrokenResourceError):
    """The connection broke or ended without the authenticated end marker.

    A :class:`~p2pinvite.errors.ConnectionClosed` for our code and a
    :class:`trio.BrokenResourceError` for code written to trio's stream API.
    """


class MessageTooLarge(LocalProtocolError, FrameTooLarge):
    """``send_message`` was given more than :data:`MAX_APP_MESSAGE` bytes (a bug here).

    Also a :class:`~p2pinvite.errors.FrameTooLarge`, the type the peer's
    oversized messages raise on receive.
    """


def full_prologue(protocol_name: str, prologue: bytes = b"") -> bytes:
    """The Noise prologue: ``b"p2pinvite/1\\0" + protocol_name + b"\\0" + prologue``."""
    return PROLOGUE_PREFIX + protocol_name.encode("ascii") + b"\x00" + bytes(prologue)


async def open_secure_stream(
    transport: trio.abc.Stream,
    *,
    initiator: bool,
    static_key: bytes,
    psk: bytes | None = None,
    prologue: bytes = b"",
    payload: bytes = b"",
    timeout: float = 10.0,
    lead: bytes = b"",
    check_peer: PeerCheck | None = None,
) -> SecureStream:
    """Run the Noise handshake over *transport* and return the secure stream.

    *static_key* is our 32-byte X25519 private key. With *psk* (32 bytes)
    the handshake is ``XXpsk0`` and only a peer holding the same PSK can
    get past its first message; without, ``XX``. *prologue* is extra context the caller binds
    into the handshake (both sides must pass the same bytes). *payload* (at
    most :data:`MAX_HANDSHAKE_PAYLOAD` bytes) is sent encrypted in the last
    handshake message this side writes: message 2 for the responder, message
    3 for the initiator; the peer's arrives as
    :attr:`SecureStream.remote_payload`.

    *lead* (initiator only) is plaintext sent in the same write as the first
    handshake message, e.g. a connection preamble: one segment, one wake-up
    of the peer.

    *check_peer* sees the peer's static key and payload as soon as they are
    known: for the initiator after message 2, before its own message 3, so a
    dialer that does not want this peer (the wrong host, a peer it already
    has a connection to) aborts without ever completing the handshake.

    The whole handshake must finish within *timeout* seconds, else
    :class:`~p2pinvite.errors.HandshakeTimeout`. On any failure the transport
    is closed and a typed :class:`~p2pinvite.errors.P2PInviteError` raised:
    ``HandshakeAuthFailed`` (wrong PSK, tampering), ``DecodeError`` (truncated
    or malformed messages), ``InvalidPoint``, ``ConnectionClosed``.

    With XX the initiator finishes first: if the responder then refuses its
    last message (e.g. a wrong PSK), the initiator learns it on its first
    receive, as :class:`ConnectionBroken`.
    """
    try:
        name = PROTOCOL_XX if psk is None else PROTOCOL_XXPSK0
        if lead and not initiator:
            raise LocalProtocolError("only the initiator writes first")
        if len(payload) > MAX_HANDSHAKE_PAYLOAD:
            raise LocalProtocolError(
                f"handshake payload of {len(payload)} bytes exceeds {MAX_HANDSHAKE_PAYLOAD}"
            )
        hs = HandshakeState(
            name,
            initiator=initiator,
            prologue=full_prologue(name, prologue),
            s=static_key,
            psks=() if psk is None else (psk,),
        )
        with trio.fail_after(timeout):
            remote_payload = await _handshake(transport, hs, bytes(payload), lead, check_peer)
    except trio.TooSlowError:
        await trio.aclose_forcefully(transport)
        raise HandshakeTimeout(f"handshake not completed within {timeout} s") from None
    except BaseException:
        await trio.aclose_forcefully(transport)
        raise
    return SecureStream(transport, hs, remote_payload=remote_payload, protocol_name=name)


async def _handshake(transport: trio.abc.Stream, hs: HandshakeState, payload: bytes,
                     lead: bytes, check_peer: PeerCheck | None) -> bytes:
    """Exchange every handshake message, *lead* first; return the peer's payload."""
    n = hs.message_count
    mine = [i for i in range(n) if (i % 2 == 0) == hs.initiator]
    theirs = [i for i in range(n) if (i % 2 == 0) != hs.initiator]
    remote_payload = b""
    for i in range(n):
        if hs.our_turn:
            msg = hs.write_message(payload if i == mine[-1] else b"")
            try:
                await transport.send_all(lead + frame(msg) if i == 0 else frame(msg))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionClosed(f"connection lost during the handshake: {exc}") from None
        else:
            p = hs.read_message(await _read_handshake_frame(transport))
            if i == theirs[-1]:
                remote_payload = p
                if check_peer is not None:
                    assert hs.remote_static is not None  # XX: known after message 2
                    check_peer(hs.remote_static, p)
            elif p:
                # Only the last message of each side carries a payload; an
                # early one would travel with weaker protection.
                raise HandshakeError(f"unexpected payload in handshake message {i + 1}")
    return remote_payload


async def _read_handshake_frame(transport: trio.abc.Stream) -> bytes:
    # Exact reads: nothing past the last handshake message is consumed, so
    # the transport phase starts from a clean stream.
    (n,) = _LEN2.unpack(await _receive_exactly(transport, 2))
    return await _receive_exactly(transport, n)


async def _receive_exactly(transport: trio.abc.Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            data = await transport.receive_some(n - len(buf))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionClosed(f"connection lost during the handshake: {exc}") from None
        if not data:
            raise ConnectionClosed("peer closed the connection during the handshake")
        buf += data
    return bytes(buf)


class _SendTurn:
    """A FIFO mutex for the send side that costs almost nothing when uncontended.

    ``trio.StrictFIFOLock`` spends about a microsecond per acquire + release
    (owner tracking, deadlock detection), a few percent of sending a 16 KiB
    message. Here the fast path is one attribute; waiters queue in a
    :class:`trio.lowlevel.ParkingLot` (FIFO, cancellation-safe) and
    :meth:`release` hands the turn straight to the first of them, so a new
    arrival can never overtake a waiter.
    """

    __slots__ = ("_lot", "held")

    def __init__(self) -> None:
        self.held = False
        self._lot = trio.lowlevel.ParkingLot()

    def try_take(self) -> bool:
        """Take the turn if it is free (no checkpoint)."""
        if self.held:
            return False
        self.held = True
        return True

    async def wait(self) -> None:
        """Wait until the turn is handed to us (the caller saw it held)."""
        await self._lot.park()

    async def acquire(self) -> None:
        """Take the turn, waiting if needed; a checkpoint either way, like trio's locks."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.try_take():
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await self.wait()

    def release(self) -> None:
        """Hand the turn to the first waiter, or free it."""
        if not self._lot.unpark():
            self.held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class _ByteQueue:
    """Decrypted bytes waiting to be read, kept as the chunks they arrived in.

    Taking a whole chunk costs nothing; taking across chunks joins once. That
    keeps a 64 KiB message split over two Noise messages to a single copy.
    """

    __slots__ = ("_chunks", "_off", "size")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._off = 0  # bytes of _chunks[0] already taken
        self.size = 0

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.size += len(chunk)

    def clear(self) -> None:
        self._chunks.clear()
        self._off = 0
        self.size = 0

    def drop(self, n: int) -> None:
        """Discard exactly *n* bytes (the caller checked ``n <= size``)."""
        self.size -= n
        while n:
            avail = len(self._chunks[0]) - self._off
            if avail <= n:
                self._chunks.popleft()
                self._off = 0
                n -= avail
            else:
                self._off += n
                n = 0

    def take_first(self, max_bytes: int | None) -> bytes:
        """Up to *max_bytes* from the first chunk (all of it if None)."""
        first, off = self._chunks[0], self._off
        avail = len(first) - off
        n = avail if max_bytes is None else min(avail, max_bytes)
        return self.take(n)

    def take(self, n: int) -> bytes:
        """Exactly *n* bytes (the caller checked ``n <= size``)."""
        self.size -= n
        parts: list[bytes | memoryview] = []
        while n:
            chunk, off = self._chunks[0], self._off
            avail = len(chunk) - off
            if avail <= n:
                parts.append(chunk if off == 0 else memoryview(chunk)[off:])
                self._chunks.popleft()
                self._off = 0
                n -= avail
            else:
                parts.append(memoryview(chunk)[off : off + n])
                self._off = off + n
                n = 0
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def peek_u32(self) -> int:
        """The big-endian 4-byte integer at the front (the caller checked ``size >= 4``)."""
        chunk, off = self._chunks[0], self._off
        if len(chunk) - off >= 4:
            return int(_LEN4.unpack_from(chunk, off)[0])
        head = bytearray()
        for c in self._chunks:
            head += c[off : off + 4]
            off = 0
            if len(head) >= 4:
                break
        return int(_LEN4.unpack_from(head)[0])


class SecureStream(trio.abc.HalfCloseableStream):
    """An established Noise session over a trio stream.

    Built by :func:`open_secure_stream`, not directly. Attributes:
    ``handshake_hash`` (channel binding for later authentication steps),
    ``remote_static`` (the peer's X25519 static public key), ``remote_payload``
    (the peer's handshake payload), ``protocol_name`` and ``transport`` (the
    underlying stream, e.g. to read the peer's address).
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        handshake: HandshakeState,
        *,
        remote_payload: bytes,
        protocol_name: str,
    ) -> None:
        rs = handshake.remote_static
        if not handshake.complete or rs is None:
            raise LocalProtocolError("SecureStream needs a completed handshake")
        self.transport = transport
        self.protocol_name = protocol_name
        self.handshake_hash = handshake.handshake_hash
        self.remote_static = rs
        self.remote_payload = remote_payload
        self._noise: NoiseTransport = handshake.transport()
        self._rbuf = bytearray()  # a partial frame, between reads
        self._plain = _ByteQueue()
        self._send_lock = _SendTurn()
        self._receiving = False
        self._closed = False  # aclose() was called on *this* stream
        self._eof_sent = False
        self._eof_received = False
        self._send_failure: str | None = None
        self._recv_failure: str | None = None
        # An error found after some good frames of the same read: raised once
        # those frames' plaintext has been delivered.
        self._pending_error: P2PInviteError | None = None

    def __repr__(self) -> str:
        return (f"<SecureStream {self.protocol_name} peer={self.remote_static.hex()[:16]}"
                f" closed={self._closed}>")

    # -- sending ------------------------------------------------------------

    def _seal(self, pieces: list[bytes | memoryview]) -> bytearray:
        """Encrypt each plaintext piece as one framed Noise message, into one buffer."""
        out = bytearray(sum(len(p) for p in pieces) + len(pieces) * _FRAME_OVERHEAD)
        omv = memoryview(out)
        encrypt_into = self._noise.encrypt_into
        pos = 0
        for pt in pieces:
            clen = len(pt) + TAG
            _LEN2.pack_into(out, pos, clen)
            encrypt_into(pt, omv[pos + 2 : pos + 2 + clen])
            pos += 2 + clen
        return out

    async def _write(self, wire: bytes | bytearray) -> None:
        """Write sealed bytes; any interruption leaves the send side unusable."""
        try:
            await self.transport.send_all(wire)
        except trio.ClosedResourceError:
            self._send_failure = "transport closed"
            if self._closed:
                raise trio.ClosedResourceError("stream was closed") from None
            raise ConnectionBroken("connection closed") from None
        except trio.BrokenResourceError as exc:
            self._send_failure = f"connection broken: {exc}"
            raise ConnectionBroken(self._send_failure) from None
        except BaseException:
            # Cancelled mid-write: ciphertext may be half-sent and the nonce
            # has advanced, so nothing sent afterwards could be decrypted.
            self._send_failure = "an earlier send was interrupted"
            raise

    def _check_can_send(self) -> None:
        if self._closed or self._eof_sent:
            raise trio.ClosedResourceError("stream was closed for sending")
        if self._send_failure is not None:
            raise ConnectionBroken(self._send_failure)

    async def _send_bytes(self, prefix: bytes, data: memoryview) -> None:
        """Send ``prefix + data`` as Noise messages; the caller holds the send lock.

        The *first* message takes the remainder, so only ``prefix`` plus that
        remainder is copied and every later piece is a view of *data*: a
        64 KiB message goes out as 21 + 65519 plaintext bytes, copying 21.
        """
        self._check_can_send()
        count = max(1, -(-(len(prefix) + len(data)) // MAX_PLAINTEXT))
        head = len(data) - (count - 1) * MAX_PLAINTEXT
        pieces: list[bytes | memoryview] = [prefix + data[:head] if prefix else data[:head]]
        for off in range(head, len(data), MAX_PLAINTEXT):
            if len(pieces) == _SEND_BATCH:
                await self._write(self._seal(pieces))
                pieces = []
            pieces.append(data[off : off + MAX_PLAINTEXT])
        await self._write(self._seal(pieces))

    async def _acquire_send(self, *, wait: bool) -> None:
        # The transport write that follows is the checkpoint; taking a free
        # lock without yielding saves a trip through the scheduler per send.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._send_lock.try_take():
            return
        if wait:
            await self._send_lock.wait()
        else:
            raise trio.BusyResourceError("another task is sending on this stream")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send *data* (any length; split into Noise messages)."""
        await self._acquire_send(wait=False)
        try:
            self._check_can_send()
            if len(data):
                await self._send_bytes(b"", memoryview(data).cast("B"))
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._send_lock.release()

    async def send_message(self, data: bytes | bytearray | memoryview) -> None:
        """Send one application message (at most :data:`MAX_APP_MESSAGE` bytes).

        Safe to call from several tasks: messages are sent whole, in FIFO order.
        """
        mv = memoryview(data).cast("B")
        if len(mv) > MAX_APP_MESSAGE:
            raise MessageTooLarge(
                f"message of {len(mv)} bytes exceeds the limit of {MAX_APP_MESSAGE}"
            )
        await self._acquire_send(wait=True)
        try:
            await self._send_bytes(_LEN4.pack(len(mv)), mv)
        finally:
            self._send_lock.release()

    async def send_messages(self, messages: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send several application messages, in order, with one transport write.

        For a protocol step that answers with more than one message: the
        peer gets them in one segment and one wake-up. Each message is framed
        exactly as :meth:`send_message` frames it.
        """
        views = [memoryview(m).cast("B") for m in messages]
        if any(len(v) > MAX_APP_MESSAGE for v in views):
            raise MessageTooLarge(f"a message exceeds the limit of {MAX_APP_MESSAGE}")
        if len(views) == 1 or any(len(v) + _LEN4.size > MAX_PLAINTEXT for v in views):
            for v in views:  # one, or large: send_message splits them as needed
                await self.send_message(v)
            return
        await self._acquire_send(wait=True)
        try:
            self._check_can_send()
            await self._write(self._seal([_LEN4.pack(len(v)) + v for v in views]))
        finally:
            self._send_lock.release()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until :meth:`send_all` might not block (delegated to the transport)."""
        if self._send_lock.held:
            raise trio.BusyResourceError("another task is sending on this stream")
        async with self._send_lock:
            self._check_can_send()
            try:
                await self.transport.wait_send_all_might_not_block()
            except trio.ClosedResourceError:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed") from None
                raise ConnectionBroken("connection closed") from None
            except trio.BrokenResourceError as exc:
                raise ConnectionBroken(f"connection broken: {exc}") from None

    async def send_eof(self) -> None:
        """Send the authenticated end-of-stream marker; receiving still works."""
        if self._send_lock.held:
            raise trio.BusyResourceError("another task is sending on this stream")
        async with self._send_lock:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            if self._eof_sent:
                return
            if self._send_failure is not None:
                raise ConnectionBroken(self._send_failure)
            self._eof_sent = True
            await self._write(frame(self._noise.encrypt(b"")))

    # -- receiving ----------------------------------------------------------

    async def _fail(self, exc: P2PInviteError, *, discard: bool = False) -> P2PInviteError:
        """The peer broke the protocol: remember it, drop the connection."""
        self._recv_failure = f"{type(exc).__name__}: {exc}"
        if discard:
            self._plain.clear()
        await trio.aclose_forcefully(self.transport)
        return exc

    async def _fill(self, want: int = _RECEIVE_SIZE) -> None:
        """Read once from the transport (at most *want* bytes); decrypt every complete frame.

        A reader that knows how much it still needs passes it, so what a peer
        can make us buffer stays within that plus one partial frame.
        """
        if self._pending_error is not None:
            exc, self._pending_error = self._pending_error, None
            raise exc
        if self._recv_failure is not None:
            raise ConnectionBroken(f"stream failed earlier ({self._recv_failure})")
        try:
            data = await self.transport.receive_some(min(max(want, _MIN_READ), _RECEIVE_SIZE))
        except trio.ClosedResourceError:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed") from None
            raise await self._fail(ConnectionBroken("connection closed")) from None
        except trio.BrokenResourceError as exc:
            raise await self._fail(ConnectionBroken(f"connection broken: {exc}")) from None
        if not data:
            raise await self._fail(
                ConnectionBroken("connection ended without the end-of-stream marker")
            )
        before = self._plain.size
        try:
            self._parse(data)
        except P2PInviteError as exc:
            self._rbuf = bytearray()
            await self._fail(exc)
            if self._plain.size > before:
                self._pending_error = exc
                return
            raise

    def _parse(self, data: bytes | bytearray) -> None:
        """Decrypt every complete frame of *data* (after any partial frame kept from before).

        Frames are decrypted straight from the received buffer; only a frame
        that straddles two reads is assembled in ``_rbuf`` (one copy). The
        assembly appends, so a peer trickling bytes costs linear time.
        """
        mv = memoryview(data)
        end = len(data)
        pos = 0
        rb = self._rbuf
        if rb:
            if len(rb) < 2:
                pos = min(2 - len(rb), end)
                rb += mv[:pos]
                if len(rb) < 2:
                    return
            need = 2 + ((rb[0] << 8) | rb[1]) - len(rb)
            take = min(need, end - pos)
            rb += mv[pos : pos + take]
            pos += take
            if take < need:
                return
            self._rbuf = bytearray()
            if self._open(memoryview(rb)[2:]):
                return
        # The loop below is the receive hot path: no calls but the decrypt.
        decrypt, append = self._noise.decrypt, self._plain.append
        while end - pos >= 2:
            stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
            if stop > end:
                break
            pt = decrypt(mv[pos + 2 : stop])
            if not pt:
                self._eof_received = True  # anything after it is ignored
                return
            append(pt)
            pos = stop
        if pos < end:
            self._rbuf = bytearray(mv[pos:])

    def _open(self, ciphertext: memoryview) -> bool:
        """Decrypt one transport message; True at the end-of-stream marker."""
        pt = self._noise.decrypt(ciphertext)
        if not pt:
            self._eof_received = True  # anything after it is ignored
            return True
        self._plain.append(pt)
        return False

    def _enter_receive(self) -> None:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return decrypted bytes (at most *max_bytes*); ``b""`` after the peer's end marker."""
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        self._enter_receive()
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            yielded = False
            while not self._plain.size and not self._eof_received:
                await self._fill()
                yielded = True
            out = self._plain.take_first(max_bytes) if self._plain.size else b""
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return out
        finally:
            self._receiving = False

    async def receive_message(self, max_size: int = MAX_APP_MESSAGE) -> bytes:
        """Return the next whole application message, of at most *max_size* bytes.

        Raises :class:`~p2pinvite.errors.ConnectionClosed` when the peer ended
        the stream between messages, :class:`~p2pinvite.errors.DecodeError`
        when it ended inside one and :class:`~p2pinvite.errors.FrameTooLarge`
        for a length above *max_size* (at most :data:`MAX_APP_MESSAGE`; the
        connection is dropped). A protocol passes its own limit, so a peer
        cannot make us buffer more than that limit plus two Noise messages
        (one read past the need, one partial frame): about *max_size* + 128 KiB.
        """
        if not 0 <= max_size <= MAX_APP_MESSAGE:
            raise LocalProtocolError(f"max_size must be 0..{MAX_APP_MESSAGE}")
        self._enter_receive()
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            plain = self._plain
            yielded = False
            while plain.size < 4:
                if self._eof_received:
                    if plain.size:
                        raise await self._fail(DecodeError("stream ended inside a message"),
                                              discard=True)
                    raise ConnectionClosed("peer closed the stream")
                await self._fill(4 - plain.size)
                yielded = True
            n = plain.peek_u32()
            if n > max_size:
                raise await self._fail(
                    FrameTooLarge(f"message of {n} bytes exceeds limit {max_size}"),
                    discard=True,
                )
            while plain.size < 4 + n:
                if self._eof_received:
                    raise await self._fail(DecodeError("stream ended inside a message"),
                                              discard=True)
                await self._fill(4 + n - plain.size)
                yielded = True
            plain.drop(4)
            out = plain.take(n)
            if not yielded:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return out
        finally:
            self._receiving = False

    # -- closing ------------------------------------------------------------

    async def aclose(self) -> None:
        """Send the end-of-stream marker (best effort, bounded), then close the transport."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if (not self._eof_sent and self._send_failure is None
                    and self._recv_failure is None and not self._send_lock.held):
                self._eof_sent = True
                with trio.move_on_after(_CLOSE_NOTIFY_TIMEOUT):
                    async with self._send_lock:
                        await self.transport.send_all(frame(self._noise.encrypt(b"")))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass  # the peer is gone already; closing is all that is left
        finally:
            await self.transport.aclose()
