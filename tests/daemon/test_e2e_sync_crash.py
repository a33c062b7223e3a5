"""kill -9 of a member in the middle of a long sync, over loopback.

The owner's log gets thousands of entries while both daemons are off (written
through the halo layer, as admissions by the owner's device); then the
member comes back and syncs them, and is killed with SIGKILL half-way. After
a restart its log opens, every entry it had reported durable (the
``entries_new`` of its peer, counted only after the fsync of each batch) is
still there, and the sync completes.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import trio

from p2pinvite.client import connect

from ..halo.strategies import admit_many
from .conftest import DaemonFactory, DaemonProc
from .test_e2e_members import admit, eventually
from .test_e2e_pairing import ok_json

pytestmark = pytest.mark.slow

#: Entries added while the member is away (thousands: a sync of many batches).
ENTRIES = 5000


def _count(d: DaemonProc, space: str) -> int:
    return len(ok_json(d, "space", "members", space))


def big_space(daemons: DaemonFactory, entries: int) -> tuple[Path, Path, str]:
    """Alice's space with Bob in it, then *entries* more admissions Bob has not seen.

    Both daemons are stopped; returns their homes and the space id.
    """
    a, b = daemons.start(), daemons.start()
    ok_json(a, "identity", "create", "--name", "Alice")
    ok_json(b, "identity", "create", "--name", "Bob")
    space = ok_json(a, "space", "create", "Big")["space_id"]
    admit(a, b, space, "editor")
    assert a.stop() == 0
    assert b.stop() == 0
    trio.run(admit_many, a.home, bytes.fromhex(space), entries)
    return a.home, b.home, space


def test_a_member_killed_mid_sync_keeps_what_it_stored_and_catches_up(
        daemons: DaemonFactory) -> None:
    home_a, home_b, space = big_space(daemons, ENTRIES)
    total = 2 + ENTRIES

    a = daemons.start(home_a)
    b = daemons.start(home_b)
    durable = 0
    with connect(home_b) as client:
        deadline = time.monotonic() + 60
        while durable < ENTRIES // 10:
            assert time.monotonic() < deadline, f"no sync progress: {b.stderr()[-3000:]}"
            durable = max([durable] + [p.entries_new for p in client.spaces.peers(space)])
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(timeout=10)
    assert durable < ENTRIES, "the sync finished before the kill: nothing was interrupted"
    assert a.stop() == 0

    b = daemons.start(home_b)  # alone: what it has is what survived the kill
    kept = _count(b, space)
    assert kept >= 2 + durable, (kept, durable)
    assert kept < total

    a = daemons.start(home_a)
    eventually(lambda: _count(b, space), lambda n: n == total, within=60,
               what="the member caught up after its restart")
    assert ok_json(b, "space", "members", space, "--all")["rejected"] == []
    for d in (a, b):
        assert "Traceback" not in d.stderr()
