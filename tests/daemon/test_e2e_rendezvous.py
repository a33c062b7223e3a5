"""End to end over loopback: pairing through a rendezvous mailbox and transit relay.

Real daemons (mDNS off), the real magic-wormhole mailbox server and transit
relay (tests/rendezvous/servers.py, in their own virtualenv). On loopback
every path is direct, so the relayed case is made by taking the address
hints out of the code: the guest then has nothing to dial but what the
mailbox tells it, and the host offers no loopback address there (it offers
what a peer on another network could use). The namespace tests
(test_e2e_rendezvous_netns.py) have real separate networks.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from p2pinvite.invitations.codes import LinkCode

from ..rendezvous.servers import MailboxServer, RelayServer, mailbox_server, relay_server
from .conftest import DaemonFactory, DaemonProc
from .test_e2e_members import eventually
from .test_e2e_pairing import join, ok_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[MailboxServer, RelayServer]:  # type: ignore[misc]
    with mailbox_server(workdir=tmp_path_factory.mktemp("mailbox")) as mailbox, \
            relay_server(workdir=tmp_path_factory.mktemp("relay")) as relay:
        yield mailbox, relay


def _host(daemons: DaemonFactory, mailbox: str, relay: RelayServer | None) -> DaemonProc:
    extra = ["--mailbox", mailbox]
    if relay is not None:
        extra += ["--transit", relay.address]
    host = daemons.start(extra=extra)
    ok_json(host, "identity", "create", "--name", "Host")
    return host


def _without_hints(code: str) -> str:
    """The code with its address hints taken out: only the mailbox leads to the host."""
    return dataclasses.replace(LinkCode.parse(code), hints=()).encode()


def test_a_guest_with_no_direct_path_joins_through_the_relay(
        daemons: DaemonFactory, servers: tuple[MailboxServer, RelayServer]) -> None:
    mailbox, relay = servers
    host = _host(daemons, mailbox.url, relay)
    guest = daemons.start()
    ok_json(guest, "identity", "create", "--name", "Guest")
    space = ok_json(host, "space", "create", "Far")["space_id"]
    used = len(relay.usage())
    guests = [guest]
    for i in range(3):  # the common path, more than once: each join its own relay attempt
        inv = ok_json(host, "invite", "create", "--space", space, "--role", "reader")
        assert LinkCode.parse(inv["code"]).mailbox == mailbox.url
        eventually(lambda: ok_json(host, "status")["rendezvous"],
                   lambda r: r["connected"] and r["state"] == "connected",
                   what="the host waits at the mailbox")
        if i:
            guests.append(daemons.start())
            ok_json(guests[-1], "identity", "create", "--name", f"Guest {i}")
        r = join(guests[-1], _without_hints(inv["code"]), "--json", pin=inv["pin"])
        assert r.returncode == 0, f"{r.stderr}\n{host.stderr()[-3000:]}"
        assert host.stderr().count("through the relay") == i + 1
    usage = relay.wait_usage(used + 3)
    # One happy pair per join, each carrying the whole join (a few KB).
    carried = [u["total_bytes"] for u in usage[used:] if u["mood"] == "happy"]
    assert len(carried) == 3, usage[used:]
    assert all(n > 1000 for n in carried), carried
    members = ok_json(host, "space", "members", space)
    assert len(members) == 4
    for x in (host, *guests):
        assert "Traceback" not in x.stderr()


def test_a_direct_path_wins_and_the_relay_carries_nothing(
        daemons: DaemonFactory, servers: tuple[MailboxServer, RelayServer]) -> None:
    mailbox, relay = servers
    host = _host(daemons, mailbox.url, relay)
    guest = daemons.start()
    ok_json(guest, "identity", "create", "--name", "Guest")
    used = len(relay.usage())
    for _ in range(5):
        space = ok_json(host, "space", "create", "Near")["space_id"]
        inv = ok_json(host, "invite", "create", "--space", space, "--role", "reader")
        r = join(guest, inv["code"], "--json", pin=inv["pin"])
        assert r.returncode == 0, r.stderr
    time.sleep(1.0)  # a relay pair would have been logged by now
    assert len(relay.usage()) == used
    assert "through the relay" not in host.stderr()


def test_an_unreachable_mailbox_leaves_lan_joins_alone_and_fails_a_relayed_join_clearly(
        daemons: DaemonFactory, servers: tuple[MailboxServer, RelayServer]) -> None:
    _, relay = servers
    dead = "ws://127.0.0.1:1/v1"  # nothing listens there
    host = _host(daemons, dead, relay)
    guest = daemons.start()
    ok_json(guest, "identity", "create", "--name", "Guest")
    space = ok_json(host, "space", "create", "Home")["space_id"]
    inv = ok_json(host, "invite", "create", "--space", space, "--role", "reader")
    eventually(lambda: ok_json(host, "status")["rendezvous"],
               lambda r: r["state"] == "error" and not r["connected"] and r["error"],
               what="the host reports the mailbox unreachable")
    # The LAN path (the code's hints) is unaffected.
    r = join(guest, inv["code"], "--json", pin=inv["pin"])
    assert r.returncode == 0, r.stderr
    # Without hints, only the mailbox could lead to the host: a clear failure.
    inv2 = ok_json(host, "invite", "create", "--space", space, "--role", "reader")
    other = daemons.start()
    ok_json(other, "identity", "create", "--name", "Other")
    t0 = time.monotonic()
    r = join(other, _without_hints(inv2["code"]), pin=inv2["pin"])
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert "host unreachable" in r.stderr, r.stderr
    assert "mailbox" in r.stderr, r.stderr
    assert took < 30, took  # the join's own connect timeout bounds it
    for x in (host, guest, other):
        assert "Traceback" not in x.stderr()
