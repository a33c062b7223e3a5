"""Sync benchmark: a big space log to a member, a known device reconnecting, daemon memory.

Run: ./scripts/bench sync [--json FILE] [--entries N] [--reconnects N] [--spaces N]

Every figure that is a time is compared with a floor measured in the same
run, on the same machine (ratios, not absolute times):

* **10k sync**: an owner's space log with N (default 10,000) admissions,
  written while its member is away; then both daemons run as real
  processes on loopback (mDNS off: they dial each other's last known
  addresses). The member is started first and subscribed to
  (``spaces.subscribe``); the owner's daemon is then started, dials the
  member, and the clock runs from the member's ``peer_connected`` event to
  its ``synced`` event (every entry verified, written with one fsync per
  batch). The floor: decoding and verifying the same N credentials
  (signature and chain) in this process, nothing written. Target <= 2x.
* **reconnect**: two members in this process, each with the daemon's own
  parts (halo services, network manager, swarm service) on loopback, in
  sync; one leaves the swarm and joins again, and the clock runs from the
  join to its first ``synced`` event (TCP connect, the Noise handshake,
  hellos with the member check, heads exchanged). The floor: a TCP connect
  and one Noise XXpsk0 handshake (both sides) on loopback in the same
  process, one sample before each reconnect (alternating, so both see the
  same machine noise). Target <= 3x.
* **memory**: a daemon process's resident set (VmRSS) with 0 and with S
  (default 20) spaces joined, mDNS off (loopback machine); reported, no
  target here.
"""

from __future__ import annotations

import functools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import Row, parser, report

from p2pinvite.client import AsyncClient, JoinResult, connect
from p2pinvite.daemon.swarm_logs import DaemonLogs
from p2pinvite.errors import DaemonNotRunning
from p2pinvite.halo.credentials import CredentialVerifier, decode_credential
from p2pinvite.halo.identity import IdentityService
from p2pinvite.halo.keys import DeviceKeys
from p2pinvite.halo.spaces import SpaceService
from p2pinvite.halo.swarm_secrets import SwarmSecrets
from p2pinvite.net.manager import NetworkManager, open_network_manager
from p2pinvite.net.secure import open_secure_stream
from p2pinvite.net.topics import Topic
from p2pinvite.swarm.service import SwarmService
from tests.halo.strategies import admit_many

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


# -- homes made through the halo layer (no daemon running) ------------------------------------


def make_member_pair(base: Path) -> tuple[Path, Path, bytes]:
    """Two homes: A owns a space and admitted B with a PIN invitation, both daemons running.

    The admission is the real one (two daemon processes, loopback), so each
    home remembers the other's address and its own listening port, as after
    any join: the timed sync below is a known device reconnecting.
    """
    home_a, home_b = base / "a", base / "b"
    a, b = start_daemon(home_a), start_daemon(home_b)
    try:
        with connect(home_a) as ca, connect(home_b, timeout=None) as cb:
            ca.identity.create("Alice")
            cb.identity.create("Bob")
            space = ca.spaces.create("Bench").space_id
            inv = ca.invitations.create(kind="space", space=space, role="editor")
            *_, result = cb.invitations.accept(inv.code, pin=inv.pin)
            assert isinstance(result, JoinResult), result
            deadline = time.monotonic() + START_TIMEOUT
            while not ca.spaces.peers(space):  # B joined the swarm: addresses exchanged
                if time.monotonic() > deadline:
                    raise RuntimeError("B never connected to A's swarm after its admission")
                time.sleep(0.05)
    finally:
        b.stop()
        a.stop()
    return home_a, home_b, bytes.fromhex(space)


def verify_floor(home: Path, space: bytes) -> tuple[float, int]:
    """Seconds to decode and verify (signature, chain) every credential of the log, no I/O."""
    ident = IdentityService.open(home)
    spaces = SpaceService.open(ident)
    try:
        raw = spaces.open_space(space).raw_entries()
    finally:
        spaces.close()
        ident.close()
    verifier = CredentialVerifier()  # fresh: no cached chains from the writer
    t0 = time.perf_counter()
    for data in raw:
        verifier.verify(decode_credential(data))
    return time.perf_counter() - t0, len(raw)


