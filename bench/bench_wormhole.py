"""p2pinvite side by side with magic-wormhole: pairing wall time and PAKE cost.

Run: ./scripts/bench wormhole [--json FILE] [--quick] [--runs N]

What is measured, and how (everything on 127.0.0.1, real processes, one run):

* **The tools.** magic-wormhole and its mailbox server live in their own
  virtualenv, ``.bench/wormhole-venv`` (git-ignored), built once with
  ``python -m venv`` + pip from the pinned ranges in
  ``bench/_wormhole_venv.py`` and reused while its marker file holds the same
  pins. ``--quick`` never builds it: without it, the quick run reports the
  CPace figure alone.
* **(a) wormhole**: a mailbox server (``twist wormhole-mailbox``, listening
  on 127.0.0.1 on a port the kernel picks, its database in the scratch
  directory) runs for the whole benchmark. Per sample, ``wormhole send
  --text KEY --code N-word-word`` and ``wormhole receive --only-text
  N-word-word`` are started back to back, both fresh processes, with a
  distinct nameplate N and a fresh random KEY per sample. The sample is the
  time from starting the two to the receiver's exit; the receiver's output
  must hold KEY and both must exit 0 (the sender's exit is awaited, untimed,
  before the next sample). Both clients get ``--relay-url
  ws://127.0.0.1:PORT/v1`` and ``--transit-helper tcp:127.0.0.1:1``: a text
  message never opens a transit connection (it goes through the mailbox),
  and the dead local helper address makes sure the public transit relay
  could not be reached even if one did.
* **(b) p2pinvite**: a host daemon and a guest daemon (``--listen
  127.0.0.1:0 --no-mdns``) run for the whole benchmark. The host creates
  one space and one single-use PIN invitation per sample up front (a guest
  identity cannot join the same space twice; not timed). The sample is the
  wall time of the console script of a regular install (a wheel of this
  tree in ``.bench/cli-venv``, bench/_install.py, as a user has it; not the
  development venv's editable install) ``p2pinvite --home G join -
  --pin - --json`` (code and PIN on stdin) from ``subprocess.run`` to its
  exit, which must report the guest admitted as editor.
* (a) and (b) alternate sample by sample, so load from other work on the
  machine hits both alike; the figure that matters is the **ratio of the two
  medians** (target: p2pinvite at least 8x faster). Each tool's processes
  get a private bytecode cache (``PYTHONPYCACHEPREFIX`` in the scratch
  directory, ``PYTHONDONTWRITEBYTECODE`` removed), warmed by 2 runs of each
  tool that are not counted (1 with ``--quick``), as an installed package
  has its ``.pyc`` files.
* **Start-up context**: ``python -c pass`` of each virtualenv's interpreter,
  once per sample in the same loop: the floor under any Python CLI.
* **PAKE alone**: one code exchange, both sides, no I/O. SPAKE2 from the
  ``spake2`` package (the PAKE magic-wormhole uses) is timed by a small
  script run with the wormhole venv's interpreter that prints per-exchange
  samples as JSON: ``SPAKE2_A``/``SPAKE2_B`` (construct, ``start``,
  ``finish`` on both sides), and for reference ``SPAKE2_Symmetric``, the
  variant wormhole actually runs (the two alternate exchange by exchange).
  Our CPace (``p2pinvite.crypto.cpace``, initiator and responder, messages,
  ISK, then both key-confirmation tags made and verified) is timed in this
  process, half before and half after the SPAKE2 script so both see the
  same machine. Both interpreters are the same CPython (the wormhole venv
  is made from this one). Ratio: SPAKE2 A/B median / CPace median.
  wormhole's own key confirmation (its encrypted "version" message) is not
  part of SPAKE2 and is not included.

Every process started here (mailbox server, wormhole clients, daemons) is
stopped on every exit path and the scratch directory removed. Codes, PINs and
the texts sent are never printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _wormhole_venv as wvenv
from bench._daemons import REPO, STEP_TIMEOUT, Daemon, daemons
from bench._install import check_install, cli_env, cli_venv
from bench._report import Row, parser, report, timeit
from p2pinvite.crypto.cpace import CPace, CPaceRole

TARGET_RATIO = 8.0
MAILBOX_START_TIMEOUT = 30.0
# Words for the wormhole codes: any words do for a code given with --code.
WORDS = ("acme", "banjo", "cobra", "dragon", "eagle", "falcon", "guitar", "hockey",
         "indigo", "jaguar", "kiwi", "lemon", "mango", "nebula", "oxygen", "panda")
# Environment variables that would change what the wormhole CLI does.
WORMHOLE_ENV = ("WORMHOLE_RELAY_URL", "WORMHOLE_TRANSIT_HELPER", "WORMHOLE_QR",
                "WORMHOLE_ACCEPT_FILE")

# Run with the wormhole venv's interpreter: argv = min seconds (per variant),
# min exchanges.
# Prints one JSON object: per-exchange seconds for A/B and Symmetric, versions.
SPAKE2_TIMER = r"""
import json, os, sys, time
from importlib.metadata import version
from spake2 import SPAKE2_A, SPAKE2_B, SPAKE2_Symmetric

