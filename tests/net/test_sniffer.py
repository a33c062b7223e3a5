"""The routed topology and the namespace sniffer, checked before anything relies on them.

The rendezvous end-to-end tests (tests/daemon/test_e2e_rendezvous_netns.py)
prove that secrets never cross the rendezvous by *not* finding them in a
capture, so the capture must first be shown to find what is there: plain
bytes in one segment, bytes split across segments (only the reassembled
stream has them), and bytes a WebSocket client masked (only the unmasked
view has them). And "no route between host and guest" must be a fact of the
topology, not an assumption. Root only (skipped with the reason otherwise).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from .netns import ROOT, Namespace, routed_namespaces, skip_reason
from .sniffer import Capture, sniff

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]

#: Listens on argv[1]:0, prints the port, accepts argv[2] connections, reads each
#: to EOF, prints a JSON list of what each sent (latin-1), exits.
SINK = r"""
import json, socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
got = []
for _ in range(int(sys.argv[2])):
    c, _ = s.accept()
    c.settimeout(20)
    buf = b""
    while chunk := c.recv(65536):
        buf += chunk
    c.close()
    got.append(buf.decode("latin-1"))
print(json.dumps(got), flush=True)
"""

#: Connects to argv[1]:argv[2] and sends each following argument (hex) as its own
#: segment: Nagle off, a pause between sends, so each leaves in a segment of its own.
SEND = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for part in sys.argv[3:]:
    c.sendall(bytes.fromhex(part))
    time.sleep(0.2)
c.close()
"""

