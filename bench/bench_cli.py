"""CLI and daemon benchmark: CLI start-up, ``p2pinvite join`` wall time, daemon memory.

Run: ./scripts/bench cli [--json FILE] [--quick] [--samples N] [--spaces N] [--connections N]

What is measured, and how (everything on loopback, mDNS off except in a
private network namespace, real processes):

* **a regular install**: the CLI is timed as a user runs it, from a wheel
  installed into a virtualenv of its own (``.bench/cli-venv``, git-ignored;
  ``pip install`` compiles every module to bytecode), never from the source
  tree: an editable install reads the sources, and under
  ``PYTHONDONTWRITEBYTECODE`` recompiles them at every start. The venv is
  rebuilt when a hash of what goes into the wheel (``p2pinvite/``,
  ``pyproject.toml``, ``README.md``, ``LICENSE``) changes -- the same key as a
  hash of the wheel, without building one on every run; only the wheel is
  reinstalled when ``pyproject.toml`` (the dependencies) did not change. The
  CLI processes run with the venv's ``python``/``p2pinvite``, in a scratch
  directory (so nothing is imported from the current directory), without
  ``PYTHONPATH``, ``PYTHONPYCACHEPREFIX`` or ``PYTHONDONTWRITEBYTECODE``.
* **start-up**, in rounds of one process of each kind, so a busy machine
  slows them all alike; each figure is the median of the rounds and the
  ratios are of medians from the same rounds:
  - the **bare interpreter**: ``python -c pass``;
  - the floor of any command that talks to the daemon through one argparse
    parser: ``python -c "import argparse, socket, msgpack"`` (the parser,
    the socket, the IPC encoding; nothing of p2pinvite);
  - the **import budget** of ``join``, ``status`` and ``invite create``:
    the whole command run against a home where no daemon listens, so it
    stops right before the first IPC byte (argument parsing, ``join``
    reading its code and PIN from standard input, every import, the socket
    connect that fails; exit 3). Target: within 1.5x of the bare
    interpreter. The row's JSON also carries ``-X importtime`` of that run:
    the modules imported and the biggest top-level imports;
  - ``p2pinvite status --json`` against a running daemon (start-up, one IPC
    round trip, the JSON printed).
* **join wall time** (context; magic-wormhole is compared by the wormhole
  part): the installed console script,
  ``p2pinvite --home G join - --pin - --json`` with the code and the PIN on
  standard input as a script passes them, timed from ``subprocess.run`` to
  its exit, against two running daemons. Every join is a full PIN pairing --
  Noise XXpsk0, CPace, admission with fsync, the guest verifying and
  importing the space log -- with a **fresh single-use PIN invitation**. A
  guest identity cannot join the same space twice, so the host creates one
  space per join and the one guest identity joins each once. Two warm-up
  joins are not counted. Beside it: the CPU time (user + sys) of the join
  process, and the same join through the Python client in this process (no
  process start-up). The load average at the start goes into the JSON.
* **idle daemon RSS** (VmRSS from /proc/PID/status), five reads 0.2 s apart
  after the daemon settled: a daemon with an identity and N spaces created
  on it (default 20; it joins each space's member swarm, as ``status``
  reports, with no other member to connect to), mDNS off; and, when run as
  root, the same daemon *with mDNS* (zeroconf advertising and browsing
  every swarm's topic), inside a private network namespace whose loopback
  carries the multicast (tests/net/netns.py), so nothing reaches a real
  interface. Target (mDNS on, 20 spaces): < 60 MB.
* **RSS per secure connection**: a fresh daemon with one space and one
  pending multi-use invitation; a helper process (this file with
  ``--hold``) opens N connections (default 128, the daemon's cap on
  invitation sessions; from loopback source addresses 127.0.0.2, .3, ... so
  the cap of 32 per source address is not what stops them) to the daemon's
  port on the invitation's topic (preamble, Noise XXpsk0 with the PSK
  derived from the code, each with its own device keys since the daemon
  keeps one connection per peer static key per topic), reads the accept and
  keeps them idle. It dials at most 32 at a time, below the daemon's cap of
  64 unauthenticated connections (beyond it the daemon evicts the oldest).
  On the daemon each such connection is a guest waiting for its first
  invitation message: the invitation handler drops it after the request
  deadline (5 s), so all N must be open within that window; the benchmark
  counts the daemon's socket fds at the moment it reads RSS and reports the
  count. Per connection = (RSS with N - RSS just before) / (sockets the
  daemon gained).

``--quick``: 3 samples of everything, 5 spaces, 16 connections; targets
shown, not asserted. Targets are in decimal units (MB = 10^6 bytes, KB =
10^3 bytes); the JSON rows carry the raw KiB too. Every process started
here is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._daemons import (
    PY,
    REPO,
    STEP_TIMEOUT,
    WARMUP_JOINS,
    Daemon,
    daemons,
    raise_nofile,
    rss_kib,
    settled_rss,
    socket_fds,
)
from bench._install import check_install, cli_env, cli_venv
from bench._report import Row, parser, percentile, report
from p2pinvite.client import JoinResult
from p2pinvite.net.manager import MAX_SESSIONS

HOLD_CONCURRENCY = 32
#: The import-budget target: a command's start-up within this many bare interpreter start-ups.
STARTUP_TARGET = 1.5
#: Idle RSS target of a daemon with mDNS on and the default number of spaces, in MB.
IDLE_RSS_TARGET_MB = 60
MB = 1e6 / 1024  # KiB per MB: targets are in decimal units


# -- start-up -------------------------------------------------------------------------------

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def import_profile(argv: Sequence[str], cwd: Path, env: dict[str, str],
                   stdin: str | None) -> dict[str, Any]:
    """``-X importtime`` of one run of *argv* (a python command line): modules, biggest imports."""
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], input=stdin,
                       capture_output=True, text=True, cwd=cwd, env=env, timeout=STEP_TIMEOUT)
    total_us = 0
    modules = 0
    top: list[tuple[str, int]] = []
    for line in r.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m is None:
            continue
        modules += 1
        total_us += int(m[1])
        if not m[3]:  # imported by running code, not by another import: a top-level chunk
            top.append((m[4], int(m[2])))
    top.sort(key=lambda t: -t[1])
    return {"modules": modules, "import_ms": round(total_us / 1000, 2),
            "biggest_ms": {name: round(us / 1000, 2) for name, us in top[:8]}}


def measure_startup(bin_dir: Path, home: Path, rounds: int) -> tuple[dict[str, list[float]],
                                                                      dict[str, Any]]:
    """Wall times (s) of each start-up kind, one of each per round; and their import profiles.

    *home* is a running daemon's home (for ``status`` against it); the import
    budget runs use a home next to it where nothing listens.
    """
    python, cli = str(bin_dir / "python"), str(bin_dir / "p2pinvite")
    nowhere = home.parent / "no-daemon"  # never created: the connect fails with ENOENT
    env = cli_env()
    cwd = Path(tempfile.mkdtemp(prefix="p2pb-cwd-", dir=home.parent))
    check_install(bin_dir, cwd, env)
    # name -> (argv, stdin, expected exit status)
    kinds: dict[str, tuple[list[str], str | None, int]] = {
        "bare": ([python, "-c", "pass"], None, 0),
        "floor": ([python, "-c", "import argparse, socket, msgpack"], None, 0),
        "join": ([cli, "--home", str(nowhere), "join", "-", "--pin", "-", "--json"],
                 "p2pi1-not-a-real-code\n123456\n", 3),
        "status": ([cli, "--home", str(nowhere), "status", "--json"], None, 3),
        "invite create": ([cli, "--home", str(nowhere), "invite", "create", "--space", "S",
                           "--json"], None, 3),
        "status (daemon)": ([cli, "--home", str(home), "status", "--json"], None, 0),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(rounds + 1):  # the first round warms the page cache; not counted
        for name, (argv, stdin, status) in kinds.items():
            t0 = time.perf_counter()
            r = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=cwd,
                               env=env, timeout=STEP_TIMEOUT)
            dt = time.perf_counter() - t0
            if r.returncode != status:
                raise RuntimeError(f"{name}: exit {r.returncode}, expected {status}: {r.stderr}")
            if i:
                times[name].append(dt)
    # A console script runs as "python SCRIPT ..." under -X importtime.
    profiles = {name: import_profile([python, *argv] if argv[0] == cli else argv,
                                     cwd, env, stdin)
                for name, (argv, stdin, _) in kinds.items() if name != "status (daemon)"}
    return times, profiles


# -- join wall time ------------------------------------------------------------------------


def measure_joins(base: Path, started: list[Daemon], bin_dir: Path, joins: int,
                  lib_joins: int, startup_rounds: int) -> dict[str, Any]:
    """Joins through the installed CLI and through the client; then the start-up rounds."""
    host = Daemon(base / "host")
    started.append(host)
    guest = Daemon(base / "guest")
    started.append(guest)
    cli = [str(bin_dir / "p2pinvite")]
    env = cli_env()
    total = WARMUP_JOINS + joins + lib_joins
    with host.client() as h, guest.client() as g:
        h.identity.create("Host")
        g.identity.create("Guest")
        invitations = []
        for i in range(total):
            space = h.spaces.create(f"bench {i}")
            invitations.append(h.invitations.create(kind="space", space=space.space_id,
                                                    role="editor", auth="pin"))
        out: dict[str, Any] = {"cli": [], "cpu": [], "lib": []}
        for i, inv in enumerate(invitations):
            assert inv.pin is not None
            if i < WARMUP_JOINS + joins:
                ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                r = subprocess.run([*cli, "--home", str(guest.home), "join", "-", "--pin", "-",
                                    "--json"], input=f"{inv.code}\n{inv.pin}\n",
                                   capture_output=True, text=True, timeout=STEP_TIMEOUT,
                                   env=env, cwd=base)
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
        if len(g.spaces.list()) != total:
            raise RuntimeError("the guest is not in every space it joined")
    # status --json against the guest, which now holds every joined space.
    out["startup"], out["profiles"] = measure_startup(bin_dir, guest.home, startup_rounds)
    host.stop()
    guest.stop()
    return out


# -- memory ---------------------------------------------------------------------------------


def rss_samples(pid: int, settle: float, n: int = 5, interval: float = 0.2) -> list[int]:
    """*n* VmRSS reads (KiB), *interval* apart, after *settle* seconds of idling."""
    values = [settled_rss(pid, settle)]
    for _ in range(n - 1):
        time.sleep(interval)
        values.append(rss_kib(pid))
    return values


def _prepare(d: Daemon, max_uses: int | None) -> str:
    """Identity, space and one pending link invitation; return its code."""
    with d.client() as c:
        c.identity.create("Mem")
        space = c.spaces.create("mem")
        inv = c.invitations.create(kind="space", space=space.space_id, role="reader",
                                   auth="pin", max_uses=max_uses)
    return inv.code


def _with_spaces(d: Daemon, spaces: int, *, mdns: bool) -> None:
    """An identity and *spaces* spaces; check the daemon joined their swarms, mDNS as asked."""
    with d.client() as c:
        c.identity.create("Mem")
        for i in range(spaces):
            c.spaces.create(f"space {i}")
        status = c.status()
    joined = sum(1 for w in status.swarms if w.kind == "space")
    if joined != spaces or status.mdns != mdns:
        raise RuntimeError(f"the daemon joined {joined} space swarms (expected {spaces}), "
                           f"mDNS {status.mdns} (expected {mdns})")


def measure_spaces_idle(base: Path, started: list[Daemon], spaces: int) -> list[int]:
    """Idle RSS samples (KiB) of a daemon with *spaces* spaces, mDNS off."""
    d = Daemon(base / "spaces")
    started.append(d)
    try:
        _with_spaces(d, spaces, mdns=False)
        return rss_samples(d.pid, 1.0)
    finally:
        d.stop()


def measure_mdns_idle(base: Path, started: list[Daemon], spaces: int) -> list[int] | str:
    """The same with mDNS on, in a loopback namespace (root only); else why not."""
    from tests.net.netns import loopback_namespace, skip_reason

    reason = skip_reason()
    if reason is not None:
        return reason
    with loopback_namespace() as ns:
        d = Daemon(base / "mdns", ns.argv(),
                   extra=("--listen", f"{ns.addr}:0", "--mdns-interface", ns.iface))
        started.append(d)
        try:
            _with_spaces(d, spaces, mdns=True)
            return rss_samples(d.pid, 2.0)  # longer: zeroconf's first announcements
        finally:
            d.stop()


def measure_connections(base: Path, started: list[Daemon], connections: int) -> dict[str, Any]:
    d = Daemon(base / "mem")
    started.append(d)
    code = _prepare(d, max_uses=None)
    pid = d.pid
    idle = rss_samples(pid, 1.0)
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
    alive = d.proc.poll() is None
    d.stop()
    return {
        "idle_kib": idle,
        "open_kib": rss_open,
        "opened": ready["opened"],
        "failed": ready["failed"],
        "open_seconds": ready["seconds"],
        "daemon_sockets_added": open_conns,
        "per_conn_kib": (rss_open - idle[-1]) / max(1, open_conns),
        "alive": alive,
    }


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


# -- rows ---------------------------------------------------------------------------------


def startup_rows(startup: dict[str, list[float]], profiles: dict[str, Any]) -> list[Row]:
    """The start-up figures, each command's ratio to the bare interpreter from the same rounds."""
    bare = statistics.median(startup["bare"])
    floor = statistics.median(startup["floor"]) / bare
    bound = (f"a bare interpreter ({bare * 1e3:.1f} ms); importing argparse, socket and "
             f"msgpack alone takes {floor:.2f}x")
    rows = [
        Row.of("bare interpreter start-up (python -c pass)", startup["bare"], "ms", scale=1e3,
               extra=profiles["bare"]),
        Row.of("import argparse, socket, msgpack (python -c)", startup["floor"], "ms",
               scale=1e3, extra=profiles["floor"]),
        Row("  -> that / bare interpreter", floor, "ratio"),
    ]
    for name, how in (("join", "join - --pin - --json"), ("status", "status --json"),
                      ("invite create", "invite create --space S --json")):
        ratio = statistics.median(startup[name]) / bare
        rows += [
            Row.of(f"start-up to the first IPC byte: {how}", startup[name], "ms", scale=1e3,
                   extra=profiles[name]),
            Row(f"  -> {name} / bare interpreter", ratio, "ratio", f"<= {STARTUP_TARGET}",
                ratio <= STARTUP_TARGET, floor=bound),
        ]
    rows.append(Row.of("status --json, daemon running (start-up + 1 request)",
                       startup["status (daemon)"], "ms", scale=1e3,
                       extra={"vs_bare": statistics.median(startup["status (daemon)"]) / bare}))
    return rows