min_time, min_runs = float(sys.argv[1]), int(sys.argv[2])
APPID = b"lothar.com/wormhole/text-or-file-xfer"

def ab(pw):
    a, b = SPAKE2_A(pw), SPAKE2_B(pw)
    ma, mb = a.start(), b.start()
    if a.finish(mb) != b.finish(ma):
        raise SystemExit("SPAKE2 A/B keys differ")

def sym(pw):
    a, b = SPAKE2_Symmetric(pw, idSymmetric=APPID), SPAKE2_Symmetric(pw, idSymmetric=APPID)
    ma, mb = a.start(), b.start()
    if a.finish(mb) != b.finish(ma):
        raise SystemExit("SPAKE2 symmetric keys differ")

def run():
    ab(os.urandom(8))  # warm-up: first use builds the group parameters
    sym(os.urandom(8))
    out = {"ab": [], "sym": []}
    start = time.perf_counter()
    # The two variants alternate, so load drift during the run hits both alike.
    while len(out["ab"]) < min_runs or time.perf_counter() - start < 2 * min_time:
        for name, fn in (("ab", ab), ("sym", sym)):
            pw = os.urandom(8)
            t0 = time.perf_counter()
            fn(pw)
            out[name].append(time.perf_counter() - t0)
    return out

out = run()
out["versions"] = {p: version(p) for p in
                   ("spake2", "magic-wormhole", "magic-wormhole-mailbox-server")}
print(json.dumps(out))
"""


# -- crypto alone ----------------------------------------------------------------------------


def cpace_exchange() -> None:
    """One CPace run, both sides, with key confirmation both ways (as a PIN pairing does)."""
    pin = b"%06d" % secrets.randbelow(1_000_000)
    # In a pairing sid is the Noise handshake hash and CI the two static keys.
    sid, ci = os.urandom(64), os.urandom(66)
    a = CPace(pin, role=CPaceRole.INITIATOR, sid=sid, ci=ci)
    b = CPace(pin, role=CPaceRole.RESPONDER, sid=sid, ci=ci)
    b.receive(a.message())
    a.receive(b.message())
    b.verify_confirmation_tag(a.confirmation_tag())
    a.verify_confirmation_tag(b.confirmation_tag())
    if a.isk != b.isk:
        raise RuntimeError("CPace keys differ")


def time_cpace(min_time: float, min_runs: int) -> list[float]:
    """Per-exchange seconds of :func:`cpace_exchange`, after one warm-up exchange."""
    cpace_exchange()
    return timeit(cpace_exchange, min_time=min_time, min_runs=min_runs)


def time_spake2(python: Path, min_time: float, min_runs: int) -> dict[str, Any]:
    """Run :data:`SPAKE2_TIMER` with the wormhole venv's *python*; return its JSON."""
    r = subprocess.run([str(python), "-c", SPAKE2_TIMER, str(min_time), str(min_runs)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"SPAKE2 timer failed:\n{r.stderr}")
    result: dict[str, Any] = json.loads(r.stdout)
    return result


# -- the mailbox server ------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate *proc* if it still runs, kill it if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def mailbox_server(base: Path) -> Iterator[str]:
    """A wormhole mailbox server on 127.0.0.1; yield its websocket URL, stop it on exit."""
    home = base / "mailbox"
    home.mkdir()
    log = home / "twist.log"
    # Port 0: the kernel picks a free port (no race with a probe socket); the
    # server logs the port it got.
    argv = [str(wvenv.bin_path("twist")), "wormhole-mailbox",
            "--port", "tcp:0:interface=127.0.0.1", "--channel-db", str(home / "relay.sqlite")]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=home)
    try:
        deadline = time.monotonic() + MAILBOX_START_TIMEOUT
        port = None
        while port is None:
            m = re.search(r"Site starting on (\d+)", log.read_text(errors="replace"))
            if m:
                port = int(m.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mailbox server did not start:\n{log.read_text()}")
            else:
                time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        yield f"ws://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


# -- one sample of each ---------------------------------------------------------------------


def _env(pycache: Path) -> dict[str, str]:
    """The environment for a tool's processes: a private bytecode cache, no overrides."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(pycache))
    for name in ("PYTHONDONTWRITEBYTECODE", "P2PINVITE_HOME", *WORMHOLE_ENV):
        env.pop(name, None)
    return env


def wormhole_once(relay: str, nameplate: int, env: dict[str, str]) -> float:
    """Seconds from starting ``wormhole send`` and ``receive`` to the receiver's exit."""
    code = f"{nameplate}-{secrets.choice(WORDS)}-{secrets.choice(WORDS)}"
    text = secrets.token_hex(16)
    common = [str(wvenv.bin_path("wormhole")), "--relay-url", relay,
              "--transit-helper", "tcp:127.0.0.1:1"]
    send_argv = [*common, "send", "--no-qr", "--hide-progress", "--text", text, "--code", code]
    recv_argv = [*common, "receive", "--only-text", "--hide-progress", code]
    procs: list[subprocess.Popen[str]] = []
    try:
        t0 = time.perf_counter()
        for argv in (send_argv, recv_argv):
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=env))
        out, err = procs[1].communicate(timeout=STEP_TIMEOUT)
        dt = time.perf_counter() - t0
        _, send_err = procs[0].communicate(timeout=STEP_TIMEOUT)
        # The receiver also prints a note that the code was consumed: look for
        # the text as one whole line.
        if procs[1].returncode != 0 or text not in out.splitlines():
            raise RuntimeError(f"wormhole receive failed (exit {procs[1].returncode}):\n"
                               f"{err.replace(code, '<code>')}")
        if procs[0].returncode != 0:
            raise RuntimeError(f"wormhole send failed (exit {procs[0].returncode}):\n"
                               f"{send_err.replace(code, '<code>').replace(text, '<text>')}")
        return dt
    finally:
        for p in procs:
            _stop(p)


