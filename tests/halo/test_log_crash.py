"""halo/log.py under real kill -9: every acknowledged append survives, the log always opens.

A child process (log_writer_child.py) appends from 4 concurrent tasks and prints
``<seq> <n>`` after each ``append`` returns. The parent SIGKILLs it at a random
moment, reopens the same file, checks that every reported entry is there with
the reported content, and starts the next child on the same file.
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

from p2pinvite import wire
from p2pinvite.halo.log import SpaceLog

from .log_writer_child import ToyValidator

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
    acknowledged: dict[int, int] = {}  # seq -> n, as reported by children
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(path)], stdout=subprocess.PIPE, env=env,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().decode()  # blocks until the log is open
            assert first.startswith("ready "), first
            assert int(first.split()[1]) >= len(acknowledged)
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
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:  # the last line may be cut by the kill
                continue
            seq, n = map(int, parts)
            acknowledged[seq] = n

        v = ToyValidator()
        with SpaceLog.open(path, v) as log:
            assert log.length >= len(acknowledged)
            entries = log.entries()
            for seq, n in acknowledged.items():
                assert wire.unpack(entries[seq].credential)["n"] == n
            assert v.ns == sorted(set(v.ns))  # the rules held through every crash
    assert len(acknowledged) > ROUNDS  # the children did make progress
    v = ToyValidator()
    with SpaceLog.open(path, v, full_verify=True) as log:
        assert log.length >= max(acknowledged) + 1
