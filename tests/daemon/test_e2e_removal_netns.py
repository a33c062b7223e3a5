"""Removal and rekeying on a real LAN: three namespaces on one bridge, real mDNS and daemons.

Each daemon runs as on a laptop (``--listen <its address>:0 --mdns-interface
<its veth>``), so every member finds every other on the space's member topic.
A removal closes the removed member's connections at once, and the remover
rotates the swarm secret: the others move to the new topic, a member that was
off catches up through any member that has it, and the removed device,
whatever it still holds, is turned away.

The times printed (``-s``) are what the closing note reports: from the
removal's answer to the last live connection of the removed member closed,
and to the last member on the new topic.

Root only (namespaces); skipped with the reason otherwise. Nothing multicasts
outside the namespaces.
"""

from __future__ import annotations

import calendar
import time

import pytest

from ..net.netns import Bridge, skip_reason
from .conftest import DaemonProc
from .test_e2e_members import eventually, member_set
from .test_e2e_netns import NsDaemons, ok_json
from .test_e2e_swarms_netns import admit_ns
from .test_e2e_swarms_netns import lan as lan  # the fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]


def _peers(d: DaemonProc, log: str) -> set[str]:
    """Identities (devices, for an identity log) *d* is connected to in *log*."""
    return {p["identity_key"] or p["device_key"] for p in ok_json(d, "space", "peers")
            if p["log"] == log}


def _swarm(d: DaemonProc, log: str) -> tuple[int, str] | None:
    for s in ok_json(d, "status")["swarms"]:
        if s["log"] == log:
            return s["epoch"], s["topic"]
    return None


def _times(d: DaemonProc, needle: str) -> list[float]:
    """Unix times of *d*'s log lines that contain *needle* (the daemon logs in ms)."""
    out = []
    for line in d.stderr().splitlines():
        if needle in line:
            stamp, _, frac = line.split(" ", 1)[0].rstrip("Z").partition(".")
            out.append(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
                       + int(frac) / 1000)
    return out


def _poll_until(probe: object, deadline: float = 10.0) -> float:
    """Seconds until ``probe()`` is true (polled every 20 ms); fails after *deadline*."""
    assert callable(probe)
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > deadline:
            pytest.fail(f"not reached within {deadline:g} s")
        time.sleep(0.02)
    return time.monotonic() - start


def _team(bridge: Bridge, start: NsDaemons) -> tuple[list[DaemonProc], list[str], str]:
    """Alice (owner) in ns 0, Bob (admin) in ns 1, Carol (editor) in ns 2, all connected."""
    nodes = bridge.nodes
    daemons = [start.start(ns, start.home(n), "--log-level", "debug")
               for ns, n in zip(nodes, "abc", strict=True)]
    a, b, c = daemons
    ids = [ok_json(d, "identity", "create", "--name", n)["identity_key"]
           for d, n in ((a, "Alice"), (b, "Bob"), (c, "Carol"))]
    space = ok_json(a, "space", "create", "Team")["space_id"]
    admit_ns(a, b, "--space", space, "--role", "admin")
    admit_ns(a, c, "--space", space, "--role", "editor")
    for i, d in enumerate(daemons):
        others = {k for j, k in enumerate(ids) if j != i}
        eventually(lambda d=d: _peers(d, space), lambda p, o=others: p == o, within=15,
                   what=f"{d.home.name} connected to both others")
    return daemons, ids, space


def test_a_removal_closes_the_removed_members_connections_and_moves_the_rest(
        lan: tuple[Bridge, NsDaemons]) -> None:
    bridge, start = lan
    (a, b, c), ids, space = _team(bridge, start)
    old = _swarm(a, space)
    assert old is not None
    assert old[0] == 1
    devices = [ok_json(d, "status")["device_key"] for d in (a, b, c)]
    change = ok_json(b, "space", "remove", space, "Carol")
    assert change["epoch"] == 2
    # Within a second every live connection of Carol's is closed, on all sides
    # (each status poll is a CLI run: the log's times below are the exact ones).
    _poll_until(lambda: ids[2] not in _peers(a, space) | _peers(b, space)
                and not _peers(c, space), deadline=5)
    _poll_until(lambda: _swarm(a, space) == _swarm(b, space)
                and _swarm(a, space) not in (None, old), deadline=10)
    [removed_at] = _times(b, "member removed")
    closed = "connection with device {} closed".format
    closed_at = max([t for d in (a, b) for t in _times(d, closed(devices[2][:12]))]
                    + [t for dev in devices[:2] for t in _times(c, closed(dev[:12]))])
    moved_at = max(t for d in (a, b) for t in _times(d, f"member swarm of {space[:12]} (epoch 2"))
    print(f"\nfrom the removal (Bob's log): Carol's last connection closed after "
          f"{closed_at - removed_at:.3f} s, last member on the new topic after "
          f"{moved_at - removed_at:.3f} s")
    assert closed_at - removed_at < 1.0
    new = _swarm(a, space)
    assert new is not None
    assert new[0] == 2
    assert new[1] != old[1]
    # Alice and Bob meet again on the new topic.
    eventually(lambda: _peers(a, space), lambda p: p == {ids[1]}, within=10,
               what="Alice and Bob reconnected on the new topic")
    # Carol's daemon knows it was removed and left; she sees nothing more.
    eventually(lambda: _swarm(c, space), lambda s: s is None, within=5,
               what="Carol's daemon left the space's swarm")
    ok_json(a, "space", "role", space, "Bob", "editor")
    eventually(lambda: member_set(b, space), lambda s: (ids[1], "editor") in s, within=10,
               what="Bob sees his new role")
    time.sleep(1.0)
    assert (ids[1], "admin") in member_set(c, space)  # her copy stopped at her removal
    assert not _peers(c, space)
    for d in (a, b, c):
        assert "Traceback" not in d.stderr()