def join_once(cli: list[str], guest: Path, code: str, pin: str, env: dict[str, str]) -> float:
    """Seconds of one ``p2pinvite join - --pin - --json`` run that ends admitted."""
    t0 = time.perf_counter()
    r = subprocess.run([*cli, "--home", str(guest), "join", "-", "--pin", "-", "--json"],
                       input=f"{code}\n{pin}\n", capture_output=True, text=True,
                       timeout=STEP_TIMEOUT, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0 or json.loads(r.stdout or "{}").get("role") != "editor":
        raise RuntimeError(f"join failed (exit {r.returncode}):\n{r.stderr}")
    return dt


def bare_start(python: Path, env: dict[str, str]) -> float:
    """Seconds of ``python -c pass`` with *python*."""
    t0 = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], check=True, timeout=STEP_TIMEOUT, env=env)
    return time.perf_counter() - t0


def measure_pairings(runs: int, warmup: int) -> dict[str, list[float]]:
    """Alternate wormhole exchanges and p2pinvite joins; *warmup* of each not counted."""
    out: dict[str, list[float]] = {"wormhole": [], "join": [], "py_wormhole": [], "py_p2p": []}
    with daemons() as (base, started), mailbox_server(base) as relay:
        host = Daemon(base / "host")
        started.append(host)
        guest = Daemon(base / "guest")
        started.append(guest)
        w_env = _env(base / "pycache-wormhole")
        # p2pinvite as a user installs it: a wheel in a venv, bytecode compiled
        # at install (the development venv's editable finder costs ~15 ms a start).
        bin_dir = cli_venv()
        p_env = cli_env()
        check_install(bin_dir, base, p_env)
        cli = [str(bin_dir / "p2pinvite")]
        with host.client() as h, guest.client() as g:
            h.identity.create("Host")
            g.identity.create("Guest")
            invitations = []
            for i in range(warmup + runs):
                space = h.spaces.create(f"bench {i}")
                invitations.append(h.invitations.create(kind="space", space=space.space_id,
                                                        role="editor", auth="pin"))
        print(f"timing {runs} runs of each tool, alternating ({warmup} warm-up each)...",
              flush=True)
        for i, inv in enumerate(invitations):
            assert inv.pin is not None
            w = wormhole_once(relay, i + 1, w_env)
            j = join_once(cli, guest.home, inv.code, inv.pin, p_env)
            pw = bare_start(wvenv.bin_path("python"), w_env)
            pp = bare_start(bin_dir / "python", p_env)
            if i >= warmup:
                for key, value in (("wormhole", w), ("join", j), ("py_wormhole", pw),
                                   ("py_p2p", pp)):
                    out[key].append(value)
        with guest.client() as g:
            if len(g.spaces.list()) != len(invitations):
                raise RuntimeError("the guest is not in every space it joined")
    return out


