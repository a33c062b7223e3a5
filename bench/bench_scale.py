"""Scale benchmark: many guests on one multi-use PIN invitation of a real host daemon.

Run: ./scripts/bench scale [--json FILE] [--quick] [--guests 1,10,100,500]

What is measured, and how (loopback only, mDNS off):

* **the host** is a real daemon process (bench/_daemons.py: its own home,
  ``--listen 127.0.0.1:0 --no-mdns``) with an identity. For each step it
  creates a fresh space and one multi-use (unlimited) PIN space invitation
  for it, role reader (not timed), so every step starts from a 2-entry log.
* **the guests** are in-process nodes in this benchmark's process
  (tests/invitations/pairing_nodes.py: keys, identity, spaces, store, network
  manager, invitation manager in its own home), each running the real guest
  protocol over TCP to the daemon: 500 guest daemon processes would not fit
  this machine. They are made once, before the steps (not timed), and each
  joins each step's space once. Each guest dials from a loopback source
  address of its own (127.0.0.2, 127.0.0.3, ...), as separate devices would:
  the daemon's cap of 32 sessions per source address then does not bind,
  while its global caps do -- 128 sessions and 64 connections in the
  handshake, the oldest evicted beyond that (p2pinvite/net/manager.py). A
  guest turned away retries as the real one does (its dial loop backs off up
  to 2 s, within its 30 s connect timeout); a join that still ends in
  "host unreachable" is run again, as a user would, up to 3 times in all.
* **a step of N**: the N guests start their ``accept`` at once. Per guest,
  latency = from that start to its SUCCESS (queueing and retries included);
  admissions per second = admitted / (start -> last SUCCESS). The steps of
  1 and 10 run 5 and 3 rounds (each on a new space) for more samples; the
  rates are then per round. Per step: the host daemon's CPU time per
  admission (its threads' ``se.sum_exec_runtime``, /proc, around the joins
  only) and the rate that CPU alone would allow (admitted / host CPU
  seconds); this process's CPU time (the guests) per admission, and the
  part of it spent installing the logs received (``SpaceService.import_space``,
  thread CPU time: verifying, resolving, writing); the host daemon's RSS
  (VmRSS, /proc, after 1 s idle) after the step; the guests' TCP connects
  (retries included); how often the daemon's log says a cap turned a
  connection away; and a check that the space's members are exactly the
  owner and the admitted guests. Latency growth is the step's median
  latency over the 1-guest median of the same run.
* **what bounds it**: this process plays every guest on one core, and each
  guest verifies the whole log it receives (the i-th admitted about i
  entries), so with many guests this side may set the pace rather than the
  host; the CPU rows say which. The host's CPU per admission, and the rate
  it alone would allow, are what carries over to guests on devices of their
  own.

``--quick``: steps of 1 and 10 only, one round each.
"""

from __future__ import annotations

import contextlib
import contextvars
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._daemons import Daemon, daemons, raise_nofile, settled_rss
from bench._report import Row, parser, percentile, report
from p2pinvite.halo.spaces import SpaceService
from p2pinvite.invitations.protocol import State
from tests.invitations.pairing_nodes import Node, open_node

JOIN_TRIES = 3
# The host daemon's log lines that say a cap turned a connection away.
CAP_LINES = {
    "sessions": "session limit (",
    "sessions per source": "session limit per source",
    "handshakes evicted": "unauthenticated connection limit",
}


# -- the guests' source addresses ---------------------------------------------------------

_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("source", default=None)


def source_address(i: int) -> str:
    """Guest *i*'s loopback address: 127.0.0.2, ... 127.0.0.251, 127.0.1.2, ..."""
    return f"127.0.{i // 250}.{2 + i % 250}"


