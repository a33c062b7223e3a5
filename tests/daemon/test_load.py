"""Load: a flood of unauthenticated TCP connections does not stop real work.

Adversarial suite, load (issue 18). Against one host daemon on loopback, at
the same time:

* IDLE connections that connect and never say a word (each held open until
  the daemon drops it, then reopened: the pressure stays on all along);
* GARBAGE connections that keep sending what an unauthenticated peer may send
  (random bytes, oversized or bogus preambles, a hosted topic followed by
  forged Noise messages or a junk stream), reconnecting as soon as dropped;

while a real guest pairs with the host (link code + PIN) and a real member,
restarted during the flood so that it must reconnect through it, syncs the
entry of that admission. Both must succeed within their normal timeouts.

Memory: the daemon's RSS (``VmRSS``) is sampled all along. The bound is
``baseline + RSS_SLACK``: the manager keeps at most 64 unauthenticated
connections (a new one evicts the oldest) and at most 128 sessions, each
holding at most its protocol's message limit (a 64 KiB Noise message, a
128-byte preamble), i.e. a few MiB of buffers; trio's per-connection task
and socket objects for a few hundred accepted-then-dropped sockets add well
under that. 48 MiB leaves room for the allocator's arenas and the pairing's
own work, and still catches any per-connection leak at these counts (700
leaked 64 KiB buffers alone would be 44 MiB). After the flood ends RSS must
come back near the baseline (CPython rarely returns every arena to the OS,
so "near" is ``RSS_RETURN`` above the baseline).

Sizes: tests/soak.py (500 idle + 200 garbage at soak).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from p2pinvite.invitations.codes import LinkCode
from p2pinvite.net.manager import MAX_PREAMBLE, encode_preamble
from p2pinvite.net.topics import Topic
from p2pinvite.wire import frame

from ..soak import size
from .conftest import DaemonFactory
from .test_e2e_members import admit, eventually, member_set
from .test_e2e_pairing import assert_alive, join_ok, ok_json, tcp_address

pytestmark = pytest.mark.slow

IDLE = size(150, 500)
GARBAGE = size(60, 200)
#: How long the flood runs before the real work starts (the pressure is on).
WARMUP = 3.0
#: RSS bound during the flood, above the baseline (see the module docstring).
RSS_SLACK = 48 * 1024 * 1024
#: RSS after the flood, above the baseline.
RSS_RETURN = 24 * 1024 * 1024


def vm_rss(pid: int) -> int:
    """The resident set size of *pid*, in bytes (/proc/PID/status VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def garbage(hosted: bytes) -> bytes:
    """One of the things an unauthenticated peer may send, at random."""
    return random.choice([
        lambda: os.urandom(4096),
        lambda: b"\xff\xff" + os.urandom(300),
        lambda: frame(os.urandom(MAX_PREAMBLE + 1)),
        lambda: frame(b"\xc1" * 40),
        lambda: frame(encode_preamble(os.urandom(32))) + os.urandom(100),
        lambda: frame(hosted) + frame(os.urandom(10)),
        lambda: frame(hosted) + frame(os.urandom(48)),
        lambda: frame(hosted) + os.urandom(70000),
    ])()


class Flood:
    """IDLE silent and GARBAGE noisy connections to *addr*, each reopened when dropped."""

    def __init__(self, addr: tuple[str, int], hosted: bytes, idle: int, noisy: int) -> None:
        self.addr, self.hosted = addr, hosted
        self.want = {"idle": idle, "noisy": noisy}
        self.sel = selectors.DefaultSelector()
        self.open = {"idle": 0, "noisy": 0}
        self.opened = 0  # connections made in all
        self.failed = 0  # connects refused or timed out (the daemon's backlog, say)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, kind: str) -> None:
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(self.addr)
            if kind == "noisy":
                with contextlib.suppress(OSError):
                    s.sendall(garbage(self.hosted))
        except OSError:
            s.close()
            self.failed += 1
            return
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, kind)
        self.open[kind] += 1
        self.opened += 1

    def _run(self) -> None:
        while not self.stop.is_set():
            for kind, n in self.want.items():
                for _ in range(min(32, n - self.open[kind])):  # refill, a batch at a time
                    self._connect(kind)
            for key, _ in self.sel.select(timeout=0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # dropped by the daemon: reopen it on the next round
                    self.sel.unregister(s)
                    s.close()
                    self.open[key.data] -= 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        for key in list(self.sel.get_map().values()):
            self.sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()


class RssWatch:
    """Samples a process's RSS every 0.1 s in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.samples = pid, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, vm_rss(self.pid))
                self.samples += 1


@pytest.fixture
def enough_fds() -> Iterator[None]:
    """Room for the flood's sockets in this process (and the daemon inherits nothing)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE + GARBAGE + 512
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        pytest.skip(f"needs {need} open files (RLIMIT_NOFILE hard limit {hard})")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def settled_rss(pid: int, seconds: float = 2.0) -> int:
    """The lowest RSS of *pid* over *seconds* (one sample is noisy)."""
    low = vm_rss(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        low = min(low, vm_rss(pid))
    return low


def test_flood_of_idle_and_garbage_connections_while_a_guest_pairs_and_a_member_syncs(
        daemons: DaemonFactory, enough_fds: None) -> None:
    """Pairing and member sync succeed under the flood; the host's RSS stays bounded."""
    host = daemons.start()
    alice = ok_json(host, "identity", "create", "--name", "Alice")
    space = ok_json(host, "space", "create", "Busy")["space_id"]
    member, guest = daemons.start(), daemons.start()
    carol = ok_json(member, "identity", "create", "--name", "Carol")
    bob = ok_json(guest, "identity", "create", "--name", "Bob")
    admit(host, member, space, "editor")
    eventually(lambda: ok_json(host, "space", "peers", space), lambda p: len(p) == 1,
               what="the member connected to the host")
    inv = ok_json(host, "invite", "create", "--space", space, "--role", "reader")
    hosted = encode_preamble(Topic.from_secret(LinkCode.parse(inv["code"]).secret).id)
    # The member goes offline: it must reconnect through the flood to sync.
    member_home = member.home
    assert member.stop() == 0

    baseline = settled_rss(host.proc.pid)
    flood = Flood(tcp_address(host), hosted, IDLE, GARBAGE)
    watch = RssWatch(host.proc.pid)
    flood.thread.start()
    watch.thread.start()
    try:
        time.sleep(WARMUP)
        member = daemons.start(member_home)
        began = time.monotonic()
        result = join_ok(guest, inv["code"], pin=inv["pin"])  # the CLI's normal timeouts
        paired_in = time.monotonic() - began
        assert (result["space_id"], result["role"]) == (space, "reader")
        expected = {(alice["identity_key"], "owner"), (carol["identity_key"], "editor"),
                    (bob["identity_key"], "reader")}
        eventually(lambda: member_set(member, space), lambda s: s == expected,
                   what="the member synced the new admission")
        synced_in = time.monotonic() - began
        assert flood.opened >= IDLE + GARBAGE, "the flood never reached its size"
        assert_alive(host)
    finally:
        flood.close()
        watch.stop.set()
        watch.thread.join()
    assert watch.samples > 10
    assert watch.peak - baseline < RSS_SLACK, \
        f"RSS grew by {(watch.peak - baseline) >> 20} MiB under the flood (baseline " \
        f"{baseline >> 20} MiB, {flood.opened} connections)"
    # The dropped connections' memory is given back (within the tolerance).
    after = eventually(lambda: settled_rss(host.proc.pid, 1.0),
                       lambda rss: rss - baseline < RSS_RETURN, within=30,
                       what="RSS back near the baseline")
    assert member_set(host, space) == expected
    print(f"\nload: {IDLE} idle + {GARBAGE} garbage, {flood.opened} connections made, "
          f"{flood.failed} failed; paired in {paired_in:.1f}s, member synced in "
          f"{synced_in:.1f}s; RSS baseline {baseline >> 20} MiB, peak {watch.peak >> 20} MiB, "
          f"after {after >> 20} MiB")
    assert "Traceback" not in host.stderr()