# -- main ---------------------------------------------------------------------------------


def _ms(samples: list[float]) -> list[float]:
    """Seconds as milliseconds, rounded for the JSON's per-sample lists."""
    return [round(s * 1000, 2) for s in samples]


def crypto_rows(cpace: list[float], spake: dict[str, Any] | None) -> list[Row]:
    """Rows for the PAKE-alone figures (SPAKE2 only when it was measured)."""
    rows = [Row.of("CPace exchange + key confirmation (both sides)", cpace, "ms", scale=1000,
                   floor="X25519 (cryptography) + Elligator2 map in Python",
                   extra={"samples_ms": _ms(cpace)})]
    if spake is None:
        return rows
    ab, sym = spake["ab"], spake["sym"]
    ratio = statistics.median(ab) / statistics.median(cpace)
    rows = [
        Row.of(f"SPAKE2_A/B exchange (spake2 {spake['versions']['spake2']}, both sides)",
               ab, "ms", scale=1000, floor="pure-Python Ed25519 group arithmetic",
               extra={"samples_ms": _ms(ab)}),
        Row.of("SPAKE2_Symmetric exchange (as wormhole runs it)", sym, "ms", scale=1000,
               extra={"samples_ms": _ms(sym)}),
        *rows,
        Row("PAKE ratio SPAKE2_A/B / CPace", ratio, "x",
            extra={"symmetric_ratio": statistics.median(sym) / statistics.median(cpace),
                   "versions": spake["versions"]}),
    ]
    return rows


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM handler: exit through the normal clean-up paths."""
    raise SystemExit(128 + signum)


def main() -> int:
    p = parser("p2pinvite join against magic-wormhole send/receive, and SPAKE2 against CPace")
    p.add_argument("--runs", type=int, default=None,
                   help="measured runs of each tool (default 20; 3 with --quick)")
    args = p.parse_args()
    # A runner that gives up on us sends SIGTERM: turn it into an exception so
    # the finally blocks stop the mailbox server, the clients and the daemons.
    signal.signal(signal.SIGTERM, _terminated)
    runs = args.runs if args.runs is not None else (3 if args.quick else 20)
    warmup = 1 if args.quick else 2
    crypto_time, crypto_runs = (0.1, 10) if args.quick else (0.5, 30)
    load = os.getloadavg()

    if args.quick and not wvenv.is_built():
        print("skipped: run ./scripts/bench wormhole once to build its venv")
        rows = crypto_rows(time_cpace(2 * crypto_time, crypto_runs), None)
        return report("wormhole", rows, args.json, quick=args.quick)

    python = wvenv.ensure_venv()
    # CPace half before, half after SPAKE2: machine load drifts during a run.
    cpace = time_cpace(crypto_time, crypto_runs)
    spake = time_spake2(python, crypto_time, crypto_runs)
    cpace += time_cpace(crypto_time, crypto_runs)
    pairs = measure_pairings(runs, warmup)

    w_med = statistics.median(pairs["wormhole"])
    j_med = statistics.median(pairs["join"])
    py_w = statistics.median(pairs["py_wormhole"])
    py_p = statistics.median(pairs["py_p2p"])
    ratio = w_med / j_med
    rows = [
        Row.of("wormhole send --text + receive (fresh processes)", pairs["wormhole"], "ms",
               scale=1000, floor=f"two interpreters start ({py_w * 1000:.0f} ms bare) "
                                 "and import Twisted/autobahn",
               extra={"samples_ms": _ms(pairs["wormhole"]), "loadavg_at_start": load}),
        Row.of("p2pinvite join --pin (console script, regular install)", pairs["join"], "ms",
               scale=1000,
               floor=f"interpreter start-up ({py_p * 1000:.0f} ms bare) + CLI imports",
               extra={"samples_ms": _ms(pairs["join"]), "loadavg_at_start": load}),
        Row("ratio wormhole / p2pinvite", ratio, "x", f">= {TARGET_RATIO:g}x",
            ratio >= TARGET_RATIO, extra={"runs": runs, "warmup": warmup}),
        Row.of("python -c pass (wormhole venv)", pairs["py_wormhole"], "ms", scale=1000,
               extra={"samples_ms": _ms(pairs["py_wormhole"])}),
        Row.of("python -c pass (p2pinvite venv)", pairs["py_p2p"], "ms", scale=1000,
               extra={"samples_ms": _ms(pairs["py_p2p"])}),
        *crypto_rows(cpace, spake),
    ]
    return report("wormhole", rows, args.json, quick=args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