@contextlib.contextmanager
def guest_sources() -> Iterator[Counter[str]]:
    """Make TCP connects from this process bind the calling task's source address.

    The network manager dials with ``trio.open_tcp_stream(host, port)``; a
    guest task sets :data:`_SOURCE`, and every task it starts (its dials)
    inherits it. Connects of tasks without one are left alone. Yields a
    counter of the connects made per source address (a guest's retries
    included).
    """
    real = trio.open_tcp_stream
    connects: Counter[str] = Counter()

    async def open_from(host: Any, port: int, **kw: Any) -> trio.SocketStream:
        src = _SOURCE.get()
        if src is not None and kw.get("local_address") is None:
            kw["local_address"] = src
            connects[src] += 1
        return await real(host, port, **kw)

    trio.open_tcp_stream = open_from
    try:
        yield connects
    finally:
        trio.open_tcp_stream = real


@contextlib.contextmanager
def install_time() -> Iterator[list[float]]:
    """CPU seconds the guests spend installing the logs they receive (verify, resolve, write).

    ``SpaceService.import_space`` runs in a worker thread; its thread CPU
    time is summed into the yielded one-element list.
    """
    total = [0.0]
    real = SpaceService.import_space

    def timed(self: SpaceService, *a: Any, **kw: Any) -> bytes:
        c0 = time.thread_time()
        try:
            return real(self, *a, **kw)
        finally:
            total[0] += time.thread_time() - c0

    SpaceService.import_space = timed  # type: ignore[method-assign]
    try:
        yield total
    finally:
        SpaceService.import_space = real  # type: ignore[method-assign]


# -- the host daemon -------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of *pid*: ``se.sum_exec_runtime`` (ms) of
    /proc/PID/task/TID/sched, microsecond precision (utime and stime in
    /proc/PID/stat count 10 ms clock ticks, too coarse for one admission)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            for line in (task / "sched").read_text().splitlines():
                if line.startswith("se.sum_exec_runtime"):
                    out[int(task.name)] = float(line.split(":")[1]) / 1e3
                    break
    return out


def cpu_since(pid: int, before: dict[int, float]) -> float:
    """CPU seconds *pid*'s threads used since *before* (:func:`thread_cpu`).

    Per thread, so a worker thread that exited meanwhile does not subtract
    the time it had before (its time in between is lost: trio's idle worker
    threads exit after 10 s, so only the tail of a long step can miss some).
    """
    return sum(t - before.get(tid, 0.0) for tid, t in thread_cpu(pid).items())


def self_cpu() -> float:
    """This process's CPU time, every thread."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cap_counts(log: Path, offset: int) -> tuple[dict[str, int], int]:
    """How often each cap line appears in the daemon's log after *offset*; the new offset."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
        end = f.tell()
    return {k: text.count(v) for k, v in CAP_LINES.items()}, end


# -- one step ---------------------------------------------------------------------------------


@dataclass
class Round:
    """One round of a step: N guests on one invitation."""

    n: int
    latencies: list[float] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retries: int = 0
    wall: float = 0.0
    members: str = ""
    host_cpu: float = 0.0
    bench_cpu: float = 0.0


async def join(guest: Node, i: int, code: str, pin: str, t0: float, r: Round) -> None:
    """Guest *i* accepts *code* from its own source address; record its latency."""
    _SOURCE.set(source_address(i))  # inherited by every task this join starts
    last = None
    for attempt in range(JOIN_TRIES):
        async for ev in guest.manager.accept(code, pin=pin):
            last = ev
            if ev.state is State.SUCCESS:
                r.latencies.append(time.perf_counter() - t0)
                r.admitted.append(i)
        if last is not None and last.state is State.SUCCESS:
            return
        unreachable = last is not None and (last.reason or "").startswith("host unreachable")
        if not unreachable or attempt + 1 == JOIN_TRIES:
            break
        r.retries += 1  # as a user would: run join again
    r.failed.append(f"{last.state.value}: {last.reason}" if last is not None else "no event")


