"""halo/log.py under real kill -9: every acknowledged append survives, the log always opens.

A child process (log_writer_child.py) appends admissions from 4 concurrent
tasks and prints ``<n> <id>`` after each ``append`` returns. The parent SIGKILLs
it at a random moment, reopens the same file, checks that every reported entry
is there and admitted member n, and starts the next child on the same file.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pinvite.halo.log import SpaceLog

from .log_writer_child import member

CHILD = Path(__file__).with_name("log_writer_child.py")
ROUNDS = 24


def _read_lines(proc: subprocess.Popen[bytes], until: float) -> list[str]:
    """Lines the child printed before *until* (monotonic time)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode().splitlines()


@pytest.mark.slow
def test_kill_9_never_loses_an_acknowledged_append(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    rng = random.Random(0x5EED)
    acknowledged: dict[int, bytes] = {}  # n -> entry id, as reported by children
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(path)], stdout=subprocess.PIPE, env=env,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().decode()  # blocks until the log is open
            assert first.startswith("ready "), first
            assert int(first.split()[1]) >= len(acknowledged) + 2
            lines = _read_lines(proc, time.monotonic() + rng.uniform(0.005, 0.15))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.stdout is not None
            lines += proc.stdout.read().decode().splitlines()  # already in the pipe
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        for line in lines:
            parts = line.split()
            if len(parts) != 2 or len(parts[1]) != 64:  # the last line may be cut
                continue
            acknowledged[int(parts[0])] = bytes.fromhex(parts[1])

        with SpaceLog.open(path) as log:
            assert log.count >= len(acknowledged) + 2
            for n, entry in acknowledged.items():
                assert log.has(entry)
                m = log.state.member(member(n))
                assert m is not None
                assert m.entry == entry
            assert all(s.applied for s in log.resolver.statuses().values())
    assert len(acknowledged) > ROUNDS  # the children did make progress
    with SpaceLog.open(path, full_verify=True) as log:
        assert log.count >= len(acknowledged) + 2
        assert len(log.heads()) == 1  # one writer, one linear history