#: Dials argv[1]:argv[2] with a timeout of argv[3] s; prints the outcome by name.
DIAL = r"""
import errno, socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""


def run_in(ns: Namespace, script: str, *args: str, timeout: float = 30) -> str:
    """Run *script* with the venv's Python inside *ns*; its stdout (it must succeed)."""
    res = subprocess.run(ns.argv(sys.executable, "-c", script, *args), capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def dial(ns: Namespace, addr: str, port: int = 9, timeout: float = 1.0) -> str:
    """How a TCP dial from *ns* to *addr*:*port* ends (connected, ECONNREFUSED, timeout...)."""
    return run_in(ns, DIAL, addr, str(port), str(timeout))


class Sink:
    """A :data:`SINK` running in a namespace: ``port``, then :meth:`received`."""

    def __init__(self, ns: Namespace, addr: str, count: int) -> None:
        self.proc = subprocess.Popen(ns.argv(sys.executable, "-c", SINK, addr, str(count)),
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def received(self) -> list[str]:
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0
        got: list[str] = json.loads(out)
        return got

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


def send(ns: Namespace, addr: str, port: int, parts: Sequence[bytes]) -> None:
    """Send *parts* from *ns* over one TCP connection, one segment each."""
    run_in(ns, SEND, addr, str(port), *(p.hex() for p in parts))


def ip_forward(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_routed_sites_reach_the_service_address_but_not_each_other() -> None:
    with routed_namespaces() as net:
        assert net.direct is None
        assert ip_forward(net.rendezvous.name) == "0"
        # Refused means the SYN arrived and the service namespace answered.
        assert dial(net.host, net.service) == "ECONNREFUSED"
        assert dial(net.guest, net.service) == "ECONNREFUSED"
        assert dial(net.guest, net.host.addr) == "ENETUNREACH"
        assert dial(net.host, net.guest.addr) == "ENETUNREACH"
        # Not even through the rendezvous's own address on the other side's link.
        assert dial(net.guest, net.host.addr.rsplit(".", 1)[0] + ".1") == "ENETUNREACH"
        sink = Sink(net.rendezvous, net.service, 2)
        try:
            send(net.host, net.service, sink.port, [b"from the host"])
            send(net.guest, net.service, sink.port, [b"from the guest"])
            assert sink.received() == ["from the host", "from the guest"]
        finally:
            sink.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in names for n in net.names)


def test_blackholed_sites_time_out_instead_of_failing_at_once() -> None:
    with routed_namespaces(blackhole=True) as net:
        # A default route through a rendezvous that does not forward: the SYN
        # is dropped without an ICMP error, as on the Internet.
        assert dial(net.guest, net.host.addr, timeout=1.0) == "timeout"
        assert dial(net.host, net.guest.addr, timeout=1.0) == "timeout"
        assert dial(net.guest, net.service) == "ECONNREFUSED"


def test_direct_link_joins_the_sites() -> None:
    with routed_namespaces(direct=True) as net:
        assert net.direct is not None
        host_side, guest_side = net.direct
        assert (host_side.name, guest_side.name) == (net.host.name, net.guest.name)
        assert dial(guest_side, host_side.addr) == "ECONNREFUSED"
        assert dial(host_side, guest_side.addr) == "ECONNREFUSED"
        # The direct link does not make the rendezvous-side addresses reachable.
        assert dial(net.guest, net.host.addr) == "ENETUNREACH"


def _ws_client_stream(marker: bytes) -> list[bytes]:
    """A WebSocket client's opening and one masked text frame carrying *marker*."""
    key = os.urandom(4)
    # A mask without a zero byte, so the masked frame is sure to differ from the marker.
    key = bytes(b or 1 for b in key)
    masked = bytes(c ^ key[i % 4] for i, c in enumerate(marker))
    assert len(marker) < 126
    upgrade = (b"GET /v1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return [upgrade, bytes([0x81, 0x80 | len(marker)]) + key + masked]


def test_sniffer_sees_plain_split_and_masked_bytes() -> None:
    whole = b"plaintext-" + os.urandom(8).hex().encode()
    split = b"split-across-two-segments-" + os.urandom(8).hex().encode()
    masked = b"masked-by-a-websocket-client-" + os.urandom(8).hex().encode()
    absent = b"never-sent-" + os.urandom(8).hex().encode()
    with routed_namespaces() as net:
        sink = Sink(net.rendezvous, net.service, 3)
        try:
            with sniff(net.rendezvous.argv()) as cap:
                send(net.host, net.service, sink.port, [whole])
                send(net.guest, net.service, sink.port, [split[:13], split[13:]])
                send(net.host, net.service, sink.port, _ws_client_stream(masked))
                received = sink.received()
        finally:
            sink.close()
    assert received[:2] == [whole.decode(), split.decode()]
    assert cap.drops == 0
    assert cap.frames_written == len(cap.frames) > 0
    assert cap.holes == 0
    assert any(f.startswith("frame ") for f in cap.find(whole))
    assert any(f.startswith("tcp ") for f in cap.find(whole))
    # Split: in the reassembled stream only, never in one frame.
    where = cap.find(split)
    assert where
    assert not any(f.startswith("frame ") for f in where), where
    assert split not in cap.raw
    # Masked: only the unmasked WebSocket view has it; it came from the host.
    [where] = cap.find(masked)
    assert where.startswith(f"ws {net.host.addr}:"), where
    assert where.endswith(f">{net.service}:{sink.port}"), where
    assert masked not in cap.raw
    assert cap.find(absent) == []
    with pytest.raises(ValueError, match="empty needle"):
        cap.find(b"")


def test_a_short_token_counts_only_standing_on_its_own(tmp_path: Path) -> None:
    """A PIN inside a relay line's hex token is chance; in JSON or msgpack it is a leak."""
    cap = Capture(tmp_path / "none.pcap", frames=[
        b"please relay 44d84fa0e6f03bb6590694e7ad49 for side p2pinvite_side_1\n",
        b'{"pin": "590694"}',
        b"\xa6590694",
    ])
    assert cap.find(b"590694") == ["frame 0", "frame 1", "frame 2"]
    assert cap.find_token(b"590694") == ["frame 1", "frame 2"]