async def run_round(host: Daemon, pid: int, guests: list[Node], n: int, tag: str) -> Round:
    """A new space and invitation (not timed); *n* guests join at once; check the members.

    CPU times are taken around the joins only, not around the IPC calls
    that make the space and the invitation or check the members.
    """
    def make() -> tuple[str, str, str]:
        with host.client() as c:
            space = c.spaces.create(f"scale {tag}").space_id
            inv = c.invitations.create(kind="space", space=space, role="reader",
                                       auth="pin", max_uses=None)
        assert inv.pin is not None
        return space, inv.code, inv.pin

    space, code, pin = await trio.to_thread.run_sync(make)
    r = Round(n)
    h0, b0 = thread_cpu(pid), self_cpu()
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(join, guests[i], i, code, pin, t0, r)
    r.wall = max(r.latencies, default=time.perf_counter() - t0)
    r.host_cpu, r.bench_cpu = cpu_since(pid, h0), self_cpu() - b0
    r.members = await trio.to_thread.run_sync(
        check_members, host, space, [guests[i] for i in r.admitted])
    return r


def check_members(host: Daemon, space: str, admitted: list[Node]) -> str:
    """"ok" if the space's members are exactly its owner and the *admitted* guests."""
    with host.client() as c:
        members = c.spaces.members(space)
        owner = c.identity.show().identity_key
    got = {m.identity_key for m in members}
    want = {owner} | {g.identity.identity_key.hex() for g in admitted}
    if got == want and len(members) == len(want):
        return "ok"
    return f"differ: {len(got - want)} unexpected, {len(want - got)} missing"


# -- the run ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_guests(root: Path, n: int) -> AsyncIterator[list[Node]]:
    """*n* guest nodes with identities, in homes under *root*.

    Their timeouts are the defaults a real guest has (30 s per step, 30 s to
    find the host).
    """
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(open_node(
            root / f"g{i}", name=f"Guest {i}", clock=time.time,
            step_timeout=30.0, connect_timeout=30.0)) for i in range(n)]
        yield nodes


@dataclass
class Step:
    """What one step of N measured (its rounds pooled)."""

    n: int
    rounds: list[Round]
    rss_kib: int
    caps: dict[str, int]
    connects: int
    sources: int
    install_cpu: float

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.rounds for x in r.latencies]

    @property
    def admitted(self) -> int:
        return sum(len(r.admitted) for r in self.rounds)

    @property
    def host_cpu(self) -> float:
        return sum(r.host_cpu for r in self.rounds)

    @property
    def bench_cpu(self) -> float:
        return sum(r.bench_cpu for r in self.rounds)


async def measure(steps: list[int], rounds: dict[int, int],
                  settle: float) -> tuple[list[Step], dict[str, Any]]:
    """Start the host daemon and the guests; run every step; raw figures."""
    info: dict[str, Any] = {}
    with daemons() as (base, started):
        host = Daemon(base / "host", extra=("--listen", "127.0.0.1:0", "--no-mdns",
                                            "--log-level", "info"))
        started.append(host)
        with host.client() as c:
            c.identity.create("Host")
        pid = host.pid
        info["host_rss_idle_kib"] = await trio.to_thread.run_sync(settled_rss, pid, settle)
        t0 = time.perf_counter()
        out = []
        async with open_guests(base / "guests", max(steps)) as guests:
            info["guest_setup_s"] = time.perf_counter() - t0
            offset = host.log.stat().st_size
            with guest_sources() as connects, install_time() as install:
                for n in steps:
                    connects.clear()
                    install[0] = 0.0
                    done = [await run_round(host, pid, guests, n, f"{n}.{k}")
                            for k in range(rounds[n])]
                    caps, offset = cap_counts(host.log, offset)
                    rss = await trio.to_thread.run_sync(settled_rss, pid, settle)
                    out.append(Step(n, done, rss, caps, connects.total(), len(connects),
                                    install[0]))
                    print(f"  {n} guests: {sum(len(r.admitted) for r in done)} admitted in "
                          f"{[round(r.wall, 2) for r in done]} s", file=sys.stderr)
        info["host_alive"] = host.proc.poll() is None
    return out, info


