"""Capture every frame in a network namespace, and look for secrets in the capture.

There is no tcpdump on the test machines, so this is the capture: an
``AF_PACKET`` raw socket bound to no interface (every interface of the
namespace, both directions, ``lo`` included), run as a child process inside
the namespace::

    ip netns exec NS python -m tests.net.sniffer OUTFILE

It writes every frame to OUTFILE as a classic pcap file (Ethernet link type:
veth frames are Ethernet and loopback ones carry a zeroed Ethernet header, so
Wireshark opens the file as is), prints ``ready`` once the socket is open,
and on SIGTERM drains what the kernel still holds, then prints one JSON line
``{"frames": N, "drops": D}`` (``PACKET_STATISTICS``: a capture that dropped
frames cannot prove that something is absent) and exits 0.

:func:`sniff` is the context manager tests use: it starts the sniffer in a
namespace, waits for ``ready``, and on exit stops it and fills in the
:class:`Capture` it yielded (the process is killed on every path out).

Searching raw frames is not enough to say "the PIN never crossed the wire":
a TCP stream may split a secret across two segments, and a WebSocket client
masks every frame it sends with a random key (RFC 6455 §5.3), so a client's
plaintext never appears as such in its frames. :meth:`Capture.find`
therefore searches the frames, each TCP stream reassembled in sequence
order, and each WebSocket stream's frame payloads unmasked (and inflated if
``permessage-deflate`` was negotiated).
"""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[2]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
#: Linux's SO_RCVBUFFORCE (root may exceed net.core.rmem_max); not in :mod:`socket`.
SO_RCVBUFFORCE = 33
#: Enough for a GSO/GRO super-frame (veth hands up to 64 KiB to a socket).
MAX_FRAME = 262144
#: Socket receive buffer, so a burst is not dropped while we write to disk.
RCVBUF = 32 * 1024 * 1024
#: pcap: magic, version 2.4, UTC offset 0, accuracy 0, snaplen, LINKTYPE_ETHERNET.
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, MAX_FRAME, 1)
_RECORD = struct.Struct("<IIII")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# -- the capture process ------------------------------------------------------------------


