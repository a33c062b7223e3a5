"""Sync benchmark: a space log fanning out to M members, a known device reconnecting, memory.

Run: ./scripts/bench sync [--json FILE] [--quick] [--entries N] [--fanout-entries N]
                          [--members 2,5,10] [--samples N] [--reconnects N] [--spaces N]

Every figure that is a time is compared with a floor measured in the same
run, on the same machine (ratios, not absolute times):

* **fan-out sync**: M homes; the owner's daemon created a space and admitted
  M - 1 members through real PIN invitations (all daemons real processes on
  loopback, mDNS off), and every member connected to the owner's swarm, so
  each remembers the others' addresses as after any join: a member knows
  its admitting host, the owner knows every member (hellos carry no one
  else's addresses, so with mDNS off the swarm is a star around the owner).
  All daemons stop; the owner's device then appends K admissions to the
  space log (tests/halo/strategies.admit_many: concurrent appends, group
  commit) while every member is away. The homes are copied, and each
  sample starts from that copy: the M - 1 members' daemons start and are
  subscribed to (``spaces.subscribe``), then the owner's daemon starts and
  dials them. The clock runs from the first ``peer_connected`` event at any
  member to the moment the last member's ``changed`` event reports the
  member count that holds all K admissions (each member verified every
  entry, written with one fsync per batch). The floor, measured after each
  sample: decoding and verifying the same log's credentials (signature and
  chain) once in this process, nothing written. Rows: the sync time, the
  floor, their ratio (target <= 2x for the 10,000-entry, two-daemon
  figure), and the ratio to M - 1 verifications spread over this
  machine's cores (what M - 1 members verifying in parallel cannot beat).
  Configurations: K = 10,000 with M = 2, and K = 1,000 with M = 2, 5, 10.
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

``--quick``: one fan-out configuration (M = 2, K = 200, one sample), 3
reconnects, 3 spaces; targets shown, not asserted.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._daemons import Daemon, settled_rss
from bench._report import Row, parser, report
from p2pinvite.client import AsyncClient, JoinResult
from p2pinvite.daemon.swarm_logs import DaemonLogs
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

SYNC_TIMEOUT = 300.0
DAEMON_ARGS = ("--listen", "127.0.0.1:0", "--no-mdns", "--log-level", "warning")


# -- daemon processes ----------------------------------------------------------------------------


def start_all(homes: Sequence[Path]) -> list[Daemon]:
    """A daemon on each of *homes*, started in parallel; all stopped if one fails."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(homes))) as pool:
        futures = [pool.submit(Daemon, h, extra=DAEMON_ARGS) for h in homes]
        started, error = [], None
        for f in futures:
            try:
                started.append(f.result())
            except Exception as exc:
                error = exc
    if error is not None:
        stop_all(started)
        raise error
    return started


def stop_all(ds: Sequence[Daemon]) -> None:
    """Stop every daemon of *ds* (SIGTERM, in parallel)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(ds))) as pool:
        list(pool.map(Daemon.stop, ds))


# -- fan-out: homes, the timed sync, the floor ---------------------------------------------------


def make_members(base: Path, m: int) -> tuple[list[Path], str]:
    """*m* homes: the owner (first) made a space and admitted the others, who joined its swarm.

    The admissions are real ones (daemon processes, loopback), so each home
    remembers the addresses it met and its own listening port, as after
    any join.
    """
    base.mkdir(parents=True, exist_ok=True)  # the daemons' logs go beside their homes
    homes = [base / f"m{i}" for i in range(m)]
    ds = start_all(homes)
    try:
        owner = ds[0]
        with owner.client() as co:
            co.identity.create("Owner")
            space = co.spaces.create("Bench").space_id
            for i, d in enumerate(ds[1:], 1):
                with d.client() as cm:
                    cm.identity.create(f"Member {i}")
                    inv = co.invitations.create(kind="space", space=space, role="editor")
                    *_, result = cm.invitations.accept(inv.code, pin=inv.pin)
                    assert isinstance(result, JoinResult), result
            deadline = time.monotonic() + SYNC_TIMEOUT
            while len(co.spaces.peers(space)) < m - 1:  # every member met: addresses known
                if time.monotonic() > deadline:
                    raise RuntimeError("not every member connected to the owner's swarm")
                time.sleep(0.05)
    finally:
        stop_all(ds)
    return homes, space


def _copy_homes(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("daemon.sock"))


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


@dataclass
class FanoutSample:
    """One timed fan-out: seconds from the first connection to each member holding it all."""

    total: float
    per_member: list[float] = field(default_factory=list)
    synced_events: int = 0


async def timed_fanout(homes: list[Path], space: str, expected: int) -> FanoutSample:
    """Members first (subscribed), then the owner; until every member counts *expected*."""
    members = await trio.to_thread.run_sync(start_all, homes[1:])
    owner: list[Daemon] = []
    try:
        connected: list[float] = []
        holding: dict[int, float] = {}
        synced = 0
        all_hold = trio.Event()
        async with trio.open_nursery() as nursery:

            async def watch(k: int, client: AsyncClient) -> None:
                nonlocal synced
                async with client:
                    async for ev in client.spaces.subscribe(space):
                        if ev.event == "peer_connected":
                            connected.append(time.perf_counter())
                        elif ev.event == "synced":
                            synced += 1
                        elif ev.event == "changed" and (ev.count or 0) >= expected:
                            holding[k] = time.perf_counter()
                            if len(holding) == len(members):
                                all_hold.set()
                            return

            for k, d in enumerate(members):
                client = await AsyncClient.connect(d.home, timeout=None)
                nursery.start_soon(watch, k, client)
            await trio.sleep(0.2)  # the subscriptions are in place
            owner.append(await trio.to_thread.run_sync(
                functools.partial(Daemon, homes[0], extra=DAEMON_ARGS)))
            with trio.fail_after(SYNC_TIMEOUT):
                await all_hold.wait()
        start = min(connected)
        return FanoutSample(max(holding.values()) - start,
                            sorted(t - start for t in holding.values()), synced)
    finally:
        await trio.to_thread.run_sync(stop_all, members + owner)


@dataclass
class Fanout:
    """A configuration's samples and floors."""

    members: int
    entries: int
    log_entries: int
    samples: list[FanoutSample]
    floors: list[float]