def main() -> int:
    p = parser("p2pinvite CLI start-up, join wall time and daemon memory (real processes)")
    p.add_argument("--samples", type=int,
                   help="measured joins and start-up rounds (default 20 and 30; --quick: 3)")
    p.add_argument("--spaces", type=int,
                   help="spaces of the idle-RSS daemons (default 20; --quick: 5)")
    p.add_argument("--connections", type=int,
                   help=f"idle secure connections for the memory measure (default "
                        f"{MAX_SESSIONS}, the daemon's session cap; --quick: 16)")
    p.add_argument("--hold", metavar="HOST:PORT", help=argparse.SUPPRESS)  # the helper
    args = p.parse_args()
    if args.hold:
        return hold_connections(args.hold, args.connections)
    joins = args.samples or (3 if args.quick else 20)
    rounds = args.samples or (3 if args.quick else 30)
    spaces = args.spaces or (5 if args.quick else 20)
    connections = args.connections or (16 if args.quick else MAX_SESSIONS)
    raise_nofile(connections + 1024)  # the daemons inherit it

    bin_dir = cli_venv()
    load = os.getloadavg()
    with daemons() as (base, started):
        j = measure_joins(base, started, bin_dir, joins,
                          lib_joins=joins if args.quick else max(5, joins // 2),
                          startup_rounds=rounds)
        mem = measure_connections(base, started, connections)
        spaces_idle = measure_spaces_idle(base, started, spaces)
        mdns_idle = measure_mdns_idle(base, started, spaces)

    rows = startup_rows(j["startup"], j["profiles"])
    cli_ms = [s * 1e3 for s in j["cli"]]
    rows += [
        Row.of("join (installed console script)", cli_ms, "ms",
               extra={"p95_ms": percentile(cli_ms, 95), "loadavg_at_start": load},
               floor="a PIN pairing between two daemons, fsync included"),
        Row.of("join process CPU time (user+sys)", j["cpu"], "ms", scale=1e3),
        Row.of("join (client library, in process)", j["lib"], "ms", scale=1e3),
    ]
    rows.append(Row.of(f"idle daemon RSS, {spaces} spaces, mDNS off", spaces_idle, "MB",
                       scale=1 / MB, extra={"kib": spaces_idle}))
    if isinstance(mdns_idle, str):
        print(f"note: no mDNS-on figure: {mdns_idle}", file=sys.stderr)
    else:
        mdns_mb = statistics.median(mdns_idle) / MB
        rows.append(Row.of(f"idle daemon RSS, {spaces} spaces, mDNS on (netns lo)", mdns_idle,
                           "MB", scale=1 / MB, target=f"< {IDLE_RSS_TARGET_MB} MB",
                           # The target is for 20 spaces; fewer prove nothing.
                           ok=None if spaces < 20 else mdns_mb < IDLE_RSS_TARGET_MB,
                           extra={"kib": mdns_idle}))
    complete = (mem["opened"] == connections
                and mem["daemon_sockets_added"] >= connections and mem["alive"])
    per_conn = mem["per_conn_kib"] * 1.024  # KiB -> KB
    rows += [
        Row.of("idle daemon RSS, 1 space + 1 invitation", mem["idle_kib"], "MB", scale=1 / MB,
               extra={"kib": mem["idle_kib"]}),
        Row(f"daemon RSS with {connections} secure connections", mem["open_kib"] / MB,
            "MB", extra={k: v for k, v in mem.items() if k != "per_conn_kib"}),
        Row("RSS per secure connection", per_conn, "KB", "< 40 KB",
            per_conn < 40 if complete else False),
        Row("connections open in the daemon when measured", mem["daemon_sockets_added"],
            "count", f"= {connections}", complete),
        Row("time to open them", mem["open_seconds"], "s"),
    ]
    return report("cli", rows, args.json, quick=args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
