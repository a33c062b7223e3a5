"""Noise benchmark: handshakes, loopback latency, transport throughput.

Run: ./scripts/bench noise [--json FILE] [--quick]

What is measured, and how:

* Handshake pairs (a full initiator + responder, in memory, sans-IO engine):
  our XX and XXpsk3, and the ``noiseprotocol`` package's XX. CPU time per
  pair, best batch of several (the machine is shared; CPU time is what a
  handshake costs, whatever else runs).
* Loopback TCP connect + handshake latency (wall clock, p50/p95): a fresh TCP
  connection and a full ``open_secure_stream`` on both ends, one at a time.
* Transport throughput over loopback TCP with 16 KiB and 64 KiB application
  messages (``send_message`` -> ``receive_message``). Both ends run in this
  one process and thread, so the number is bytes per CPU-second of the whole
  path: encrypt, frame, TCP send, TCP receive, parse, decrypt, reassemble.
  Beside it, measured the same way: the physical limit (raw
  ChaCha20-Poly1305 encrypt+decrypt of the same sizes with ``cryptography``),
  plain trio loopback TCP with no crypto, the ceiling that the two together
  allow, and ``noiseprotocol`` doing the same work over loopback TCP (its
  cipher objects behind the same minimal framing driver) and in memory.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable

import trio
from _report import Row, parser, percentile, report
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.connection import Keypair, NoiseConnection

from p2pinvite.crypto.noise import MAX_PLAINTEXT, HandshakeState, generate_private_key
from p2pinvite.errors import ConnectionClosed
from p2pinvite.net.secure import PROTOCOL_XX, open_secure_stream
from p2pinvite.wire import FrameDecoder

KEY_I = generate_private_key()
KEY_R = generate_private_key()
PSK = os.urandom(32)
SIZES = (16 * 1024, 64 * 1024)
MB = 1e6


# -- timing helpers ------------------------------------------------------------


def cpu_per_call(fn: Callable[[], object], *, batch: int, batches: int) -> tuple[float, float]:
    """(best, median) CPU seconds per call over *batches* batches of *batch* calls."""
    per: list[float] = []
    for _ in range(batches):
        t0 = time.process_time()
        for _ in range(batch):
            fn()
        per.append((time.process_time() - t0) / batch)
    return min(per), statistics.median(per)


def best_rate(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """Best (cpu MB/s, wall MB/s) from (bytes/cpu_s, bytes/wall_s) samples."""
    best = max(runs, key=lambda r: r[0])
    return best[0] / MB, best[1] / MB


# -- handshakes -------------------------------------------------------------------


def our_pair(name: str, psks: tuple[bytes, ...] = ()) -> None:
    i = HandshakeState(name, initiator=True, s=KEY_I, psks=psks)
    r = HandshakeState(name, initiator=False, s=KEY_R, psks=psks)
    r.read_message(i.write_message())
    i.read_message(r.write_message(b"resp"))
    r.read_message(i.write_message(b"init"))
    i.transport()
    r.transport()


def their_pair() -> None:
    ends = []
    for initiator, key in ((True, KEY_I), (False, KEY_R)):
        c = NoiseConnection.from_name(PROTOCOL_XX.encode())
        c.set_keypair_from_private_bytes(Keypair.STATIC, key)
        c.set_as_initiator() if initiator else c.set_as_responder()
        c.start_handshake()
        ends.append(c)
    i, r = ends
    r.read_message(i.write_message())
    i.read_message(r.write_message(b"resp"))
    r.read_message(i.write_message(b"init"))


def their_transports() -> tuple[NoiseConnection, NoiseConnection]:
    ends = []
    for initiator, key in ((True, KEY_I), (False, KEY_R)):
        c = NoiseConnection.from_name(PROTOCOL_XX.encode())
        c.set_keypair_from_private_bytes(Keypair.STATIC, key)
        c.set_as_initiator() if initiator else c.set_as_responder()
        c.start_handshake()
        ends.append(c)
    i, r = ends
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    r.read_message(i.write_message())
    return i, r


# -- raw limits (in memory) ---------------------------------------------------------


def raw_aead(size: int, total: int) -> tuple[float, float]:
    aead = ChaCha20Poly1305(os.urandom(32))
    msg = os.urandom(size)
    nonce = bytes(12)
    n = max(1, total // size)
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        aead.decrypt(nonce, aead.encrypt(nonce, msg, None), None)
    c, w = time.process_time() - c0, time.perf_counter() - w0
    return n * size / c, n * size / w


def ours_in_memory(size: int, total: int) -> tuple[float, float]:
    i = HandshakeState(PROTOCOL_XX, initiator=True, s=KEY_I)
    r = HandshakeState(PROTOCOL_XX, initiator=False, s=KEY_R)
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    r.read_message(i.write_message())
    ti, tr = i.transport(), r.transport()
    chunks = [os.urandom(size)[k : k + MAX_PLAINTEXT] for k in range(0, size, MAX_PLAINTEXT)]
    n = max(1, total // size)
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        for ch in chunks:
            tr.decrypt(ti.encrypt(ch))
    c, w = time.process_time() - c0, time.perf_counter() - w0
    return n * size / c, n * size / w


def theirs_in_memory(size: int, total: int) -> tuple[float, float]:
    i, r = their_transports()
    chunks = [os.urandom(size)[k : k + MAX_PLAINTEXT] for k in range(0, size, MAX_PLAINTEXT)]
    n = max(1, total // size)
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        for ch in chunks:
            r.decrypt(i.encrypt(ch))
    c, w = time.process_time() - c0, time.perf_counter() - w0
    return n * size / c, n * size / w


# -- loopback TCP ----------------------------------------------------------------------

Sender = Callable[[trio.SocketStream, bytes, int], Awaitable[None]]
Receiver = Callable[[trio.SocketStream, int], Awaitable[None]]
Closer = Callable[[], Awaitable[None]]
Setup = Callable[[trio.SocketStream, trio.SocketStream],
                 Awaitable[tuple[Sender, Receiver, Closer]]]


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    for lst in listeners:
        await lst.aclose()
    return client, server


async def measure_tcp(size: int, total: int, setup: Setup) -> tuple[float, float]:
    client, server = await tcp_pair()
    send, recv, close = await setup(client, server)
    msg = os.urandom(size)
    n = max(1, total // size)
    c0, w0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, client, msg, n)
        await recv(server, n)
    c, w = time.process_time() - c0, time.perf_counter() - w0
    await close()
    return n * size / c, n * size / w


async def setup_ours(client: trio.SocketStream, server: trio.SocketStream
                     ) -> tuple[Sender, Receiver, Closer]:
    ends = {}

    async def hs(key: str, t: trio.SocketStream, init: bool) -> None:
        ends[key] = await open_secure_stream(t, initiator=init,
                                             static_key=KEY_I if init else KEY_R)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hs, "c", client, True)
        nursery.start_soon(hs, "s", server, False)
    c, s = ends["c"], ends["s"]

    async def send(_: trio.SocketStream, msg: bytes, n: int) -> None:
        for _ in range(n):
            await c.send_message(msg)

    async def recv(_: trio.SocketStream, n: int) -> None:
        for _ in range(n):
            await s.receive_message()

    async def close() -> None:
        await c.aclose()
        await s.aclose()

    return send, recv, close


def setup_raw(size: int) -> Setup:
    """Plain trio TCP, no crypto: the cost of the socket path alone."""

    async def setup(client: trio.SocketStream, server: trio.SocketStream
                    ) -> tuple[Sender, Receiver, Closer]:
        async def send(t: trio.SocketStream, msg: bytes, n: int) -> None:
            for _ in range(n):
                await t.send_all(msg)

        async def recv(t: trio.SocketStream, n: int) -> None:
            want, got = n * size, 0
            while got < want:
                got += len(await t.receive_some(256 * 1024))

        async def close() -> None:
            await client.aclose()
            await server.aclose()

        return send, recv, close

    return setup


async def setup_theirs(client: trio.SocketStream, server: trio.SocketStream
                       ) -> tuple[Sender, Receiver, Closer]:
    """noiseprotocol's cipher objects behind the same wire format as ours."""
    i, r = their_transports()

    async def send(t: trio.SocketStream, msg: bytes, n: int) -> None:
        for _ in range(n):
            stream = struct.pack(">I", len(msg)) + msg
            parts = []
            for off in range(0, len(stream), MAX_PLAINTEXT):
                ct = i.encrypt(stream[off : off + MAX_PLAINTEXT])
                parts.append(struct.pack(">H", len(ct)))
                parts.append(ct)
            await t.send_all(b"".join(parts))

    async def recv(t: trio.SocketStream, n: int) -> None:
        dec = FrameDecoder()
        plain = bytearray()
        for _ in range(n):
            while True:
                if len(plain) >= 4:
                    (m,) = struct.unpack_from(">I", plain)
                    if len(plain) >= 4 + m:
                        bytes(plain[4 : 4 + m])
                        del plain[: 4 + m]
                        break
                dec.feed(bytes(await t.receive_some(256 * 1024)))
                for f in dec.frames():
                    plain += r.decrypt(f)

    async def close() -> None:
        await client.aclose()
        await server.aclose()

    return send, recv, close


