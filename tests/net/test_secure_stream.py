"""The trio secure stream: stream contract, limits, hostile peers, real TCP."""

from __future__ import annotations

import os
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pinvite.crypto.noise import MAX_PLAINTEXT, HandshakeAuthFailed, public_key
from p2pinvite.errors import (
    BadTag,
    ConnectionClosed,
    DecodeError,
    FrameTooLarge,
    HandshakeError,
    HandshakeTimeout,
    InvalidKey,
    LocalProtocolError,
    P2PInviteError,
)
from p2pinvite.net.secure import (
    MAX_APP_MESSAGE,
    MAX_HANDSHAKE_PAYLOAD,
    PROTOCOL_XX,
    PROTOCOL_XXPSK0,
    ConnectionBroken,
    MessageTooLarge,
    SecureStream,
    full_prologue,
    open_secure_stream,
)
from p2pinvite.wire import FrameDecoder, frame

I_KEY = bytes(range(1, 33))
R_KEY = bytes(range(40, 72))
PSK = bytes(range(100, 132))

Transport = trio.abc.Stream


async def handshake_pair(
    a: Transport,
    b: Transport,
    *,
    psk_i: bytes | None = None,
    psk_r: bytes | None = None,
    prologue_i: bytes = b"",
    prologue_r: bytes = b"",
) -> tuple[SecureStream, SecureStream]:
    out: dict[str, SecureStream] = {}

    async def side(key: str, t: Transport, init: bool, psk: bytes | None, pro: bytes) -> None:
        out[key] = await open_secure_stream(
            t, initiator=init, static_key=I_KEY if init else R_KEY, psk=psk,
            prologue=pro, payload=f"payload from {key}".encode(),
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "i", a, True, psk_i, prologue_i)
        nursery.start_soon(side, "r", b, False, psk_r, prologue_r)
    return out["i"], out["r"]


def makers(psk: bytes | None) -> tuple[
    Callable[[], Awaitable[tuple[SecureStream, SecureStream]]],
    Callable[[], Awaitable[tuple[SecureStream, SecureStream]]],
]:
    async def maker() -> tuple[SecureStream, SecureStream]:
        return await handshake_pair(*trio.testing.memory_stream_pair(), psk_i=psk, psk_r=psk)

    async def clogged() -> tuple[SecureStream, SecureStream]:
        # lockstep: send_all blocks until the other side receives
        return await handshake_pair(*trio.testing.lockstep_stream_pair(), psk_i=psk, psk_r=psk)

    return maker, clogged


@pytest.mark.parametrize("psk", [None, PSK], ids=["XX", "XXpsk0"])
async def test_trio_stream_contract(psk: bytes | None) -> None:
    maker, clogged = makers(psk)
    with trio.fail_after(30):
        # a superset of check_two_way_stream and check_one_way_stream
        await trio.testing.check_half_closeable_stream(maker, clogged)


async def test_handshake_results() -> None:
    with trio.fail_after(5):
        i, r = await handshake_pair(*trio.testing.memory_stream_pair(), psk_i=PSK, psk_r=PSK)
    assert i.handshake_hash == r.handshake_hash
    assert len(i.handshake_hash) == 64
    assert i.remote_static == public_key(R_KEY)
    assert r.remote_static == public_key(I_KEY)
    assert i.remote_payload == b"payload from r"
    assert r.remote_payload == b"payload from i"
    assert i.protocol_name == r.protocol_name == PROTOCOL_XXPSK0
    assert isinstance(i.transport, trio.StapledStream)
    assert PSK.hex() not in repr(i)
    # different sessions, different bindings
    with trio.fail_after(5):
        i2, _ = await handshake_pair(*trio.testing.memory_stream_pair())
    assert i2.protocol_name == PROTOCOL_XX
    assert i2.handshake_hash != i.handshake_hash


def test_full_prologue_bytes() -> None:
    assert full_prologue(PROTOCOL_XX, b"ctx") == (
        b"p2pinvite/1\x00Noise_XX_25519_ChaChaPoly_BLAKE2b\x00ctx"
    )


