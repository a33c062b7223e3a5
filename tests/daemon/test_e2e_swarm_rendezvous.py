"""End to end beyond one LAN: a member swarm kept in sync through the pair mailboxes and relay.

Topology (:func:`tests.net.netns.routed_namespaces`, no direct link): a
``host`` site with Alice and Bob, a ``guest`` site with Carol, both reaching a
``rendezvous`` namespace (mailbox server and transit relay, which does not
forward). Real daemons, ``--no-mdns --mailbox ... --transit ...``.

The two sites never route to each other. Carol is admitted through the
relay (the invitation's mailbox); the admission makes each of Alice's and
Carol's devices known to the other, so their swarms meet at the pair mailbox
their device keys and the swarm secret name, and connect through the relay.
Issue 20: all three converge on the same members after an admission (Bob,
in Alice's site) and after a removal (Bob again), whose rekeying moves Alice
and Carol to new names, where they meet again through the relay.

Root only; skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ..net.netns import Routed, routed_namespaces, skip_reason
from ..rendezvous.servers import MailboxServer, RelayServer, mailbox_server, relay_server
from .conftest import DaemonProc
from .test_e2e_members import eventually, member_set
from .test_e2e_netns import NsDaemons, ok_json
from .test_e2e_pairing import join

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]

#: How long meeting through the mailbox and relay may take (a relay attempt waits 20 s).
MEET = 60.0


@dataclass
class World:
    net: Routed
    mailbox: MailboxServer
    relay: RelayServer
    daemons: NsDaemons

    def start(self, site: str, name: str) -> DaemonProc:
        ns = self.net.host if site == "host" else self.net.guest
        return self.daemons.start(ns, self.daemons.home(name), "--no-mdns",
                                  "--mailbox", self.mailbox.url,
                                  "--transit", self.relay.address)


@pytest.fixture
def world() -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(routed_namespaces())
        prefix = net.rendezvous.argv()
        relay = stack.enter_context(relay_server(host=net.service, prefix=prefix))
        mailbox = stack.enter_context(mailbox_server(host=net.service, prefix=prefix))
        daemons = NsDaemons()
        stack.callback(daemons.cleanup)
        yield World(net, mailbox, relay, daemons)


def _swarm(d: DaemonProc, log: str) -> tuple[int, str] | None:
    for s in ok_json(d, "status")["swarms"]:
        if s["log"] == log:
            return s["epoch"], s["topic"]
    return None


def _peers(d: DaemonProc, space: str) -> set[str]:
    return {p["identity_key"] for p in ok_json(d, "space", "peers", space)}


def _lists(d: DaemonProc, space: str, members: set[tuple[str, str]]) -> None:
    def probe() -> set[tuple[str, str]]:
        return member_set(d, space)

    eventually(probe, lambda s: s == members, within=MEET,
               what=f"{d.home.name} lists {len(members)} members")


def _happy(relay: RelayServer) -> int:
    return sum(1 for u in relay.usage() if u["mood"] == "happy" and u["total_bytes"] > 0)


def test_three_members_one_only_through_the_relay_converge_after_admission_and_removal(
        world: World) -> None:
    w = world
    alice, carol = w.start("host", "alice"), w.start("guest", "carol")
    ids = {n: ok_json(d, "identity", "create", "--name", n)["identity_key"]
           for n, d in (("Alice", alice), ("Carol", carol))}
    space = ok_json(alice, "space", "create", "Far")["space_id"]
    inv = ok_json(alice, "invite", "create", "--space", space, "--role", "editor")
    relayed = _happy(w.relay)
    # The sites never route to each other: Carol is admitted through the relay,
    r = join(carol, inv["code"], "--json", pin=inv["pin"])
    assert r.returncode == 0, f"{r.stderr}\n{alice.stderr()[-3000:]}"
    assert "reached us through the relay" in alice.stderr()
    # and the admission made each a known device of the other: they meet at
    # their pair mailbox and connect through the relay, with no code.
    eventually(lambda: _peers(alice, space), lambda p: p == {ids["Carol"]},
               within=MEET, what="Alice meets Carol through the relay")
    eventually(lambda: _peers(carol, space), lambda p: p == {ids["Alice"]},
               within=MEET, what="Carol meets Alice through the relay")

    # An admission in Alice's site reaches Carol.
    bob = w.start("host", "bob")
    ids["Bob"] = ok_json(bob, "identity", "create", "--name", "Bob")["identity_key"]
    inv = ok_json(alice, "invite", "create", "--space", space, "--role", "reader")
    r = join(bob, inv["code"], "--json", pin=inv["pin"])
    assert r.returncode == 0, f"{r.stderr}\n{alice.stderr()[-3000:]}"
    three = {(ids["Alice"], "owner"), (ids["Carol"], "editor"), (ids["Bob"], "reader")}
    for d in (alice, bob, carol):
        _lists(d, space, three)

    # A removal rotates the swarm secret: Alice and Carol meet again at new names.
    epoch = _swarm(alice, space)
    assert epoch is not None
    change = ok_json(alice, "space", "remove", space, "Bob")
    assert change["epoch"] == epoch[0] + 1
    new = eventually(lambda: _swarm(alice, space), lambda s: s is not None and s != epoch,
                     what="Alice moves to the new epoch")
    eventually(lambda: _swarm(carol, space), lambda s: s == new, within=MEET,
               what="Carol moves to the new epoch")
    two = {(ids["Alice"], "owner"), (ids["Carol"], "editor")}
    for d in (alice, carol):
        _lists(d, space, two)
    eventually(lambda: member_set(bob, space), lambda s: s == two, within=MEET,
               what="Bob learns of his removal")
    eventually(lambda: _peers(carol, space), lambda p: p == {ids["Alice"]}, within=MEET,
               what="Carol meets Alice on the new topic, through the relay")
    eventually(lambda: _peers(alice, space), lambda p: p == {ids["Carol"]}, within=MEET,
               what="Alice sees Carol on the new topic")
    # The relay carried the join, the member connection before the removal and
    # the one on the new names (a pairing is logged when it ends: Carol's stop
    # ends the last).
    assert carol.stop() == 0
    eventually(lambda: _happy(w.relay), lambda n: n >= relayed + 3, within=MEET,
               what="the join and two member connections relayed, each carrying bytes")
    assert "Traceback" not in carol.stderr()
    for d in (alice, bob):
        assert "Traceback" not in d.stderr()
