"""Fixtures that run REAL daemon processes in temporary homes, and the real CLI.

Each daemon is ``python -m p2pinvite --home DIR daemon --listen 127.0.0.1:0
--no-mdns`` (loopback only, never multicast). A fixture waits until the IPC
socket answers, and always stops what it started: SIGTERM, then SIGKILL if
the process has not exited within a few seconds. Homes live in short paths
under /tmp (a Unix socket path is limited to 107 bytes) and are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p2pinvite import ipc_codec

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 30.0


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: ours, minus p2pinvite settings, plus *extra*."""
    env = dict(os.environ)
    env.pop("P2PINVITE_HOME", None)
    env.pop("P2PINVITE_LOG_LEVEL", None)  # tests that need it set it themselves
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(home: Path, *args: str, input: str | None = None,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m p2pinvite --home HOME ARGS...`` and capture its output.

    *input* is its standard input (default: empty). The CLI runs in a session
    of its own, without a controlling terminal, as under cron or CI: it can
    never stop to prompt on the terminal of whoever runs the tests.
    """
    return subprocess.run(
        [PY, "-m", "p2pinvite", "--home", str(home), *args],
        capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=REPO,
        input=input, stdin=subprocess.DEVNULL if input is None else None,
        start_new_session=True,
    )


def socket_answers(path: Path) -> bool:
    """True when something accepts connections on the Unix socket *path*."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


@dataclass
class DaemonProc:
    """A daemon subprocess and its home."""

    home: Path
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    returncode: int | None = field(default=None)

    @property
    def socket_path(self) -> Path:
        return self.home / "daemon.sock"

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real CLI against this daemon's home."""
        return run_cli(self.home, *args, input=input)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig: int) -> int:
        """Send *sig*, wait for the exit (bounded), return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.returncode = self.proc.wait(timeout=STOP_TIMEOUT)
        return self.returncode

    def stop(self) -> int:
        """SIGTERM and wait; return the exit status."""
        return self.signal(signal.SIGTERM)

    def kill(self) -> None:
        """Last resort in cleanup: SIGKILL if still running."""
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)


def spawn_daemon(home: Path, extra: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> DaemonProc:
    """Start a daemon process on *home* without waiting for it (*env*: extra variables)."""
    stderr_path = home.parent / f"{home.name}.{time.monotonic_ns()}.stderr"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [PY, "-m", "p2pinvite", "--home", str(home), "daemon",
             "--listen", "127.0.0.1:0", "--no-mdns", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env=child_env(env), cwd=REPO,
        )
    return DaemonProc(home, proc, stderr_path)


def wait_ready(d: DaemonProc) -> None:
    """Wait until the daemon's socket answers; fail with its stderr if it exits."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            pytest.fail(f"daemon exited with {d.proc.returncode}:\n{d.stderr()}")
        if socket_answers(d.socket_path):
            return
        time.sleep(0.02)
    d.kill()
    pytest.fail(f"daemon did not open its socket within {START_TIMEOUT}s:\n{d.stderr()}")


class DaemonFactory:
    """Starts daemons in fresh temporary homes; :meth:`cleanup` stops them all."""

    def __init__(self) -> None:
        self._daemons: list[DaemonProc] = []
        self._dirs: list[Path] = []

    def new_home(self) -> Path:
        """A fresh, short, not-yet-existing home path (its parent is 0700)."""
        base = Path(tempfile.mkdtemp(prefix="p2p-", dir="/tmp"))
        self._dirs.append(base)
        return base / "home"

    def spawn(self, home: Path | None = None, extra: Sequence[str] = (),
              env: Mapping[str, str] | None = None) -> DaemonProc:
        """Start a daemon (not waiting for readiness); it is cleaned up at the end."""
        d = spawn_daemon(home if home is not None else self.new_home(), extra, env)
        self._daemons.append(d)
        return d

    def start(self, home: Path | None = None, extra: Sequence[str] = (),
              env: Mapping[str, str] | None = None) -> DaemonProc:
        """Start a daemon and wait until its IPC socket answers."""
        d = self.spawn(home, extra, env)
        wait_ready(d)
        return d

    def cleanup(self) -> None:
        for d in self._daemons:
            if d.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    d.signal(signal.SIGTERM)
            d.kill()
        for base in self._dirs:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def daemons() -> Iterator[DaemonFactory]:
    """A factory of real daemon processes, all stopped and removed after the test."""
    factory = DaemonFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def daemon(daemons: DaemonFactory) -> DaemonProc:
    """One running daemon in a fresh home."""
    return daemons.start()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory (Unix socket paths are limited), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="p2p-", dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def raw_ipc(d: DaemonProc, *, timeout: float = 10) -> socket.socket:
    """A plain Unix socket connected to *d*'s IPC socket (for bad-input tests)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(d.socket_path))
    return s


def read_reply(s: socket.socket) -> ipc_codec.Reply | None:
    """One framed IPC reply from *s*, or None when the daemon closed the connection."""
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
    return ipc_codec.decode_reply(buf[4 : 4 + int.from_bytes(buf[:4], "big")])
