"""kill -9 of a host daemon at random points while guests redeem one multi-use invitation.

Adversarial suite, crash part (issue 18). A host creates a space and one PIN
invitation good for exactly ``ADMISSIONS`` uses; ``GUESTS`` worker threads
each run a stream of fresh guest daemons that join with that code, in
parallel, while the main thread SIGKILLs the host after random delays and
restarts it on the same home (``--listen 127.0.0.1:0`` re-binds the port it
remembered, so the code's address hint stays true). A join that fails because
the host died is retried with the same code: the host resumes a guest that is
already in its log. After the run, on the restarted host:

* every guest whose ``join`` reported ``admitted`` is a member, exactly once;
* no identity was admitted twice: the log holds one ``space_member``
  admission per distinct guest, and no entry was rejected;
* the log opens (by the daemon, and by the library on a copy of the file);
* the invitation's use count equals the admissions in the log that redeemed it.

The RNG seed is printed (``-s`` shows it); ``P2PINVITE_CRASH_SEED`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p2pinvite.halo.credentials import SpaceMember, decode_credential
from p2pinvite.halo.log import SpaceLog
from p2pinvite.halo.spaces import SPACE_LOG, SPACES_DIR

from ..soak import size
from .conftest import DaemonFactory, DaemonProc
from .test_e2e_pairing import join, ok_json

pytestmark = pytest.mark.slow

#: Admissions in all (the invitation's ``--uses``): 200 at soak size.
ADMISSIONS = size(40, 200)
#: Guests joining at once (each a daemon process of its own).
GUESTS = size(3, 6)
#: Bounds of the random time the host runs between two kills (seconds).
KILL_AFTER = (0.05, 1.5)
#: Share of the kills aimed at a join in progress, and how far into it (seconds).
TARGETED = 0.7
JOIN_WINDOW = 0.3
#: How many times one guest tries the code before the test gives up on it.
MAX_TRIES = 25
#: Deadline of the whole run of admissions (seconds).
RUN_DEADLINE = size(300, 3600)


def seed_rng() -> random.Random:
    """A seeded RNG; the seed is printed so that a failing run can be replayed."""
    seed = int(os.environ.get("P2PINVITE_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"P2PINVITE_CRASH_SEED={seed}")
    return random.Random(seed)


def sigkill(d: DaemonProc) -> None:
    """SIGKILL *d* and reap it: nothing of its shutdown path runs."""
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)


def log_copy(home: Path, space: str, dest: Path) -> SpaceLog:
    """Open a copy of *space*'s log in *home* (its daemon stopped) with the library."""
    dest.mkdir()
    shutil.copy(home / SPACES_DIR / space / SPACE_LOG, dest / SPACE_LOG)
    return SpaceLog.open(dest / SPACE_LOG)


def admissions_by(log: SpaceLog, invitation_id: bytes) -> list[bytes]:
    """Subjects of every ``space_member`` entry issued through *invitation_id*, doubles kept."""
    subjects = []
    for raw in log.raw_entries():
        cred = decode_credential(raw)
        if isinstance(cred.assertion, SpaceMember) and cred.assertion.invitation == invitation_id:
            subjects.append(cred.subject)
    return subjects


@dataclass
class Run:
    """What the guests saw, shared between the worker threads."""

    code: str
    pin: str
    left: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: identity key -> guest name, for every join that reported ``admitted``.
    admitted: dict[str, str] = field(default_factory=dict)
    #: Failed join attempts (retried), and what the failures said.
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    #: Host kills so far, and joins that ran across one (the guest daemon redials
    #: and the host resumes the session, or the join fails and is retried).
    kills: int = 0
    interrupted: int = 0
    #: Joins running now, and an event set while there is at least one.
    in_flight: int = 0
    joining: threading.Event = field(default_factory=threading.Event)

    def ticket(self) -> int | None:
        with self.lock:
            if self.left == 0 or self.errors:
                return None
            self.left -= 1
            return self.left