def fanout(base: Path, m: int, k: int, samples: int) -> Fanout:
    """Set up *m* members, append *k* admissions at the owner, time *samples* fan-outs."""
    work, pristine = base / "homes", base / "pristine"
    homes, space = make_members(work, m)
    trio.run(admit_many, homes[0], bytes.fromhex(space), k)
    _copy_homes(work, pristine)
    expected = m + k  # the owner, the m - 1 members, the k admitted readers
    out, floors, n = [], [], 0
    for _ in range(samples):
        _copy_homes(pristine, work)
        out.append(trio.run(timed_fanout, homes, space, expected))
        took, n = verify_floor(pristine / homes[0].name, bytes.fromhex(space))
        floors.append(took)
    return Fanout(m, k, n, out, floors)


def fanout_rows(f: Fanout, target: float | None) -> list[Row]:
    """The rows of one fan-out configuration."""
    times = [s.total for s in f.samples]
    ratio = statistics.median(times) / statistics.median(f.floors)
    others = f.members - 1
    cores = os.cpu_count() or 1
    spread = statistics.median(times) / (statistics.median(f.floors) * others / min(cores, others))
    label = (f"{f.members} members: {f.entries:,} entries reach the "
             f"{others} other{'s' if others > 1 else ''}")
    rows = [
        Row.of(f"{label} (the last)", times, "s",
               extra={"per_member_s": [s.per_member for s in f.samples],
                      "synced_events": [s.synced_events for s in f.samples],
                      "log_entries": f.log_entries}),
        Row.of("  verify floor (the log once, this process)", f.floors, "s",
               floor="decode + verify every credential, nothing written"),
        Row("  sync / verify floor", ratio, "x", f"<= {target:g}x" if target else "",
            None if target is None else ratio <= target),
    ]
    if others > 1:
        rows.append(Row(f"  sync / ({others} verifications over {min(cores, others)} cores)",
                        spread, "x"))
    return rows


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


# -- memory ----------------------------------------------------------------------------------


def memory(base: Path, spaces: int, settle: float) -> tuple[int, int]:
    """RSS (KiB) of a daemon with an identity and no space, then with *spaces* spaces."""
    d = Daemon(base / "mem", extra=DAEMON_ARGS)
    try:
        with d.client() as c:
            c.identity.create("Mem")
            pid = c.status().pid
            idle = settled_rss(pid, settle)
            for i in range(spaces):
                c.spaces.create(f"space {i}")
            joined = len(c.status().swarms)
            assert joined == spaces + 1, joined
            return idle, settled_rss(pid, settle)
    finally:
        d.stop()


# -- the report -----------------------------------------------------------------------------------


def run(configs: list[tuple[int, int]], samples: int, count: int, spaces: int,
        settle: float) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="p2pi-bench-sync-") as tmp:
        base = Path(tmp)
        for m, k in configs:
            f = fanout(base / f"fanout-{m}-{k}", m, k, samples)
            # The figure: the big log to one member, against its floor.
            rows += fanout_rows(f, 2.0 if (m, k) == (2, 10_000) else None)

        r_homes, r_space = make_members(base / "reconnect", 2)
        rc, hs = trio.run(reconnects, r_homes[0], r_homes[1], bytes.fromhex(r_space), count)
        ratio = statistics.median(rc) / statistics.median(hs)
        rows += [
            Row.of("reconnect to first synced heads", rc, "ms", scale=1e3),
            Row.of("  TCP connect + Noise XXpsk0 (floor)", hs, "ms", scale=1e3),
            Row("  reconnect / handshake", ratio, "x", "<= 3x", ratio <= 3.0),
        ]

        idle, joined = memory(base, spaces, settle)
        mb = 1024 / 1e6  # KiB -> MB (decimal)
        rows.append(Row("daemon RSS, identity only", idle * mb, "MB", extra={"kib": idle}))
        rows.append(Row(f"daemon RSS, {spaces} spaces joined", joined * mb, "MB",
                        extra={"kib": joined, "spaces": spaces}))
    return rows


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, help="entries of the two-daemon figure (10000)")
    p.add_argument("--fanout-entries", type=int, help="entries of the M-member figures (1000)")
    p.add_argument("--members", metavar="M,M,...", help="member counts (default 2,5,10)")
    p.add_argument("--samples", type=int, help="fan-out samples per configuration (3)")
    p.add_argument("--reconnects", type=int, help="reconnect samples (20)")
    p.add_argument("--spaces", type=int, help="spaces for the RSS figure (20)")
    args = p.parse_args()
    q = args.quick
    if q and not (args.entries or args.members or args.fanout_entries):
        configs = [(2, 200)]
    else:
        members = [int(x) for x in (args.members or "2,5,10").split(",")]
        big, small = args.entries or 10_000, args.fanout_entries or 1_000
        configs = [(2, big)] + [(m, small) for m in members]
    rows = run(configs, args.samples or (1 if q else 3), args.reconnects or (3 if q else 20),
               args.spaces or (3 if q else 20), 0.3 if q else 1.0)
    return report("sync", rows, args.json, quick=q)


if __name__ == "__main__":
    sys.exit(main())