def _run(out: Path) -> int:
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    # A flag, not an exception: an exception could land between writing a
    # record's header and its bytes and leave a torn pcap file.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:  # not root after all: the normal limit is still a capture
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    # The timeout is how often the loop notices the stop flag.
    sock.settimeout(0.05)
    frames = 0
    with out.open("wb") as f:
        f.write(PCAP_HEADER)
        f.flush()
        print("ready", flush=True)

        def record(data: bytes) -> None:
            nonlocal frames
            now = time.time()
            f.write(_RECORD.pack(int(now), int(now % 1 * 1e6), len(data), len(data)))
            f.write(data)
            frames += 1

        while not stop:
            try:
                record(sock.recv(MAX_FRAME))
            except TimeoutError:
                continue
        # Frames that arrived before the signal are still queued: keep them.
        sock.setblocking(False)
        while True:
            try:
                record(sock.recv(MAX_FRAME))
            except BlockingIOError:
                break
    # tpacket_stats: tp_packets, tp_drops (counted since the socket opened).
    _packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    sock.close()
    print(json.dumps({"frames": frames, "drops": drops}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.net.sniffer OUTFILE``: capture until SIGTERM."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tests.net.sniffer OUTFILE", file=sys.stderr)
        return 2
    return _run(Path(args[0]))


# -- reading a capture --------------------------------------------------------------------

#: (source address, source port, destination address, destination port)
Flow = tuple[str, int, str, int]


def read_pcap(data: bytes) -> list[bytes]:
    """The frames of a pcap file written by this module."""
    if data[:24] != PCAP_HEADER:
        raise ValueError("not a capture written by tests.net.sniffer")
    frames, pos = [], 24
    while pos + _RECORD.size <= len(data):
        _s, _us, incl, _orig = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if pos + incl > len(data):
            raise ValueError("truncated capture")
        frames.append(data[pos:pos + incl])
        pos += incl
    if pos != len(data):
        raise ValueError("trailing bytes in capture")
    return frames


@dataclass
class _Segment:
    seq: int
    syn: bool
    payload: bytes


def _tcp_segment(frame: bytes) -> tuple[Flow, _Segment] | None:
    """The flow and TCP segment in an Ethernet *frame*, or None (not TCP)."""
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    ipd = frame[14:]
    if ethertype == 0x0800 and len(ipd) >= 20:
        ihl = (ipd[0] & 0x0F) * 4
        total = int.from_bytes(ipd[2:4], "big") or len(ipd)  # 0: a BIG TCP super-frame
        if ipd[9] != 6:
            return None
        src, dst = socket.inet_ntop(socket.AF_INET, ipd[12:16]), \
            socket.inet_ntop(socket.AF_INET, ipd[16:20])
        tcp = ipd[ihl:total]  # the IP length, not the frame's: Ethernet pads short frames
    elif ethertype == 0x86DD and len(ipd) >= 40:
        if ipd[6] != 6:  # extension headers are not used in these tests
            return None
        src, dst = socket.inet_ntop(socket.AF_INET6, ipd[8:24]), \
            socket.inet_ntop(socket.AF_INET6, ipd[24:40])
        plen = int.from_bytes(ipd[4:6], "big") or len(ipd) - 40
        tcp = ipd[40:40 + plen]
    else:
        return None
    if len(tcp) < 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", tcp)
    offset = (tcp[12] >> 4) * 4
    syn = bool(tcp[13] & 0x02)
    return (src, sport, dst, dport), _Segment(seq, syn, bytes(tcp[offset:]))


def _reassemble(segments: list[_Segment]) -> tuple[bytes, int]:
    """One direction's bytes in sequence order, and how many holes it has."""
    syns = [s for s in segments if s.syn]
    base = (syns[0].seq + 1) if syns else segments[0].seq
    placed: list[tuple[int, bytes]] = []
    for s in segments:
        if not s.payload:
            continue
        # Signed distance from the base, modulo 2**32 (sequence numbers wrap).
        off = (s.seq - base + 2**31) % 2**32 - 2**31
        placed.append((off, s.payload))
    if not placed:
        return b"", 0
    start = min(off for off, _ in placed)
    buf = bytearray()
    holes = 0
    for off, payload in sorted(placed):
        off -= start
        if off > len(buf):
            holes += 1
            buf.extend(b"\0" * (off - len(buf)))
        # A retransmission overlaps what is there already: same bytes, keep the longest.
        buf[off:off + len(payload)] = payload
    return bytes(buf), holes


def _http_head(data: bytes) -> tuple[bytes, bytes] | None:
    """The header block (lower-cased) and the rest, if *data* starts with one."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    return data[:end].lower(), data[end + 4:]


def _ws_frames(data: bytes, *, deflate: bool) -> tuple[bytes, bool]:
    """The payloads of the WebSocket frames in *data*, unmasked, joined; complete?"""
    out = bytearray()
    inflater = zlib.decompressobj(-15) if deflate else None
    message = bytearray()
    compressed = False
    pos = 0
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        fin, rsv1, opcode = b0 & 0x80, b0 & 0x40, b0 & 0x0F
        masked, n = b1 & 0x80, b1 & 0x7F
        pos += 2
        if n == 126:
            if pos + 2 > len(data):
                return bytes(out), False
            n = int.from_bytes(data[pos:pos + 2], "big")
            pos += 2
        elif n == 127:
            if pos + 8 > len(data):
                return bytes(out), False
            n = int.from_bytes(data[pos:pos + 8], "big")
            pos += 8
        key = b""
        if masked:
            key = data[pos:pos + 4]
            pos += 4
        if pos + n > len(data):
            return bytes(out), False
        payload = data[pos:pos + n]
        pos += n
        if masked and n:
            # XOR with the key repeated, as one big integer (fast enough for any frame).
            mask = (key * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")
                       ).to_bytes(n, "big")
        if opcode >= 8:  # control frames (close, ping, pong) are never compressed
            out += payload
            continue
        if opcode != 0:  # the first frame of a message says whether it is compressed
            compressed = bool(rsv1)
        message += payload
        if fin:
            if compressed and inflater is not None:
                out += inflater.decompress(bytes(message) + b"\x00\x00\xff\xff")
            else:
                out += message
            message.clear()
    return bytes(out), pos == len(data)


@dataclass
class Capture:
    """What a :func:`sniff` saw: the pcap file, and views to search in.

    ``frames`` are the raw Ethernet frames; ``streams`` maps each TCP flow to
    its reassembled bytes; ``websocket`` maps each WebSocket flow (either
    direction) to its frames' payloads, unmasked; ``holes`` counts gaps in the
    reassembled streams (bytes never captured); ``frames_written`` and
    ``drops`` are the sniffer's own counts.
    """

    pcap: Path
    frames: list[bytes] = field(default_factory=list)
    streams: dict[Flow, bytes] = field(default_factory=dict)
    websocket: dict[Flow, bytes] = field(default_factory=dict)
    holes: int = 0
    frames_written: int = -1
    drops: int = -1

    def load(self) -> None:
        """Parse :attr:`pcap` into the views."""
        self.frames = read_pcap(self.pcap.read_bytes())
        by_flow: dict[Flow, list[_Segment]] = defaultdict(list)
        for frame in self.frames:
            seg = _tcp_segment(frame)
            if seg is not None:
                by_flow[seg[0]].append(seg[1])
        self.holes = 0
        self.streams = {}
        for flow, segments in by_flow.items():
            self.streams[flow], holes = _reassemble(segments)
            self.holes += holes
        self.websocket = {}
        for flow, data in self.streams.items():
            head = _http_head(data)
            if head is None:
                continue
            header, rest = head
            if header.startswith(b"get ") and b"upgrade: websocket" in header:
                answer = _http_head(self.streams.get((flow[2], flow[3], flow[0], flow[1]), b""))
                deflate = answer is not None and b"permessage-deflate" in answer[0]
            elif header.startswith(b"http/1.1 101"):
                deflate = b"permessage-deflate" in header
            else:
                continue
            self.websocket[flow], _complete = _ws_frames(rest, deflate=deflate)

    @property
    def raw(self) -> bytes:
        """Every captured frame, concatenated (the raw bytes on the wire)."""
        return b"".join(self.frames)

    def find(self, needle: bytes) -> list[str]:
        """Where *needle* occurs: ``frame N``, ``tcp A:P>B:Q``, ``ws A:P>B:Q`` (empty: nowhere)."""
        if not needle:
            raise ValueError("an empty needle is everywhere")
        where = [f"frame {i}" for i, f in enumerate(self.frames) if needle in f]
        for label, views in (("tcp", self.streams), ("ws", self.websocket)):
            where += [f"{label} {a}:{p}>{b}:{q}" for (a, p, b, q), data in views.items()
                      if needle in data]
        return where

    def find_token(self, needle: bytes) -> list[str]:
        """As :meth:`find`, counting only occurrences not inside a run of hex digits.

        For short digit strings (a PIN): the relay's handshake line and the
        mailbox's messages carry long hex strings, where six given digits in a
        row turn up by chance (a relay token did, once in a few dozen runs).
        A PIN that leaked would stand on its own: in JSON, msgpack, a log line.
        """
        if not needle:
            raise ValueError("an empty needle is everywhere")
        pattern = re.compile(rb"(?<![0-9A-Fa-f])" + re.escape(needle) + rb"(?![0-9A-Fa-f])")
        where = [f"frame {i}" for i, f in enumerate(self.frames) if pattern.search(f)]
        for label, views in (("tcp", self.streams), ("ws", self.websocket)):
            where += [f"{label} {a}:{p}>{b}:{q}" for (a, p, b, q), data in views.items()
                      if pattern.search(data)]
        return where

    def senders(self, needle: bytes, view: Literal["tcp", "ws"] = "tcp") -> set[str]:
        """The source addresses of the flows whose *view* (stream or WebSocket) has *needle*."""
        views = self.streams if view == "tcp" else self.websocket
        return {flow[0] for flow, data in views.items() if needle in data}


@contextlib.contextmanager
def sniff(ns_argv: Sequence[str], *, workdir: Path | None = None) -> Iterator[Capture]:
    """Capture in a namespace while the block runs; the :class:`Capture` is filled on exit.

    *ns_argv* is the command prefix that enters the namespace
    (``["ip", "netns", "exec", NS]``, or ``Namespace.argv()``). The capture
    starts before the block (``ready`` was printed) and ends after it; the
    sniffer is killed on every path out, and the pcap file is kept in
    *workdir* (a temporary directory removed afterwards if not given).
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="p2psniff-")))
        pcap = workdir / f"capture-{time.monotonic_ns()}.pcap"
        proc = subprocess.Popen([*ns_argv, sys.executable, "-m", "tests.net.sniffer", str(pcap)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT, text=True)
        stack.callback(_reap, proc)
        assert proc.stdout is not None
        line = _readline(proc, START_TIMEOUT)
        if line != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=STOP_TIMEOUT)
            raise RuntimeError(f"the sniffer did not start: {line!r} {err}")
        capture = Capture(pcap)
        yield capture
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the sniffer did not stop on SIGTERM") from None
        if proc.returncode != 0:
            raise RuntimeError(f"the sniffer exited with {proc.returncode}: {err}")
        stats = json.loads(out.strip().splitlines()[-1])
        capture.frames_written, capture.drops = stats["frames"], stats["drops"]
        capture.load()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line *proc* prints, within *timeout* (empty if it exits first)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().strip()


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill the sniffer if it still runs (a failed block, a failed stop) and reap it."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
        proc.communicate(timeout=STOP_TIMEOUT)


if __name__ == "__main__":
    sys.exit(main())