def rows_of(steps: list[Step], info: dict[str, Any]) -> list[Row]:
    """The table: per step, rate, latency and its growth, CPU, memory, caps, the check."""
    mb = 1024 / 1e6  # KiB -> MB (decimal)
    one = steps[0].latencies if steps and steps[0].n == 1 else []
    base = statistics.median(one) if one else None
    rows = [Row("host daemon RSS before the first step", info["host_rss_idle_kib"] * mb, "MB",
                extra={"kib": info["host_rss_idle_kib"],
                       "guest_setup_s": info["guest_setup_s"]})]
    for st in steps:
        n, lat, admitted = st.n, st.latencies, st.admitted
        failed = [f for r in st.rounds for f in r.failed]
        checks = [r.members for r in st.rounds]
        rates = [len(r.admitted) / r.wall for r in st.rounds if r.wall > 0]
        rows.append(Row.of(f"{n} guests: admissions/s", rates or [0.0], "1/s", extra={
            "rounds": len(st.rounds), "round_wall_s": [r.wall for r in st.rounds],
            "join_reruns": sum(r.retries for r in st.rounds), "failed": failed[:10]}))
        if lat:
            rows.append(Row.of("  latency per guest (start -> SUCCESS)", lat, "ms", scale=1e3))
            rows.append(Row("  latency p95", percentile(lat, 95) * 1e3, "ms"))
            if base is not None and n > 1:
                rows.append(Row("  median latency / 1-guest median",
                                statistics.median(lat) / base, "x"))
        per = max(admitted, 1)
        rows.append(Row("  host daemon CPU per admission", st.host_cpu / per * 1e3, "ms",
                        extra={"host_cpu_s": st.host_cpu}))
        if st.host_cpu > 0:
            rows.append(Row("  host-CPU-bound rate (admitted / host CPU)",
                            admitted / st.host_cpu, "1/s"))
        rows.append(Row("  guests' CPU per admission (this process)",
                        st.bench_cpu / per * 1e3, "ms", extra={"bench_cpu_s": st.bench_cpu}))
        rows.append(Row("    of which installing the log received", st.install_cpu / per * 1e3,
                        "ms", extra={"install_cpu_s": st.install_cpu}))
        rows.append(Row("  host daemon RSS after the step", st.rss_kib * mb, "MB",
                        extra={"kib": st.rss_kib}))
        rows.append(Row("  guests' TCP connects", st.connects, "count",
                        extra={"source_addresses": st.sources}))
        rows.append(Row("  connections the daemon's caps turned away", sum(st.caps.values()),
                        "count", extra=st.caps))
        want = n * len(st.rounds)
        ok = admitted == want and all(c == "ok" for c in checks)
        rows.append(Row("  admitted, and the members are exactly these", admitted, "count",
                        f"= {want}", ok, {"member_checks": checks, "failed": failed[:10]}))
    return rows


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--guests", metavar="N,N,...",
                   help="steps (default 1,10,100,500; quick 1,10)")
    args = p.parse_args()
    steps = ([int(x) for x in args.guests.split(",")] if args.guests
             else [1, 10] if args.quick else [1, 10, 100, 500])
    # Several rounds for the small steps: their figures are single joins otherwise.
    rounds = {n: 1 if args.quick or n >= 100 else (5 if n == 1 else 3) for n in steps}
    raise_nofile(8 * max(steps) + 1024)  # guests' sockets, listeners and logs; the daemon's
    steps_done, info = trio.run(measure, steps, rounds, 0.3 if args.quick else 1.0)
    if not info["host_alive"]:
        print("the host daemon died during the run", file=sys.stderr)
    return report("scale", rows_of(steps_done, info), args.json, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
