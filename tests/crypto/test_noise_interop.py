"""Interoperability with the independent ``noiseprotocol`` package over real TCP.

Our side runs in trio; theirs runs in a worker thread with a blocking socket.
Both roles are tested both ways, for XX and XXpsk0: first our sans-IO engine
with plain 2-byte framing, then our full :func:`open_secure_stream` wire
format (prologue, payload placement, chunking, 4-byte message lengths, end
marker) re-implemented on top of noiseprotocol from docs/PROTOCOL.md Part 5.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
import trio
from noise.connection import Keypair, NoiseConnection

from p2pinvite.crypto.noise import MAX_PLAINTEXT, HandshakeState, public_key
from p2pinvite.net.secure import (
    PROTOCOL_XX,
    PROTOCOL_XXPSK0,
    full_prologue,
    open_secure_stream,
)
from p2pinvite.wire import FrameDecoder, frame

OUR_KEY = bytes(range(1, 33))
THEIR_KEY = bytes(range(50, 82))
PSK = bytes(range(200, 232))
CASES = [
    pytest.param(
        name, we_initiate,
        id=f"{name.split('_')[1]}-{'we' if we_initiate else 'they'}-initiate",
    )
    for name in (PROTOCOL_XX, PROTOCOL_XXPSK0)
    for we_initiate in (True, False)
]
# Transport messages exchanged after the handshake: sizes up to one full message.
SIZES = [0, 1, 100, 4096, MAX_PLAINTEXT]


# -- their side (thread, blocking socket) ---------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed")
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> bytes:
    (n,) = struct.unpack(">H", _recv_exact(sock, 2))
    return _recv_exact(sock, n)


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack(">H", len(data)) + data)


def _their_handshake(
    sock: socket.socket, name: str, initiator: bool, prologue: bytes, payload: bytes
) -> tuple[NoiseConnection, bytes]:
    conn = NoiseConnection.from_name(name.encode())
    conn.set_keypair_from_private_bytes(Keypair.STATIC, THEIR_KEY)
    if "psk" in name:
        conn.set_psks(psk=PSK)
    conn.set_prologue(prologue)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.start_handshake()
    # noiseprotocol drops its handshake state when done; keep it to read rs
    state = conn.noise_protocol.handshake_state
    remote_payload = b""
    # XX: -> e; <- e, ee, s, es; -> s, se (payloads only in each side's last message)
    for k in range(3):
        if (k % 2 == 0) == initiator:
            last_of_mine = k == (2 if initiator else 1)
            _send_frame(sock, bytes(conn.write_message(payload if last_of_mine else b"")))
        else:
            p = bytes(conn.read_message(_recv_frame(sock)))
            if k == (1 if initiator else 2):
                remote_payload = p
            else:
                assert p == b""
    assert conn.handshake_finished
    conn.remote_static = bytes(state.rs.public_bytes)
    return conn, remote_payload


def their_engine_peer(port: int, name: str, initiator: bool) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn, rp = _their_handshake(sock, name, initiator, b"interop", b"theirs")
        got = []
        for size in SIZES:
            if initiator:
                _send_frame(sock, bytes(conn.encrypt(b"i" * size)))
                got.append(bytes(conn.decrypt(_recv_frame(sock))))
            else:
                got.append(bytes(conn.decrypt(_recv_frame(sock))))
                _send_frame(sock, bytes(conn.encrypt(b"r" * size)))
        return {"hash": bytes(conn.get_handshake_hash()), "payload": rp, "got": got,
                "remote_static": conn.remote_static}


def their_secure_peer(port: int, name: str, initiator: bool,
                      messages: list[bytes]) -> dict[str, Any]:
    """The SecureStream wire format, implemented independently on noiseprotocol."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn, rp = _their_handshake(sock, name, initiator, full_prologue(name, b"ctx"), b"hello")
        # send our messages: 4-byte length + body, cut into <= 65519-byte plaintexts
        stream = b"".join(struct.pack(">I", len(m)) + m for m in messages)
        for off in range(0, len(stream), MAX_PLAINTEXT):
            _send_frame(sock, bytes(conn.encrypt(stream[off : off + MAX_PLAINTEXT])))
        # receive until the end marker (a transport message with empty plaintext)
        plain = bytearray()
        while True:
            pt = bytes(conn.decrypt(_recv_frame(sock)))
            if not pt:
                break
            plain += pt
        got = []
        while plain:
            (n,) = struct.unpack_from(">I", plain)
            got.append(bytes(plain[4 : 4 + n]))
            del plain[: 4 + n]
        return {"hash": bytes(conn.get_handshake_hash()), "payload": rp, "got": got,
                "remote_static": conn.remote_static}