# -- daemon processes ----------------------------------------------------------------------------


@dataclass
class Daemon:
    home: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


def start_daemon(home: Path) -> Daemon:
    """A daemon process on *home*, loopback, mDNS off; returns once its socket answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pinvite", "--home", str(home), "daemon",
         "--listen", "127.0.0.1:0", "--no-mdns", "--log-level", "warning"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=REPO)
    d = Daemon(home, proc)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon on {home} exited with {proc.returncode}")
        try:
            with connect(home, timeout=2) as c:
                c.status()
            return d
        except (OSError, DaemonNotRunning):
            if time.monotonic() > deadline:
                d.stop()
                raise RuntimeError(f"daemon on {home} did not start") from None
            time.sleep(0.02)


async def timed_sync(home_a: Path, home_b: Path, space: bytes) -> float:
    """Seconds from the member's peer_connected to its synced event (see the docstring)."""
    b = start_daemon(home_b)
    a: Daemon | None = None
    try:
        client = await AsyncClient.connect(home_b, timeout=None)
        async with client:
            t_connected = None
            events = client.spaces.subscribe(space.hex())
            result: list[float] = []
            done = trio.Event()
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal t_connected
                    async for ev in events:
                        if ev.event == "peer_connected" and t_connected is None:
                            t_connected = time.perf_counter()
                        elif ev.event == "synced" and t_connected is not None:
                            result.append(time.perf_counter() - t_connected)
                            done.set()
                            return

                nursery.start_soon(watch)
                await trio.sleep(0.2)  # the subscription is in place
                a = await trio.to_thread.run_sync(start_daemon, home_a)
                with trio.fail_after(300):
                    await done.wait()
        return result[0]
    finally:
        b.stop()
        if a is not None:
            a.stop()


def memory(base: Path, spaces: int) -> tuple[float, float]:
    """RSS (MB) of a daemon with an identity and no space, then with *spaces* spaces."""
    home = base / "mem"
    d = start_daemon(home)
    try:
        with connect(home) as c:
            c.identity.create("Mem")
            time.sleep(1.0)
            idle = d.rss_mb()
            for i in range(spaces):
                c.spaces.create(f"space {i}")
            joined = len(c.status().swarms)
            assert joined == spaces + 1, joined
            time.sleep(1.0)
            return idle, d.rss_mb()
    finally:
        d.stop()


# -- reconnect, in process ---------------------------------------------------------------------


@dataclass
class Node:
    ident: IdentityService
    spaces: SpaceService
    net: NetworkManager
    swarm: SwarmService


@asynccontextmanager
async def node(home: Path) -> AsyncIterator[Node]:
    async with AsyncExitStack() as stack:
        ident = IdentityService.open(home)
        stack.callback(ident.close)
        spaces = SpaceService.open(ident)
        stack.callback(spaces.close)
        keys = ident.device
        net = await stack.enter_async_context(open_network_manager(
            static_key=keys.static_private, payload=keys.binding_proof()))
        swarm = SwarmService(home, net, SwarmSecrets.open(home), DaemonLogs(ident, spaces),
                             mdns=False)
        await stack.enter_async_context(swarm)
        yield Node(ident, spaces, net, swarm)