async def test_large_send_all_is_rejoined() -> None:
    data = os.urandom(1_000_000)
    with trio.fail_after(10):
        i, r = await handshake_pair(*trio.testing.memory_stream_pair())
        got = bytearray()

        async def reader() -> None:
            while len(got) < len(data):
                chunk = await r.receive_some()
                assert chunk
                got.extend(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await i.send_all(data)
    assert got == data


@pytest.mark.parametrize(
    "size",
    [0, 1, MAX_PLAINTEXT - 4, MAX_PLAINTEXT - 3, MAX_PLAINTEXT, 2 * MAX_PLAINTEXT,
     16 * MAX_PLAINTEXT + 7, MAX_APP_MESSAGE - 1, MAX_APP_MESSAGE],
)
async def test_messages_keep_their_boundaries(size: int) -> None:
    msgs = [os.urandom(size), b"after", os.urandom(size // 3)]
    with trio.fail_after(10):
        i, r = await handshake_pair(*trio.testing.memory_stream_pair())
        async with trio.open_nursery() as nursery:

            async def sender() -> None:
                for m in msgs:
                    await i.send_message(m)

            nursery.start_soon(sender)
            got = [await r.receive_message() for _ in msgs]
    assert got == msgs


@pytest.mark.parametrize("sizes", [[5, 0, 300], [1], [10, MAX_PLAINTEXT - 4],
                                   [3, MAX_PLAINTEXT - 3, 7], [2 * MAX_PLAINTEXT, 1]])
async def test_send_messages_sends_a_batch_in_order(sizes: list[int]) -> None:
    msgs = [os.urandom(n) for n in sizes]
    with trio.fail_after(10):
        a, b = trio.testing.memory_stream_pair()
        writes: list[int] = []
        real = a.send_stream.send_all_hook

        async def count_writes() -> None:  # trio calls the hook once per send_all
            writes.append(1)
            if real is not None:
                await real()

        i, r = await handshake_pair(a, b)
        a.send_stream.send_all_hook = count_writes
        async with trio.open_nursery() as nursery:
            nursery.start_soon(i.send_messages, msgs)
            got = [await r.receive_message() for _ in msgs]
    assert got == msgs
    if all(n + 4 <= MAX_PLAINTEXT for n in sizes):
        assert len(writes) == 1  # one transport write for the whole batch
    with pytest.raises(MessageTooLarge):
        await i.send_messages([b"ok", b"\x00" * (MAX_APP_MESSAGE + 1)])


async def test_message_limits() -> None:
    with trio.fail_after(5):
        i, r = await handshake_pair(*trio.testing.memory_stream_pair())
        with pytest.raises(MessageTooLarge) as info:
            await i.send_message(b"\x00" * (MAX_APP_MESSAGE + 1))
        assert isinstance(info.value, FrameTooLarge)
        assert isinstance(info.value, LocalProtocolError)
        # the stream is still fine after a refused local send
        await i.send_message(b"ok")
        assert await r.receive_message() == b"ok"
        # the peer announces a message above the limit: typed error, connection dropped
        await i.send_all(struct.pack(">I", MAX_APP_MESSAGE + 1) + b"x" * 10)
        with pytest.raises(FrameTooLarge):
            await r.receive_message()
        with pytest.raises(ConnectionBroken):
            await r.receive_message()
        # the responder dropped the connection: the initiator's sends fail soon
        with pytest.raises(ConnectionBroken):  # noqa: PT012
            for _ in range(100):
                await i.send_all(b"x")


async def test_concurrent_send_message_is_serialized() -> None:
    with trio.fail_after(10):
        i, r = await handshake_pair(*trio.testing.memory_stream_pair())

        async def sender(tag: int) -> None:
            for _ in range(4):
                await i.send_message(bytes([tag]) * 150_000)

        async with trio.open_nursery() as nursery:
            for tag in range(3):
                nursery.start_soon(sender, tag)
            got = [await r.receive_message() for _ in range(12)]
    assert all(len(m) == 150_000 and len(set(m)) == 1 for m in got)
    assert sorted(m[0] for m in got) == [0] * 4 + [1] * 4 + [2] * 4


async def test_clean_end_vs_truncation() -> None:
    with trio.fail_after(5):
        i, r = await handshake_pair(*trio.testing.memory_stream_pair())
        await i.send_message(b"last")
        await i.aclose()
        assert await r.receive_message() == b"last"
        with pytest.raises(ConnectionClosed) as info:
            await r.receive_message()
        assert not isinstance(info.value, ConnectionBroken)
        assert await r.receive_some() == b""


async def test_send_eof_half_close() -> None:
    with trio.fail_after(5):
        i, r = await handshake_pair(*trio.testing.memory_stream_pair())
        await i.send_message(b"question")
        await i.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await i.send_message(b"more")
        assert await r.receive_message() == b"question"
        await r.send_message(b"answer")
        assert await i.receive_message() == b"answer"
        with pytest.raises(ConnectionClosed):
            await r.receive_message()


# -- hostile peers -----------------------------------------------------------------


class Mitm:
    """Initiator <-> (a|b) relay (c|d) <-> responder; the test controls the relay."""

    def __init__(self) -> None:
        self.a, self.b = trio.testing.memory_stream_pair()
        self.c, self.d = trio.testing.memory_stream_pair()


async def _pump(src: Transport, dst: Transport) -> None:
    try:
        while data := await src.receive_some():
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the test closed one end on purpose


async def mitm_pair() -> tuple[SecureStream, SecureStream, Mitm]:
    m = Mitm()
    async with trio.open_nursery() as relay:
        relay.start_soon(_pump, m.b, m.c)
        relay.start_soon(_pump, m.c, m.b)
        i, r = await handshake_pair(m.a, m.d)
        relay.cancel_scope.cancel()  # a cancelled receive loses no data
    return i, r, m


async def captured_frames(i: SecureStream, m: Mitm, messages: list[bytes]) -> list[bytes]:
    for msg in messages:
        await i.send_all(msg)
    dec = FrameDecoder()
    frames: list[bytes] = []
    while len(frames) < len(messages):
        dec.feed(bytes(await m.b.receive_some()))
        frames.extend(dec.frames())
    return frames


async def test_replayed_frame_is_rejected() -> None:
    with trio.fail_after(5):
        i, r, m = await mitm_pair()
        f1, _ = await captured_frames(i, m, [b"one", b"two"])
        await m.c.send_all(frame(f1) + frame(f1))
        assert await r.receive_some() == b"one"
        with pytest.raises(BadTag):
            await r.receive_some()
        # the connection was dropped and the stream stays dead
        assert await m.c.receive_some() == b""
        with pytest.raises(ConnectionBroken):
            await r.receive_some()


async def test_reordered_frames_are_rejected() -> None:
    with trio.fail_after(5):
        i, r, m = await mitm_pair()
        f1, f2 = await captured_frames(i, m, [b"one", b"two"])
        await m.c.send_all(frame(f2) + frame(f1))
        with pytest.raises(BadTag):
            await r.receive_some()


@pytest.mark.parametrize("pos", [0, 5, -1])
async def test_bit_flipped_frame_is_rejected(pos: int) -> None:
    with trio.fail_after(5):
        i, r, m = await mitm_pair()
        (f1,) = await captured_frames(i, m, [b"some application data"])
        bad = bytearray(f1)
        bad[pos] ^= 0x40
        await m.c.send_all(frame(bytes(bad)))
        with pytest.raises(BadTag):
            await r.receive_message()


async def test_truncated_stream_is_not_a_clean_end() -> None:
    with trio.fail_after(5):
        i, r, m = await mitm_pair()
        f1, _ = await captured_frames(i, m, [b"one", b"two"])
        await m.c.send_all(frame(f1) + frame(f1)[:7])  # half a frame, then the cut
        await m.c.aclose()
        assert await r.receive_some() == b"one"
        with pytest.raises(ConnectionBroken):
            await r.receive_some()


async def test_frame_shorter_than_tag_is_decode_error() -> None:
    with trio.fail_after(5):
        _, r, m = await mitm_pair()
        await m.c.send_all(frame(b"tiny"))
        with pytest.raises(DecodeError):
            await r.receive_some()


async def test_wrong_psk_fails_on_both_sides_before_the_responder_reveals_anything() -> None:
    # XXpsk0: the PSK keys message 1 already, so the responder refuses it and
    # never writes message 2 -- which would carry its static key and payload.
    a, b = trio.testing.memory_stream_pair()
    sent_by_responder: list[bytes] = []
    b_send = b.send_stream.send_all_hook

    def record() -> None:
        sent_by_responder.append(b"x")
        if b_send is not None:
            b_send()

    b.send_stream.send_all_hook = record
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            failures: list[BaseException] = []

            async def initiator() -> None:
                try:
                    await open_secure_stream(a, initiator=True, static_key=I_KEY, psk=PSK,
                                             payload=b"never sent")
                except P2PInviteError as exc:
                    failures.append(exc)

            nursery.start_soon(initiator)
            with pytest.raises(HandshakeAuthFailed):
                await open_secure_stream(b, initiator=False, static_key=R_KEY, psk=bytes(32),
                                         payload=b"the host's binding proof")
    [exc] = failures
    assert isinstance(exc, ConnectionClosed)
    assert sent_by_responder == []


async def _expect_initiator_then_fail(a: Transport, b: Transport, **kw: bytes) -> SecureStream:
    """Responder refuses message 3; the initiator learns at its first read."""
    holder: dict[str, SecureStream] = {}

    async def initiator() -> None:
        holder["i"] = await open_secure_stream(a, initiator=True, static_key=I_KEY,
                                               psk=kw.get("psk_i"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(initiator)
        with pytest.raises(HandshakeAuthFailed) as info:
            await open_secure_stream(b, initiator=False, static_key=R_KEY, psk=kw.get("psk_r"))
    assert isinstance(info.value, BadTag)
    assert isinstance(info.value, HandshakeError)
    i = holder["i"]
    with pytest.raises(ConnectionBroken):
        await i.receive_message()
    return i


async def test_psk_on_one_side_only() -> None:
    # Different protocol names and prologues: the XX responder sees a payload
    # where message 1 has none.
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def initiator() -> None:
                with pytest.raises(ConnectionClosed):
                    await open_secure_stream(a, initiator=True, static_key=I_KEY, psk=PSK)

            nursery.start_soon(initiator)
            with pytest.raises(HandshakeError):
                await open_secure_stream(b, initiator=False, static_key=R_KEY)


async def test_prologue_mismatch_fails_on_both_sides() -> None:
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def responder() -> None:
                with pytest.raises(ConnectionClosed):
                    await open_secure_stream(b, initiator=False, static_key=R_KEY, prologue=b"y")

            nursery.start_soon(responder)
            with pytest.raises(HandshakeAuthFailed):
                await open_secure_stream(a, initiator=True, static_key=I_KEY, prologue=b"x")


async def test_silent_peer_times_out(autojump_clock: trio.testing.MockClock) -> None:
    a, b = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(HandshakeTimeout):
        await open_secure_stream(b, initiator=False, static_key=R_KEY, timeout=7.0)
    assert trio.current_time() - start == pytest.approx(7.0)
    assert await a.receive_some() == b""  # transport was closed


async def test_peer_silent_mid_handshake(autojump_clock: trio.testing.MockClock) -> None:
    a, b = trio.testing.memory_stream_pair()

    async def half_initiator() -> None:
        # send a valid message 1, read message 2, then go quiet
        from p2pinvite.crypto.noise import HandshakeState

        hs = HandshakeState(PROTOCOL_XX, initiator=True, s=I_KEY,
                            prologue=full_prologue(PROTOCOL_XX))
        await a.send_all(frame(hs.write_message()))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(half_initiator)
        with pytest.raises(HandshakeTimeout):
            await open_secure_stream(b, initiator=False, static_key=R_KEY, timeout=3.0)
        nursery.cancel_scope.cancel()


async def test_local_misuse_is_refused_and_closes_transport() -> None:
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        with pytest.raises(InvalidKey):
            await open_secure_stream(a, initiator=True, static_key=b"short")
        assert await b.receive_some() == b""
        c, _d = trio.testing.memory_stream_pair()
        with pytest.raises(LocalProtocolError):
            await open_secure_stream(c, initiator=True, static_key=I_KEY,
                                     payload=b"x" * (MAX_HANDSHAKE_PAYLOAD + 1))


async def test_biggest_handshake_payload() -> None:
    big = os.urandom(MAX_HANDSHAKE_PAYLOAD)
    a, b = trio.testing.memory_stream_pair()
    out: dict[str, SecureStream] = {}
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def side(k: str, t: Transport, init: bool) -> None:
                out[k] = await open_secure_stream(t, initiator=init, payload=big,
                                                  static_key=I_KEY if init else R_KEY)

            nursery.start_soon(side, "i", a, True)
            nursery.start_soon(side, "r", b, False)
    assert out["i"].remote_payload == big
    assert out["r"].remote_payload == big


async def test_cancelled_send_leaves_send_side_dead() -> None:
    with trio.fail_after(5):
        i, r = await handshake_pair(*trio.testing.lockstep_stream_pair())
        with trio.move_on_after(0.05):
            await i.send_all(b"x" * 100_000)  # blocks: nobody reads
        with pytest.raises(ConnectionBroken):
            await i.send_all(b"more")
        await i.aclose()
        await r.aclose()


# -- fuzzing: only typed errors come out -------------------------------------------


async def _responder_against(data: bytes) -> BaseException | None:
    a, b = trio.testing.memory_stream_pair()
    await a.send_all(data)
    await a.send_eof() if isinstance(a, trio.abc.HalfCloseableStream) else None
    try:
        await open_secure_stream(b, initiator=False, static_key=R_KEY, timeout=5)
    except P2PInviteError as exc:
        return exc
    return None


def _run_autojump(fn: Callable[[], Awaitable[BaseException | None]]) -> BaseException | None:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_to_responder(data: bytes) -> None:
    # garbage never completes a handshake; only P2PInviteError subclasses escape
    result = _run_autojump(lambda: _responder_against(data))
    assert isinstance(result, P2PInviteError)


async def _mutated_initiator(pos: int, op: str, value: int) -> BaseException | None:
    """A real initiator whose byte stream is mutated at *pos* on its way."""
    a, b = trio.testing.memory_stream_pair()
    c, d = trio.testing.memory_stream_pair()
    result: list[BaseException | None] = []

    async def relay_forward() -> None:
        seen = 0
        while data := await b.receive_some():
            buf = bytearray(data)
            if seen <= pos < seen + len(buf):
                k = pos - seen
                if op == "flip":
                    buf[k] ^= value
                elif op == "cut":
                    await c.send_all(bytes(buf[:k]))
                    await c.aclose()
                    return
                else:  # insert
                    buf.insert(k, value)
            seen += len(data)
            await c.send_all(bytes(buf))

    async def initiator() -> None:
        try:
            s = await open_secure_stream(a, initiator=True, static_key=I_KEY, psk=PSK, timeout=5)
            await s.receive_some()
        except P2PInviteError:
            pass

    async def responder() -> None:
        try:
            await open_secure_stream(d, initiator=False, static_key=R_KEY, psk=PSK, timeout=5)
            result.append(None)
        except P2PInviteError as exc:
            result.append(exc)
        await d.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay_forward)
        nursery.start_soon(_pump, c, b)
        nursery.start_soon(initiator)
        await responder()
        nursery.cancel_scope.cancel()
    return result[0]


# initiator's handshake bytes (XXpsk0, empty payload): 2+32+16 then 2+48+16
_INITIATOR_HANDSHAKE_BYTES = 2 + 48 + 2 + 64


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, _INITIATOR_HANDSHAKE_BYTES - 1),
    st.sampled_from(["flip", "cut", "insert"]),
    st.integers(1, 255),
)
def test_mutated_initiator_transcript(pos: int, op: str, value: int) -> None:
    result = _run_autojump(lambda: _mutated_initiator(pos, op, value))
    assert isinstance(result, P2PInviteError)


def test_unmutated_relay_succeeds() -> None:
    # the control for the test above: the relay itself does not break anything
    result = _run_autojump(lambda: _mutated_initiator(10_000, "flip", 1))
    assert result is None


# -- real TCP --------------------------------------------------------------------------


async def test_loopback_tcp() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    data = os.urandom(300_000)
    with trio.fail_after(10):
        server_stream = None
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                nonlocal server_stream
                tcp = await listeners[0].accept()
                server_stream = await open_secure_stream(
                    tcp, initiator=False, static_key=R_KEY, psk=PSK, payload=b"server")
                msg = await server_stream.receive_message()
                await server_stream.send_message(msg[::-1])
                await server_stream.aclose()

            nursery.start_soon(serve)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = await open_secure_stream(tcp, initiator=True, static_key=I_KEY, psk=PSK,
                                              payload=b"client")
            await client.send_message(data)
            assert await client.receive_message() == data[::-1]
            with pytest.raises(ConnectionClosed):
                await client.receive_message()
            assert isinstance(client.transport, trio.SocketStream)
            assert client.transport.socket.getpeername()[1] == port
            await client.aclose()
        for lst in listeners:
            await lst.aclose()
    assert server_stream is not None
    assert client.remote_payload == b"server"
    assert server_stream.remote_payload == b"client"
    assert client.handshake_hash == server_stream.handshake_hash