# -- our side (trio) --------------------------------------------------------------


async def _accept_one(listeners: list[trio.SocketListener]) -> trio.SocketStream:
    return await listeners[0].accept()


@pytest.mark.parametrize(("name", "we_initiate"), CASES)
async def test_engine_interop_over_tcp(name: str, we_initiate: bool) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    result: dict[str, Any] = {}

    async def them() -> None:
        result.update(await trio.to_thread.run_sync(their_engine_peer, port, name, not we_initiate))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(them)
            stream = await _accept_one(listeners)
            async with stream:
                hs = HandshakeState(name, initiator=we_initiate, prologue=b"interop",
                                    s=OUR_KEY, psks=(PSK,) if "psk" in name else ())
                dec = FrameDecoder()

                async def read_frame() -> bytes:
                    while (f := dec.next_frame()) is None:
                        data = await stream.receive_some(65536)
                        assert data
                        dec.feed(data)
                    return f

                payloads = []
                while not hs.complete:
                    if hs.our_turn:
                        last = hs.message_index == (2 if we_initiate else 1)
                        await stream.send_all(frame(hs.write_message(b"ours" if last else b"")))
                    else:
                        payloads.append(hs.read_message(await read_frame()))
                t = hs.transport()
                got = []
                for size in SIZES:
                    if we_initiate:
                        await stream.send_all(frame(t.encrypt(b"I" * size)))
                        got.append(t.decrypt(await read_frame()))
                    else:
                        got.append(t.decrypt(await read_frame()))
                        await stream.send_all(frame(t.encrypt(b"R" * size)))
        for lst in listeners:
            await lst.aclose()
    assert result["hash"] == hs.handshake_hash
    assert hs.remote_static == public_key(THEIR_KEY)
    assert result["remote_static"] == public_key(OUR_KEY)
    assert payloads == ([b"theirs"] if we_initiate else [b"", b"theirs"])
    assert result["payload"] == b"ours"
    theirs_char = b"r" if we_initiate else b"i"
    ours_char = b"I" if we_initiate else b"R"
    assert got == [theirs_char * s for s in SIZES]
    assert result["got"] == [ours_char * s for s in SIZES]


@pytest.mark.parametrize(("name", "we_initiate"), CASES)
async def test_secure_stream_interop_over_tcp(name: str, we_initiate: bool) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    result: dict[str, Any] = {}
    theirs = [b"", b"x", b"t" * 70_000, b"u" * 200]  # one spans two Noise messages
    ours = [b"a" * 10, b"b" * 150_000, b""]

    async def them() -> None:
        result.update(await trio.to_thread.run_sync(
            their_secure_peer, port, name, not we_initiate, theirs))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(them)
            tcp = await _accept_one(listeners)
            s = await open_secure_stream(
                tcp, initiator=we_initiate, static_key=OUR_KEY,
                psk=PSK if "psk" in name else None, prologue=b"ctx", payload=b"hi there",
            )
            assert s.protocol_name == name
            got = [await s.receive_message() for _ in theirs]
            for m in ours:
                await s.send_message(m)
            await s.aclose()  # sends the end marker their side waits for
        for lst in listeners:
            await lst.aclose()
    assert got == theirs
    assert result["got"] == ours
    assert result["hash"] == s.handshake_hash
    assert result["payload"] == b"hi there"
    assert s.remote_payload == b"hello"
    assert s.remote_static == public_key(THEIR_KEY)
    assert result["remote_static"] == public_key(OUR_KEY)