def test_a_member_off_during_a_removal_catches_up_and_the_removed_one_is_turned_away(
        lan: tuple[Bridge, NsDaemons]) -> None:
    bridge, start = lan
    nodes = bridge.nodes
    (a, b, c), ids, space = _team(bridge, start)
    old = _swarm(b, space)
    # Alice and Carol are off (Carol's laptop was stolen); Bob removes Carol.
    assert a.stop() == 0
    assert c.stop() == 0
    change = ok_json(b, "space", "remove", space, "Carol")
    assert change["epoch"] == 2
    new = _swarm(b, space)
    assert new is not None
    assert new[0] == 2
    # Alice comes back with the old secret only: she reaches Bob where it still
    # opens (he accepts there, and does not advertise it), syncs, opens her
    # grant and follows him to the new topic; no new code.
    time.monotonic()
    a = start.start(nodes[0], a.home, "--log-level", "debug")
    caught_up = _poll_until(lambda: _swarm(a, space) == new, deadline=15)
    print(f"\nAlice, off during the removal, on the new topic {caught_up:.3f} s after "
          f"her daemon was ready")
    assert (ids[2], "editor") not in member_set(a, space)
    eventually(lambda: _peers(a, space), lambda p: p == {ids[1]}, within=10,
               what="Alice and Bob connected on the new topic")
    # Carol comes back with the old secret and a copy that says she is a
    # member: she can find nobody on the new topic, and on the old one both
    # turn her away after the handshake (she is not a member). She learns
    # nothing, not even her removal.
    c = start.start(nodes[2], c.home, "--log-level", "debug")
    assert _swarm(c, space) == old
    ok_json(a, "space", "role", space, "Bob", "editor")
    time.sleep(3.0)
    assert not _peers(c, space)
    assert (ids[2], "editor") in member_set(c, space)
    assert (ids[1], "admin") in member_set(c, space)
    assert "not a member device" in a.stderr() + b.stderr()
    for d in (a, b, c):
        assert "Traceback" not in d.stderr()


def test_a_removed_admin_admits_a_guest_on_its_stale_copy_and_no_member_lists_it(
        lan: tuple[Bridge, NsDaemons]) -> None:
    bridge, start = lan
    nodes = bridge.nodes
    (a, b, c), ids, space = _team(bridge, start)
    ok_json(a, "space", "role", space, "Carol", "reader")
    eventually(lambda: member_set(c, space), lambda s: (ids[2], "reader") in s, within=10,
               what="Carol sees her role")
    e = start.start(nodes[1], start.home("e"))
    eve = ok_json(e, "identity", "create", "--name", "Eve")["identity_key"]
    # Alice (ns 0) is cut off and removes Bob; Bob, not knowing, admits Eve on
    # his copy, and Carol, on his side, takes that admission in.
    bridge.partition(0)
    try:
        assert ok_json(a, "space", "remove", space, "Bob")["epoch"] == 2
        admit_ns(b, e, "--space", space, "--role", "editor")
        eventually(lambda: member_set(c, space), lambda s: (eve, "editor") in s, within=10,
                   what="Carol, with Bob, lists Eve")
    finally:
        bridge.heal()
    # Carol reaches Alice again: their logs merge, and Bob's admission of Eve,
    # concurrent with his removal, has no effect on either.
    expected = {(ids[0], "owner"), (ids[2], "reader")}
    for d in (a, c):
        eventually(lambda d=d: member_set(d, space), lambda s: s == expected, within=15,
                   what=f"{d.home.name} lists Alice and Carol only")
    for d in (a, c):
        full = ok_json(d, "space", "members", space, "--all")
        assert eve not in {m["identity_key"] for m in full["members"] + full["removed"]}
        assert [r["rule"] for r in full["rejected"]] == ["issuer_removed"]
    # Carol opened the secret Alice sealed to her and followed; Bob learns of
    # his removal from one of them and leaves; Eve finds nobody.
    eventually(lambda: _swarm(c, space), lambda s: s == _swarm(a, space), within=10,
               what="Carol on Alice's new secret")
    now = _swarm(a, space)
    assert now is not None
    assert now[0] == 2
    eventually(lambda: _swarm(b, space), lambda s: s is None, within=10,
               what="Bob's daemon left the space's swarm")
    assert not _peers(e, space)
    for d in (a, b, c, e):
        assert "Traceback" not in d.stderr()
