"""The real magic-wormhole mailbox server and transit relay, for tests.

Both are Twisted programs with dependencies of their own (Twisted, autobahn),
so they live in a venv of their own, ``.venv-servers`` at the repository root,
built on first use by :func:`ensure_servers_venv` (idempotent; a marker file
records the pins it was built with, and a lock serialises concurrent builds).

:func:`mailbox_server` and :func:`relay_server` are context managers that
start one server on a kernel-picked port of *host* (127.0.0.1 by default),
read the port from its log, and stop it on every path out. Both take a
command *prefix* so that later tests can run them inside a network namespace
(``["ip", "netns", "exec", NS]``); ``ip netns exec`` execs the command, so
the process we signal is the server itself.

The relay writes one JSON line per finished pairing to its usage log
(``--log-fd``): ``{"started", "total_time", "waiting_time", "total_bytes",
"mood"}``; ``total_bytes`` counts both directions after ``ok`` (not the
handshake lines). :meth:`RelayServer.wait_usage` reads them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-servers"
PINS = (
    "magic-wormhole-mailbox-server>=0.8,<0.9",
    "magic-wormhole-transit-relay>=0.5,<0.6",
)
MARKER = VENV / "p2pinvite-servers-pins.txt"
#: Seconds a server may take to print its port (the first start compiles bytecode).
START_TIMEOUT = 60.0

_MAILBOX_PORT_RE = re.compile(r"PrivacyEnhancedSite starting on (\d+)")
_RELAY_PORT_RE = re.compile(r"ServerFactory starting on (\d+)")


def _progress(text: str) -> None:
    print(f"[servers venv] {text}", file=sys.stderr, flush=True)


def ensure_servers_venv() -> Path:
    """Build ``.venv-servers`` with the pinned servers unless it is already there; its path."""
    wanted = "\n".join(PINS) + "\n"
    twist = VENV / "bin" / "twist"

    def ready() -> bool:
        return twist.exists() and MARKER.exists() and MARKER.read_text() == wanted

    if ready():
        return VENV
    VENV.mkdir(exist_ok=True)
    with open(VENV / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest process may be building it
        if ready():
            return VENV
        started = time.monotonic()
        _progress(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        _progress(f"installing {', '.join(PINS)} (about a minute)")
        res = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", *PINS],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0 or not twist.exists():
            raise RuntimeError(f"installing the servers failed:\n{res.stdout[-3000:]}"
                               f"\n{res.stderr[-3000:]}")
        MARKER.write_text(wanted)
        _progress(f"ready in {time.monotonic() - started:.0f} s")
    return VENV


@dataclass
class RunningServer:
    """A started server: where it listens and where it logs."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for IPv6)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class MailboxServer(RunningServer):
    """A running magic-wormhole mailbox server."""

    @property
    def url(self) -> str:
        """Its WebSocket URL (``ws://host:port/v1``)."""
        return f"ws://{self.address}/v1"


@dataclass
class RelayServer(RunningServer):
    """A running transit relay, with its usage log."""

    usage_log: Path

    def usage(self) -> list[dict[str, Any]]:
        """The usage records so far, one per finished pairing (or lonely connection)."""
        text = self.usage_log.read_text() if self.usage_log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_usage(self, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least *count* records exist (they are written on disconnect)."""
        deadline = time.monotonic() + timeout
        while len(records := self.usage()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the relay logged {len(records)} usage records, "
                                     f"wanted {count}")
            time.sleep(0.05)
        return records


def _endpoint(host: str) -> str:
    """A Twisted server endpoint on a kernel-picked port of *host* (colons escaped)."""
    return "tcp:0:interface=" + host.replace(":", "\\:")


def _wait_port(proc: subprocess.Popen[bytes], log: Path, pattern: re.Pattern[str],
               what: str) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if m := pattern.search(text):
            return int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"the {what} exited with {proc.returncode}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {what} printed no port within {START_TIMEOUT:g} s:\n"
                               f"{text[-3000:]}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL after 5 s; reap it."""
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _run(argv: Sequence[str], *, prefix: Sequence[str], log: Path,
         pass_fds: Sequence[int] = ()) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([*prefix, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=log.parent,
                                start_new_session=True, pass_fds=tuple(pass_fds))
    try:
        yield proc
    finally:
        _stop(proc)


@contextlib.contextmanager
def _workdir(workdir: Path | None, prefix: str) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def _twist() -> str:
    return str(ensure_servers_venv() / "bin" / "twist")


@contextlib.contextmanager
def mailbox_server(*, host: str = "127.0.0.1", prefix: Sequence[str] = (),
                   workdir: Path | None = None) -> Iterator[MailboxServer]:
    """A mailbox server listening on a kernel-picked port of *host*, stopped on exit."""
    with _workdir(workdir, "p2pi-mailbox-") as wd:
        log = wd / "mailbox.log"
        argv = [_twist(), "--log-format=text", "--log-file=-", "wormhole-mailbox",
                f"--port={_endpoint(host)}", f"--channel-db={wd / 'channel.sqlite'}"]
        with _run(argv, prefix=prefix, log=log) as proc:
            port = _wait_port(proc, log, _MAILBOX_PORT_RE, "mailbox server")
            yield MailboxServer(proc, host, port, log)


@contextlib.contextmanager
def relay_server(*, host: str = "127.0.0.1", prefix: Sequence[str] = (),
                 workdir: Path | None = None) -> Iterator[RelayServer]:
    """A transit relay listening on a kernel-picked port of *host*, stopped on exit."""
    with _workdir(workdir, "p2pi-relay-") as wd:
        log, usage = wd / "relay.log", wd / "relay-usage.jsonl"
        fd = os.open(usage, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            argv = [_twist(), "--log-format=text", "--log-file=-", "transitrelay",
                    f"--port={_endpoint(host)}", f"--log-fd={fd}"]
            with _run(argv, prefix=prefix, log=log, pass_fds=(fd,)) as proc:
                os.close(fd)  # the child has its copy
                fd = -1
                port = _wait_port(proc, log, _RELAY_PORT_RE, "transit relay")
                yield RelayServer(proc, host, port, log, usage)
        finally:
            if fd >= 0:
                os.close(fd)
