"""Member swarms on a real LAN: three namespaces on one bridge, real mDNS, real daemons.

Each daemon runs as on a laptop (``--listen <its address>:0 --mdns-interface
<its veth>``). Members find each other on their log's member topic (mDNS,
and the addresses they learned from each other's hellos) and sync; a daemon
that was off catches up when it comes back, with no new code. Partitions
take a namespace's bridge port down (no unicast, no multicast).

Root only (namespaces); skipped with the reason otherwise. Nothing multicasts
outside the namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from p2pinvite.halo.swarm_secrets import SWARM_DIR
from p2pinvite.swarm.peers import KnownPeers

from ..net.netns import Bridge, bridge_namespaces, skip_reason
from .conftest import DaemonProc
from .test_e2e_members import eventually, member_set
from .test_e2e_netns import NsDaemons, ok_json
from .test_e2e_pairing import join

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]


@pytest.fixture
def lan() -> Iterator[tuple[Bridge, NsDaemons]]:
    """Three namespaces on one bridge, and a daemon starter; all torn down afterwards."""
    with bridge_namespaces(3) as bridge:
        starter = NsDaemons()
        try:
            yield bridge, starter
        finally:
            starter.cleanup()


def admit_ns(host: DaemonProc, guest: DaemonProc, *target: str) -> None:
    inv = ok_json(host, "invite", "create", *target)
    r = join(guest, inv["code"], "--json", pin=inv["pin"])
    assert r.returncode == 0, f"{r.stderr}\n{host.stderr()[-3000:]}\n{guest.stderr()[-3000:]}"


def _devices(d: DaemonProc) -> set[str]:
    return {dv["device_key"] for dv in ok_json(d, "devices")}


def _peer_count(d: DaemonProc, log: str) -> int:
    return sum(1 for p in ok_json(d, "space", "peers") if p["log"] == log)


def test_owner_off_admin_admits_owner_back_all_list_three(
        lan: tuple[Bridge, NsDaemons]) -> None:
    bridge, start = lan
    nodes = bridge.nodes
    a, b, c = (start.start(ns, start.home(n), "--log-level", "debug")
               for ns, n in zip(nodes, "abc", strict=True))
    ids = [ok_json(d, "identity", "create", "--name", n)["identity_key"]
           for d, n in ((a, "Alice"), (b, "Bob"), (c, "Carol"))]
    space = ok_json(a, "space", "create", "Team")["space_id"]
    admit_ns(a, b, "--space", space, "--role", "admin")
    eventually(lambda: _peer_count(a, space), lambda n: n == 1, what="A and B connected")
    assert a.stop() == 0
    admit_ns(b, c, "--space", space, "--role", "editor")
    a = start.start(nodes[0], a.home, "--log-level", "debug")
    expected = {(ids[0], "owner"), (ids[1], "admin"), (ids[2], "editor")}
    for d in (a, b, c):
        eventually(lambda d=d: member_set(d, space), lambda s: s == expected, within=10,
                   what=f"{d.home.name} lists the three members")
    # Everyone is connected to everyone (mDNS on the member topic found the rest).
    try:
        for d in (a, b, c):
            eventually(lambda d=d: _peer_count(d, space), lambda n: n == 2, within=10,
                       what=f"{d.home.name} connected to both other members")
    except BaseException:
        for d in (a, b, c):
            print(d.home.name, d.stderr()[-20000:])
        raise
    for d in (a, b, c):
        assert "Traceback" not in d.stderr()


def test_identity_third_device_admitted_by_the_second_while_the_first_is_off(
        lan: tuple[Bridge, NsDaemons]) -> None:
    # The default listener this time (every address, port 0): the hellos then
    # carry the mDNS interface addresses, which become the last known ones.
    bridge, start = lan
    nodes = bridge.nodes
    wild = ("--listen", "0.0.0.0:0")
    a, b, c = (start.start(ns, start.home(n), *wild) for ns, n in zip(nodes, "abc", strict=True))
    ident = ok_json(a, "identity", "create", "--name", "Alice")["identity_key"]
    admit_ns(a, b, "--device")
    eventually(lambda: _peer_count(a, ident), lambda n: n == 1, what="the two devices connected")
    assert a.stop() == 0
    admit_ns(b, c, "--device")
    a = start.start(nodes[0], a.home, *wild)
    all_three = _devices(b)
    assert len(all_three) == 3
    for d in (a, b, c):
        eventually(lambda d=d: _devices(d), lambda s: s == all_three, within=10,
                   what=f"{d.home.name} lists the three devices")
    port_b = ok_json(b, "status")["addresses"][0][1]
    known = KnownPeers(a.home / SWARM_DIR / f"{ident}.peers").addresses()
    assert (nodes[1].addr, port_b) in known


def test_concurrent_admissions_in_two_partitions_both_stand_after_healing(
        lan: tuple[Bridge, NsDaemons]) -> None:
    # A (owner) with guest D in namespace 0; B (admin) with guest E in namespace 1;
    # C (reader) in namespace 2. Namespace 0 is cut off: A admits D while B admits E.
    bridge, start = lan
    nodes = bridge.nodes
    a, b, c = (start.start(ns, start.home(n)) for ns, n in zip(nodes, "abc", strict=True))
    d = start.start(nodes[0], start.home("d"))
    e = start.start(nodes[1], start.home("e"))
    ids = {name: ok_json(x, "identity", "create", "--name", name)["identity_key"]
           for x, name in ((a, "Alice"), (b, "Bob"), (c, "Carol"), (d, "Dan"), (e, "Eve"))}
    space = ok_json(a, "space", "create", "Team")["space_id"]
    admit_ns(a, b, "--space", space, "--role", "admin")
    admit_ns(a, c, "--space", space, "--role", "reader")
    eventually(lambda: _peer_count(a, space), lambda n: n == 2, what="A connected to B and C")
    bridge.partition(0)
    try:
        admit_ns(a, d, "--space", space, "--role", "editor")
        admit_ns(b, e, "--space", space, "--role", "editor")
        assert ids["Eve"] not in {k for k, _ in member_set(a, space)}
        assert ids["Dan"] not in {k for k, _ in member_set(b, space)}
    finally:
        bridge.heal()
    expected = {(ids["Alice"], "owner"), (ids["Bob"], "admin"), (ids["Carol"], "reader"),
                (ids["Dan"], "editor"), (ids["Eve"], "editor")}
    for x in (a, b, c, d, e):
        eventually(lambda x=x: member_set(x, space), lambda s: s == expected, within=30,
                   what=f"{x.home.name} lists both admissions")
    full = ok_json(a, "space", "members", space, "--all")
    assert full["rejected"] == []