async def reconnects(home_a: Path, home_b: Path, space: bytes,
                     count: int) -> tuple[list[float], list[float]]:
    """*count* samples each, alternating: B's join of the swarm to its first synced
    event, and one loopback TCP connect plus Noise XXpsk0 handshake (the floor).

    Alternating in one event loop puts both under the same machine noise.
    """
    hs = _Handshakes()
    async with node(home_a) as a, node(home_b) as b, hs:
        b.swarm.add_peers(space, (a.net.addresses[0],))
        samples: list[float] = []
        floor: list[float] = []
        events = b.swarm.subscribe()
        async with trio.open_nursery() as nursery:
            synced = trio.Event()

            async def watch() -> None:
                async for ev in events:
                    if ev.type == "synced" and ev.log == space:
                        synced.set()

            nursery.start_soon(watch)
            with trio.fail_after(30):
                await synced.wait()  # the first connection, not timed
            for _ in range(count):
                floor.append(await hs.one())
                await b.swarm.leave(space)
                # A has seen B go (no event to wait on from outside the service).
                while a.swarm.peers(space):  # noqa: ASYNC110
                    await trio.sleep(0.01)
                synced = trio.Event()
                t0 = time.perf_counter()
                await b.swarm.join(space)
                with trio.fail_after(30):
                    await synced.wait()
                samples.append(time.perf_counter() - t0)
            nursery.cancel_scope.cancel()
        return samples, floor


class _Handshakes:
    """A loopback listener; :meth:`one` times a TCP connect plus one Noise XXpsk0
    handshake, both sides in this process, as a member connection makes them."""

    def __init__(self) -> None:
        self._ki, self._kr = DeviceKeys.generate(), DeviceKeys.generate()
        self._topic = Topic.for_swarm(os.urandom(32))
        self._listeners: list[trio.SocketListener] = []

    async def __aenter__(self) -> _Handshakes:
        self._listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for lst in self._listeners:
            await lst.aclose()

    async def one(self) -> float:
        port = self._listeners[0].socket.getsockname()[1]
        ki, kr, topic = self._ki, self._kr, self._topic
        t0 = time.perf_counter()
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await self._listeners[0].accept()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(
                open_secure_stream, server, initiator=False, static_key=kr.static_private,
                psk=topic.psk, prologue=topic.id, payload=kr.binding_proof()))
            await open_secure_stream(client, initiator=True, static_key=ki.static_private,
                                     psk=topic.psk, prologue=topic.id,
                                     payload=ki.binding_proof())
        took = time.perf_counter() - t0
        await client.aclose()
        await server.aclose()
        return took


# -- the report -----------------------------------------------------------------------------------


def run(entries: int, count: int, spaces: int) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="p2pi-bench-sync-") as tmp:
        base = Path(tmp)
        home_a, home_b, space = make_member_pair(base)
        trio.run(admit_many, home_a, space, entries)
        floor, n = verify_floor(home_a, space)
        took = trio.run(timed_sync, home_a, home_b, space)
        rows.append(Row(f"sync of {n:,} entries, two daemons", took / floor, "x floor",
                        "<= 2x", took / floor <= 2.0,
                        {"entries": n, "sync_s": took, "verify_floor_s": floor}))
        rows.append(Row("  sync rate / verify rate", floor / took, "ratio"))

        r_home_a, r_home_b, r_space = make_member_pair(base / "reconnect")
        rc, hs = trio.run(reconnects, r_home_a, r_home_b, r_space, count)
        ratio = statistics.median(rc) / statistics.median(hs)
        rows.append(Row("reconnect to first synced heads", ratio, "x handshake", "<= 3x",
                        ratio <= 3.0, {"reconnect_median_s": statistics.median(rc),
                                       "handshake_median_s": statistics.median(hs),
                                       "reconnects": count}))

        idle, joined = memory(base, spaces)
        rows.append(Row("daemon RSS, identity only", idle, "MB"))
        rows.append(Row(f"daemon RSS, {spaces} spaces joined", joined, "MB", "",
                        None, {"spaces": spaces}))
    return rows


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=10_000, help="log entries (default 10000)")
    p.add_argument("--reconnects", type=int, default=20, help="reconnect samples (default 20)")
    p.add_argument("--spaces", type=int, default=20, help="spaces for the RSS figure")
    args = p.parse_args()
    return report("sync", run(args.entries, args.reconnects, args.spaces), args.json)


if __name__ == "__main__":
    sys.exit(main())