def guest_worker(daemons: DaemonFactory, run: Run) -> None:
    """Admit fresh guests one after the other until no ticket is left."""
    try:
        while (n := run.ticket()) is not None:
            guest = daemons.start()
            name = f"Guest {n}"
            key = ok_json(guest, "identity", "create", "--name", name)["identity_key"]
            for _ in range(MAX_TRIES):
                with run.lock:
                    kills_before = run.kills
                    run.in_flight += 1
                    run.joining.set()
                try:
                    r = join(guest, run.code, "--json", pin=run.pin)
                finally:
                    with run.lock:
                        run.in_flight -= 1
                        if not run.in_flight:
                            run.joining.clear()
                        if run.kills != kills_before:
                            run.interrupted += 1
                states = [json.loads(line).get("state") for line in r.stderr.splitlines()
                          if line.startswith("{")]
                if r.returncode == 0:
                    assert states, r.stderr
                    assert states[-1] == "admitted", r.stderr
                    assert json.loads(r.stdout)["identity_key"] == key
                    with run.lock:
                        assert key not in run.admitted
                        run.admitted[key] = name
                    break
                with run.lock:
                    run.failures.append(r.stderr.strip().splitlines()[-1] if r.stderr else "?")
                # The host is down or restarting: its port refuses until it is back.
                time.sleep(0.2)
            else:
                raise AssertionError(f"{name} never got in: {r.stderr}")
            # Off again: a guest's swarm connections would only load the host.
            assert guest.stop() == 0, guest.stderr()
            assert "Traceback" not in guest.stderr()
    except BaseException as exc:  # reported by the main thread
        with run.lock:
            run.errors.append(repr(exc))
    finally:
        run.done.set()


def test_admissions_survive_a_host_killed_at_random_points(
        daemons: DaemonFactory, short_tmp: Path) -> None:
    rng = seed_rng()
    host = daemons.start()
    ok_json(host, "identity", "create", "--name", "Host")
    space = ok_json(host, "space", "create", "Crowd")["space_id"]
    inv = ok_json(host, "invite", "create", "--space", space, "--role", "reader",
                  "--uses", str(ADMISSIONS))
    home = host.home
    run = Run(inv["code"], inv["pin"], ADMISSIONS)

    workers = [threading.Thread(target=guest_worker, args=(daemons, run), daemon=True)
               for _ in range(GUESTS)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + RUN_DEADLINE
    while any(w.is_alive() for w in workers):
        assert time.monotonic() < deadline, f"admissions did not finish: {run.errors}"
        run.done.clear()
        # Wake early when a worker ends, so the last kill lands while guests still run.
        run.done.wait(rng.uniform(*KILL_AFTER))
        if not any(w.is_alive() for w in workers):
            break
        if rng.random() < TARGETED:
            # Aim at a join in progress: it runs for a fraction of a second only,
            # and a purely random kill mostly lands while guests start.
            run.joining.wait(5)
            time.sleep(rng.uniform(0, JOIN_WINDOW))
        sigkill(host)
        with run.lock:
            run.kills += 1
        assert "Traceback" not in host.stderr(), host.stderr()[-3000:]
        time.sleep(rng.uniform(0, 0.5))  # guests meet a closed port for a while
        host = daemons.start(home)
    for w in workers:
        w.join(timeout=60)
    assert run.errors == [], f"{run.errors}\n{host.stderr()[-3000:]}"
    print(f"{run.kills} kills; {run.interrupted} joins ran across a kill; "
          f"{len(run.failures)} failed and were retried: {sorted(set(run.failures))}")
    assert run.kills >= 3, "too few kills to mean anything"
    assert run.interrupted >= 1, "no kill hit a join"

    # One more kill after the last admission: what follows is what is on disk.
    sigkill(host)
    host = daemons.start(home)
    listed = ok_json(host, "space", "members", space)
    keys = [m["identity_key"] for m in listed]
    assert len(keys) == len(set(keys)), "a member listed twice"
    assert set(run.admitted) <= set(keys), set(run.admitted) - set(keys)
    assert len(run.admitted) == ADMISSIONS  # every ticket ended in a success
    full = ok_json(host, "space", "members", space, "--all")
    assert full["rejected"] == []
    assert full["removed"] == []
    [record] = [i for i in ok_json(host, "invite", "list", "--all") if i["id"] == inv["id"]]
    assert "Traceback" not in host.stderr()
    assert host.stop() == 0

    log = log_copy(home, space, short_tmp / "copy")
    try:
        subjects = admissions_by(log, bytes.fromhex(inv["id"]))
        redeemers = log.state.redeemers(bytes.fromhex(inv["id"]))
    finally:
        log.close()
    assert len(subjects) == len(set(subjects)), "an identity admitted twice"
    assert {s.hex() for s in subjects} == set(run.admitted)
    assert sorted(redeemers) == sorted(subjects)
    assert record["uses"] == len(subjects) == ADMISSIONS, record
    assert record["status"] == "exhausted"
