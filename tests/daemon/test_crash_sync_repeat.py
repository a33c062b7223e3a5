"""Repeated kill -9 of a member at random points of one large sync, over loopback.

Adversarial suite, crash part (issue 18); test_e2e_sync_crash.py kills once,
this kills the receiving member ``KILLS`` times in a row. The owner's log gets
``ENTRIES`` admissions while both daemons are off; then the member syncs them
from the running owner and is SIGKILLed each time it has stored a random
number of new entries (its ``entries_new``, counted after each batch's
fsync). After every kill a copy of its log (with the checkpoint) opens with
the library and holds at least what it had before plus what it reported
durable: the count only grows. After every restart nothing is rejected, and
at the end every entry arrived.

The RNG seed is printed (``P2PINVITE_CRASH_SEED`` replays a run).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from p2pinvite.client import connect
from p2pinvite.halo.log import SpaceLog
from p2pinvite.halo.logfile import checkpoint_path
from p2pinvite.halo.spaces import SPACE_LOG, SPACES_DIR

from ..soak import size
from .conftest import DaemonFactory, DaemonProc
from .test_crash_admissions import seed_rng, sigkill
from .test_e2e_members import eventually
from .test_e2e_pairing import ok_json
from .test_e2e_sync_crash import _count, big_space

pytestmark = pytest.mark.slow

#: Entries added while the member is away, and kills during their sync.
ENTRIES = size(8000, 30000)
KILLS = size(5, 20)
#: No new entry for this long: the sync is over (seconds).
QUIET = 5.0


def entries_on_disk(home: Path, space: str, scratch: Path) -> int:
    """Open a copy of *space*'s log in *home* (and its checkpoint) with the library."""
    src = home / SPACES_DIR / space / SPACE_LOG
    dest = scratch / f"copy-{time.monotonic_ns()}"
    dest.mkdir()
    shutil.copy(src, dest / SPACE_LOG)
    if checkpoint_path(src).exists():
        shutil.copy(checkpoint_path(src), checkpoint_path(dest / SPACE_LOG))
    log = SpaceLog.open(dest / SPACE_LOG)
    try:
        return len(log)
    finally:
        log.close()
        shutil.rmtree(dest)


def sync_until(a: DaemonProc, b: DaemonProc, space: str, new: int, within: float = 60) -> int:
    """Wait until *b* stored at least *new* entries from its peers since it started
    (or has them all); return the count it reported durable."""
    durable = 0
    with connect(b.home) as client:
        deadline = time.monotonic() + within
        grew = time.monotonic()
        while durable < new:
            peers = client.spaces.peers(space)
            assert time.monotonic() < deadline, (
                f"no sync progress ({durable}): {peers}\n"
                f"{b.stderr()[-3000:]}\n--\n{a.stderr()[-5000:]}")
            seen = max([durable] + [p.entries_new for p in peers])
            if seen > durable:
                durable, grew = seen, time.monotonic()
            elif time.monotonic() - grew > QUIET:
                break  # the sync is over: nothing left to interrupt
    return durable


def test_a_member_killed_again_and_again_during_one_sync_catches_up(
        daemons: DaemonFactory, short_tmp: Path) -> None:
    rng = seed_rng()
    home_a, home_b, space = big_space(daemons, ENTRIES)
    total = entries_on_disk(home_a, space, short_tmp)

    before = entries_on_disk(home_b, space, short_tmp)
    a = daemons.start(home_a)
    interrupted = kills = 0
    for k in range(KILLS):
        if before == total:
            break  # the sync is complete: no kill can interrupt it any more
        b = daemons.start(home_b)
        if k:  # the restarted member refused nothing it had stored or now receives
            assert ok_json(b, "space", "members", space, "--all")["rejected"] == []
        # A random point of this stretch of the sync: the kills together stay
        # within the whole, so most of them interrupt it.
        durable = sync_until(a, b, space, rng.randint(1, ENTRIES // (KILLS + 1)))
        time.sleep(rng.uniform(0, 0.05))  # off the batch boundary: a batch is in flight
        sigkill(b)
        kills += 1
        after = entries_on_disk(home_b, space, short_tmp)
        assert after >= before + durable, (k, before, durable, after)
        interrupted += after < total
        print(f"kill {k + 1}: {durable} new entries reported durable, {after} on disk")
        before = after
    print(f"{kills} kills, {interrupted} during the sync; {before} of {total} entries before "
          "the last restart")
    assert interrupted >= 1, "every kill came after the sync: nothing was interrupted"

    b = daemons.start(home_b)
    eventually(lambda: _count(b, space), lambda n: n == total - 1, within=120,
               what="the member caught up after its last restart")
    assert ok_json(b, "space", "members", space, "--all")["rejected"] == []
    assert b.stop() == 0
    assert entries_on_disk(home_b, space, short_tmp) == total
    for d in (a, b):
        assert "Traceback" not in d.stderr()