async def connect_latency(count: int) -> list[float]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    samples: list[float] = []

    async def serve_one(tcp: trio.SocketStream) -> None:
        s = await open_secure_stream(tcp, initiator=False, static_key=KEY_R, psk=PSK)
        await s.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve_one, listeners)
        for _ in range(count):
            t0 = time.perf_counter()
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            c = await open_secure_stream(tcp, initiator=True, static_key=KEY_I, psk=PSK)
            samples.append(time.perf_counter() - t0)
            await c.aclose()
        nursery.cancel_scope.cancel()
    return samples


async def two_process(size: int, total: int) -> tuple[float, float]:
    """Receiver in a child process: (bytes per CPU-second of the busier end, wall MB/s)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    n = max(1, total // size)
    proc = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--receiver", str(port), str(n)]
    )
    try:
        tcp = await listeners[0].accept()
        s = await open_secure_stream(tcp, initiator=True, static_key=KEY_I)
        msg = os.urandom(size)
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await s.send_message(msg)
        child_cpu = float((await s.receive_message()).decode())
        c, w = time.process_time() - c0, time.perf_counter() - w0
        await s.aclose()
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for lst in listeners:
        await lst.aclose()
    return n * size / max(c, child_cpu), n * size / w


async def receiver(port: int, n: int) -> None:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    s = await open_secure_stream(tcp, initiator=False, static_key=KEY_R)
    c0 = None
    for _ in range(n):
        await s.receive_message()
        if c0 is None:
            c0 = time.process_time()
    await s.send_message(str(time.process_time() - (c0 or 0.0)).encode())
    with contextlib.suppress(ConnectionClosed):
        await s.receive_message()
    await s.aclose()


# -- main ------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--receiver":
        trio.run(receiver, int(sys.argv[2]), int(sys.argv[3]))
        return 0
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller samples (for a smoke run)")
    args = p.parse_args()
    total = (16 if args.quick else 96) << 20
    batches = 3 if args.quick else 7
    rows: list[Row] = []

    # handshakes
    best, med = cpu_per_call(lambda: our_pair(PROTOCOL_XX), batch=100, batches=batches)
    rows.append(Row("XX handshake pair, in memory", best * 1e3, "ms", "< 0.5 ms", best < 0.5e-3,
                    {"median_ms": med * 1e3}))
    rows.append(Row("XX handshake pairs per second", 1 / best, "pairs/s"))
    best, med = cpu_per_call(lambda: our_pair("Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b", (PSK,)),
                             batch=100, batches=batches)
    rows.append(Row("XXpsk3 handshake pairs per second", 1 / best, "pairs/s",
                    extra={"pair_ms": best * 1e3, "median_ms": med * 1e3}))
    tbest, tmed = cpu_per_call(their_pair, batch=100, batches=batches)
    rows.append(Row("noiseprotocol XX handshake pairs per second", 1 / tbest, "pairs/s",
                    extra={"pair_ms": tbest * 1e3, "median_ms": tmed * 1e3}))

    # loopback connect + handshake latency
    lat = trio.run(connect_latency, 50 if args.quick else 300)
    rows.append(Row("TCP connect + XXpsk3 handshake p50", percentile(lat, 50) * 1e3, "ms"))
    rows.append(Row("TCP connect + XXpsk3 handshake p95", percentile(lat, 95) * 1e3, "ms"))

    reps = 2 if args.quick else 3
    for size in SIZES:
        label = f"{size // 1024} KiB"
        raw = best_rate([raw_aead(size, total) for _ in range(reps)])

        def tcp(setup: Setup, size: int = size) -> tuple[float, float]:
            return best_rate([trio.run(measure_tcp, size, total, setup) for _ in range(reps)])

        ours = tcp(setup_ours)
        plain_tcp = tcp(setup_raw(size))
        theirs = tcp(setup_theirs)
        mem_ours = best_rate([ours_in_memory(size, total) for _ in range(reps)])
        mem_theirs = best_rate([theirs_in_memory(size, total) for _ in range(reps)])
        split = best_rate([trio.run(two_process, size, total) for _ in range(reps)])
        ceiling = 1 / (1 / raw[0] + 1 / plain_tcp[0])
        big = size == 64 * 1024
        rows.append(Row(f"{label}: raw ChaCha20-Poly1305 enc+dec (limit)", raw[0], "MB/s"))
        rows.append(Row(
            f"{label}: SecureStream over loopback TCP, one process", ours[0], "MB/s",
            ">= 60% of limit" if big else "", (ours[0] >= 0.6 * raw[0]) if big else None,
            {"percent_of_limit": 100 * ours[0] / raw[0], "wall_MB_s": ours[1],
             "percent_of_aead_plus_tcp_ceiling": 100 * ours[0] / ceiling}))
        rows.append(Row(
            f"{label}: SecureStream over loopback TCP, two processes", split[0], "MB/s",
            ">= 60% of limit" if big else "", (split[0] >= 0.6 * raw[0]) if big else None,
            {"percent_of_limit": 100 * split[0] / raw[0], "wall_MB_s": split[1]}))
        rows.append(Row(
            f"{label}: noiseprotocol over loopback TCP", theirs[0], "MB/s",
            "SecureStream >= this" if big else "", (ours[0] >= theirs[0]) if big else None,
            {"wall_MB_s": theirs[1]}))
        rows.append(Row(f"{label}: plain trio TCP, no crypto", plain_tcp[0], "MB/s",
                        extra={"wall_MB_s": plain_tcp[1]}))
        rows.append(Row(f"{label}: ceiling of AEAD + plain TCP together", ceiling, "MB/s",
                        extra={"SecureStream_percent": 100 * ours[0] / ceiling}))
        rows.append(Row(f"{label}: our NoiseTransport enc+dec, in memory", mem_ours[0], "MB/s"))
        rows.append(Row(f"{label}: noiseprotocol enc+dec, in memory", mem_theirs[0], "MB/s"))

    print("\nThroughput: MB per CPU-second (wall-clock in --json). 'one process': both ends"
          " share one core,\nso the AEAD + TCP ceiling row bounds it. 'two processes': the"
          " receiver runs in a child\nprocess; bytes per CPU-second of the busier end (each"
          " peer has its own CPU in real use).\nHandshakes: CPU time per initiator+responder"
          " pair, best batch.")
    return report("noise", rows, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
