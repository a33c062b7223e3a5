"""CLI and daemon benchmark: ``p2pinvite join`` wall time, daemon memory.

Run: ./scripts/bench cli [--json FILE] [--joins N] [--connections N]

What is measured, and how (everything on loopback, mDNS off, real processes):

* **join wall time**: the installed console script, as a user runs it
  (``.venv/bin/p2pinvite --home G join - --pin - --json``, the code and the
  PIN on standard input, as a script passes them), timed from
  ``subprocess.run`` to its exit, against two running daemons. Every join is
  a full PIN pairing -- Noise XXpsk0, CPace, admission with fsync, the guest
  verifying and importing the space log -- with a **fresh single-use PIN
  invitation**. A guest identity cannot join the same space twice, so the
  host creates one space per join and the one guest identity joins each once
  (cheaper than a fresh guest daemon per join, and the same protocol work).
  Two warm-up joins are not counted. The CLI processes get a private
  bytecode cache (``PYTHONPYCACHEPREFIX`` in the scratch directory, and
  ``PYTHONDONTWRITEBYTECODE`` removed), as an installed package has its
  ``.pyc`` files; without it every start recompiles the CLI and the client
  (~10 ms). Beside it, for the breakdown: the CPU time (user + sys) of the
  join process, the same join through the Python client in this process (no
  process start-up), and ``p2pinvite status --json`` (process start-up + one
  IPC round trip). The machine may be shared: the load average at the start
  is recorded with the samples, and CPU time is the load-independent figure.
* **idle daemon RSS** (VmRSS from /proc/PID/status) of a fresh daemon with
  an identity, a space and one pending invitation, after it settled, with 0
  open secure connections.
* **RSS per secure connection**: a helper process (this file with
  ``--hold``) opens N connections (default 128, the daemon's cap on
  invitation sessions; from loopback source addresses 127.0.0.2, .3, ... so
  the cap of 32 per source address is not what stops them) to the daemon's port on
  the topic of a multi-use link invitation (preamble, Noise XXpsk0 with the
  PSK derived from the code, each with its own device keys since the daemon
  keeps one connection per peer static key per topic), reads the accept and
  keeps them idle. It dials at most 32 at a time, below the daemon's cap of
  64 unauthenticated connections (beyond it the daemon evicts the oldest).
  On the daemon each such connection is a guest waiting for its first
  invitation message: the invitation handler drops it after the request
  deadline (5 s), so all N must be open within that window; the benchmark
  counts the daemon's socket fds at the moment it reads RSS and reports the
  count. Per connection = (RSS with N - RSS just before) / (sockets the
  daemon gained).
* When run as root, also the idle RSS of a daemon *with mDNS* (zeroconf
  threads and sockets), inside a private network namespace whose loopback
  carries the multicast (tests/net/netns.py), so nothing reaches a real
  interface.

Targets are in decimal units (MB = 10^6 bytes, KB = 10^3 bytes); the JSON
rows carry the raw KiB too. Every process started here is stopped on every
exit path.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._daemons import (
    PY,
    REPO,
    STEP_TIMEOUT,
    WARMUP_JOINS,
    Daemon,
    console_script,
    daemons,
    raise_nofile,
    rss_kib,
    settled_rss,
    socket_fds,
)
from bench._report import Row, parser, percentile, report
from p2pinvite.client import JoinResult
from p2pinvite.net.manager import MAX_SESSIONS

HOLD_CONCURRENCY = 32

def measure_joins(base: Path, started: list[Daemon], joins: int,
                  lib_joins: int) -> dict[str, list[float]]:
    host = Daemon(base / "host")
    started.append(host)
    guest = Daemon(base / "guest")
    started.append(guest)
    cli = console_script()
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(base / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("P2PINVITE_HOME", None)
    total = WARMUP_JOINS + joins + lib_joins
    with host.client() as h, guest.client() as g:
        h.identity.create("Host")
        g.identity.create("Guest")
        invitations = []
        for i in range(total):
            space = h.spaces.create(f"bench {i}")
            invitations.append(h.invitations.create(kind="space", space=space.space_id,
                                                    role="editor", auth="pin"))
        out: dict[str, list[float]] = {"cli": [], "cpu": [], "lib": [], "status": []}
        for i, inv in enumerate(invitations):
            assert inv.pin is not None
            if i < WARMUP_JOINS + joins:
                ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                r = subprocess.run([*cli, "--home", str(guest.home), "join", "-", "--pin", "-",
                                    "--json"], input=f"{inv.code}\n{inv.pin}\n",
                                   capture_output=True, text=True, timeout=STEP_TIMEOUT,
                                   env=env)
                dt = time.perf_counter() - t0
                ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                if r.returncode != 0 or json.loads(r.stdout).get("role") != "editor":
                    raise RuntimeError(f"join failed: {r.stderr}")
                if i >= WARMUP_JOINS:
                    out["cli"].append(dt)
                    out["cpu"].append(ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime)
            else:
                t0 = time.perf_counter()
                result = None
                for item in g.invitations.accept(inv.code, pin=inv.pin):
                    if isinstance(item, JoinResult):
                        result = item
                dt = time.perf_counter() - t0
                if result is None or result.role != "editor":
                    raise RuntimeError("library join failed")
                out["lib"].append(dt)
        for _ in range(joins):
            t0 = time.perf_counter()
            r = subprocess.run([*cli, "--home", str(guest.home), "status", "--json"],
                               capture_output=True, text=True, timeout=STEP_TIMEOUT, env=env)
            out["status"].append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise RuntimeError("status failed")
        if len(g.spaces.list()) != total:
            raise RuntimeError("the guest is not in every space it joined")
    host.stop()
    guest.stop()
    return out


# -- memory ---------------------------------------------------------------------------------


def _prepare(d: Daemon, max_uses: int | None) -> str:
    """Identity, space and one pending link invitation; return its code."""
    with d.client() as c:
        c.identity.create("Mem")
        space = c.spaces.create("mem")
        inv = c.invitations.create(kind="space", space=space.space_id, role="reader",
                                   auth="pin", max_uses=max_uses)
    return inv.code


def measure_memory(base: Path, started: list[Daemon], connections: int) -> dict[str, Any]:
    d = Daemon(base / "mem")
    started.append(d)
    code = _prepare(d, max_uses=None)
    pid = d.pid
    idle = settled_rss(pid)
    before_fds = socket_fds(pid)
    host, port = d.address()
    helper = subprocess.Popen(
        [PY, str(Path(__file__).resolve()), "--hold", f"{host}:{port}",
         "--connections", str(connections)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert helper.stdin is not None
        assert helper.stdout is not None
        helper.stdin.write(code + "\n")
        helper.stdin.flush()
        if not select.select([helper.stdout], [], [], 300)[0]:
            raise RuntimeError("connection helper gave no report within 300 s")
        line = helper.stdout.readline()
        if not line:
            raise RuntimeError("connection helper exited before it was ready")
        ready = json.loads(line)
        rss_open = rss_kib(pid)
        fds_open = socket_fds(pid)
        helper.stdin.write("close\n")
        helper.stdin.flush()
        helper.wait(timeout=STEP_TIMEOUT)
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(timeout=10)
    open_conns = fds_open - before_fds
    return {
        "idle_kib": idle,
        "open_kib": rss_open,
        "opened": ready["opened"],
        "failed": ready["failed"],
        "open_seconds": ready["seconds"],
        "daemon_sockets_added": open_conns,
        "per_conn_kib": (rss_open - idle) / max(1, open_conns),
        "alive": d.proc.poll() is None,
    }


def measure_mdns_idle(base: Path, started: list[Daemon]) -> int | None:
    """Idle RSS of a daemon with mDNS, in a loopback namespace (root only), else None."""
    from tests.net.netns import loopback_namespace, skip_reason

    if skip_reason() is not None:
        return None
    with loopback_namespace() as ns:
        d = Daemon(base / "mdns", ns.argv(),
                   extra=("--listen", f"{ns.addr}:0", "--mdns-interface", ns.iface))
        started.append(d)
        try:
            _prepare(d, max_uses=1)
            return settled_rss(d.pid, 2.0)
        finally:
            d.stop()


# -- the connection helper (a separate process) ----------------------------------------------


def hold_connections(addr: str, count: int) -> int:
    """``--hold``: open *count* idle secure connections; report; close on "close"."""
    import trio

    from p2pinvite.halo.keys import DeviceKeys
    from p2pinvite.invitations.codes import LinkCode
    from p2pinvite.net.manager import ACCEPT, MAX_SESSIONS_PER_SOURCE, encode_preamble
    from p2pinvite.net.secure import SecureStream, open_secure_stream
    from p2pinvite.net.topics import Topic
    from p2pinvite.wire import frame

    raise_nofile(count + 256)
    host, _, port_text = addr.rpartition(":")
    code = sys.stdin.readline().strip()
    topic = Topic.from_secret(LinkCode.parse(code).secret)
    body = encode_preamble(topic.id)
    keys = [DeviceKeys.generate() for _ in range(count)]  # before the clock starts

    async def run() -> None:
        streams: list[SecureStream] = []
        failed: list[str] = []
        limiter = trio.CapacityLimiter(HOLD_CONCURRENCY)

        async def one(i: int, k: DeviceKeys) -> None:
            # Spread over loopback source addresses: the daemon caps sessions per source.
            source = f"127.0.0.{2 + i // MAX_SESSIONS_PER_SOURCE}"
            async with limiter:
                try:
                    with trio.fail_after(20):
                        tcp = await trio.open_tcp_stream(host, int(port_text),
                                                         local_address=source)
                        await tcp.send_all(frame(body))
                        s = await open_secure_stream(
                            tcp, initiator=True, static_key=k.static_private, psk=topic.psk,
                            prologue=body, payload=k.binding_proof(), timeout=20)
                        if await s.receive_message() != ACCEPT:
                            raise RuntimeError("no accept")
                        streams.append(s)
                except Exception as exc:
                    failed.append(type(exc).__name__)

        t0 = time.monotonic()
        async with trio.open_nursery() as n:
            for i, k in enumerate(keys):
                n.start_soon(one, i, k)
        report_line = {"opened": len(streams), "failed": len(failed),
                       "seconds": round(time.monotonic() - t0, 3)}
        print(json.dumps(report_line), flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        for s in streams:
            await trio.aclose_forcefully(s)

    trio.run(run)
    return 0


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    p = parser("p2pinvite join wall time and daemon memory (real processes, loopback)")
    p.add_argument("--joins", type=int, default=20, help="measured CLI joins (default 20)")
    p.add_argument("--connections", type=int, default=MAX_SESSIONS,
                   help=f"idle secure connections for the memory measure (default "
                        f"{MAX_SESSIONS}, the daemon's session cap)")
    p.add_argument("--hold", metavar="HOST:PORT", help=argparse.SUPPRESS)  # the helper
    args = p.parse_args()
    if args.hold:
        return hold_connections(args.hold, args.connections)
    raise_nofile(args.connections + 1024)  # the daemons inherit it

    load = os.getloadavg()
    with daemons() as (base, started):
        joins = measure_joins(base, started, args.joins, lib_joins=max(5, args.joins // 2))
        mem = measure_memory(base, started, args.connections)
        mdns_idle = measure_mdns_idle(base, started)

    cli_ms = [s * 1000 for s in joins["cli"]]
    cpu_ms = [s * 1000 for s in joins["cpu"]]
    lib_ms = [s * 1000 for s in joins["lib"]]
    status_ms = [s * 1000 for s in joins["status"]]
    med = statistics.median(cli_ms)
    mb = 1e6 / 1024  # KiB per MB: targets are in decimal units
    rows = [
        Row("join (console script) median", med, "ms", "< 150 ms", med < 150,
            extra={"runs": len(cli_ms), "samples_ms": [round(x, 1) for x in cli_ms],
                   "loadavg_at_start": load}),
        Row("join (console script) p95", percentile(cli_ms, 95), "ms"),
        Row("join (console script) min", min(cli_ms), "ms"),
        Row("join process CPU time (user+sys) median", statistics.median(cpu_ms), "ms",
            extra={"samples_ms": [round(x, 1) for x in cpu_ms]}),
        Row("join (client library, in process) median", statistics.median(lib_ms), "ms",
            extra={"runs": len(lib_ms), "samples_ms": [round(x, 1) for x in lib_ms]}),
        Row("status --json (process start-up) median", statistics.median(status_ms), "ms",
            extra={"runs": len(status_ms)}),
        Row("idle daemon RSS (mDNS off)", mem["idle_kib"] / mb, "MB", "< 45 MB",
            mem["idle_kib"] / mb < 45, extra={"kib": mem["idle_kib"]}),
    ]
    if mdns_idle is not None:
        rows.append(Row("idle daemon RSS (mDNS on, netns lo)", mdns_idle / mb, "MB",
                        "< 45 MB", mdns_idle / mb < 45, extra={"kib": mdns_idle}))
    complete = (mem["opened"] == args.connections
                and mem["daemon_sockets_added"] >= args.connections and mem["alive"])
    per_conn = mem["per_conn_kib"] * 1.024  # KiB -> KB
    rows += [
        Row(f"daemon RSS with {args.connections} secure connections", mem["open_kib"] / mb,
            "MB", extra={k: v for k, v in mem.items() if k != "per_conn_kib"}),
        Row("RSS per secure connection", per_conn, "KB", "< 40 KB",
            per_conn < 40 if complete else False),
        Row("connections open in the daemon when measured", mem["daemon_sockets_added"],
            "count", f"= {args.connections}", complete),
        Row("time to open them", mem["open_seconds"], "s"),
    ]
    return report("cli", rows, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
