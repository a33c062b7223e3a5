"""Daemon processes for the benchmark parts: start, stop, read their memory.

Every daemon runs in its own home under a scratch directory, listens on
127.0.0.1 with mDNS off (nothing leaves loopback), and is stopped on every
exit path of :func:`daemons`.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from p2pinvite.client import Client, connect

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
START_TIMEOUT = 20.0
STEP_TIMEOUT = 60.0
WARMUP_JOINS = 2


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft fd limit towards *wanted* (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- daemons -------------------------------------------------------------------------


class Daemon:
    """A daemon process in its own home (stopped by :meth:`stop`)."""

    def __init__(self, home: Path, argv_prefix: Sequence[str] = (),
                 extra: Sequence[str] = ("--listen", "127.0.0.1:0", "--no-mdns")) -> None:
        self.home = home
        self.log = home.parent / f"{home.name}.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [*argv_prefix, PY, "-m", "p2pinvite", "--home", str(home), "daemon", *extra],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"daemon did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(1)
            s.connect(str(self.home / "daemon.sock"))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def client(self) -> Client:
        return connect(self.home, timeout=STEP_TIMEOUT)

    @property
    def pid(self) -> int:
        """The daemon's pid as it reports it (differs from Popen's under a wrapper)."""
        with self.client() as c:
            return c.status().pid

    def address(self) -> tuple[str, int]:
        with self.client() as c:
            host, port = c.status().addresses[0]
            return host, port

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def daemons() -> Iterator[tuple[Path, list[Daemon]]]:
    """A scratch directory and a list of daemons, all stopped and removed on exit."""
    base = Path(tempfile.mkdtemp(prefix="p2pb-", dir="/tmp"))
    started: list[Daemon] = []
    try:
        yield base, started
    finally:
        for d in started:
            d.stop()
        shutil.rmtree(base, ignore_errors=True)


def rss_kib(pid: int) -> int:
    """VmRSS of *pid* in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def socket_fds(pid: int) -> int:
    """How many sockets *pid* has open."""
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith("socket:"):
                n += 1
    return n


def settled_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS after *seconds* of idling (the last of a few samples)."""
    end = time.monotonic() + seconds
    value = rss_kib(pid)
    while time.monotonic() < end:
        time.sleep(0.2)
        value = rss_kib(pid)
    return value


# -- join wall time ----------------------------------------------------------------------


def console_script() -> list[str]:
    script = Path(PY).parent / "p2pinvite"
    if script.exists():
        return [str(script)]
    print("note: no console script next to the interpreter; timing python -m p2pinvite",
          file=sys.stderr)
    return [PY, "-m", "p2pinvite"]
