"""End to end beyond one LAN: pairing through a magic-wormhole mailbox and transit relay.

Topology (:func:`tests.net.netns.routed_namespaces`): a ``host`` site and a
``guest`` site that both reach a ``rendezvous`` namespace, which does not
forward, so the two sites have no path to each other unless the test adds
the direct link. The real mailbox server and transit relay
(tests/rendezvous/servers.py) run *inside* the rendezvous namespace, bound
to its one service address; real daemon processes run inside the sites
(``--listen <site address>:0 --no-mdns --mailbox ws://SERVICE:PORT/v1
--transit SERVICE:PORT``); the CLI runs in the root namespace (the IPC
socket is a file in the daemon's home).

mDNS is off on purpose (``--no-mdns``): these tests are about what happens
beyond the LAN, and with mDNS off the only LAN-like path is the link code's
address hint (and the host's direct candidates in the mailbox), so "the join
went through the relay" and "the join went direct" are decided by the
topology alone.

What is checked (issue 20):

* no route between the sites: a link-code PIN join succeeds through the
  relay; the relay logs one pairing that carried bytes; a capture of every
  frame in the rendezvous namespace (tests/net/sniffer.py) holds none of the
  PIN, the code, its secret, or the credential material the join moves (the
  members' names and identity keys, the space's name and id) -- searched in
  raw frames, reassembled TCP streams and unmasked WebSocket payloads, with
  positive controls (the relay line and the mailbox id of this very
  invitation must be found) so that "not found" means something;
* a direct route too: the join succeeds and the relay carries nothing;
* a mailbox that refuses connections, accepts and never answers, or answers
  garbage: with a direct route the join still succeeds; without one it fails
  with a clear "host unreachable" error naming the mailbox, in bounded time.

Root only; skipped with the reason otherwise. Every path out stops the
daemons, the servers, the sniffer, and deletes the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from p2pinvite.invitations.codes import LinkCode
from p2pinvite.invitations.handlers import DEFAULT_CONNECT_TIMEOUT
from p2pinvite.rendezvous import for_invitation

from ..net.netns import Namespace, Routed, routed_namespaces, skip_reason
from ..net.sniffer import Capture, Flow, sniff
from ..rendezvous.servers import MailboxServer, RelayServer, mailbox_server, relay_server
from .conftest import REPO, DaemonProc, run_cli
from .test_e2e_netns import NsDaemons, ok_json
from .test_e2e_pairing import failure_line

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]

#: A port nothing listens on in the fresh rendezvous namespace (the servers take
#: kernel-picked ports, which are in the ephemeral range).
DEAD_PORT = 9
#: What the issue allows a failing relayed join: "within its timeout", the
#: guest's connect timeout (handlers.DEFAULT_CONNECT_TIMEOUT), plus process margin.
JOIN_DEADLINE = DEFAULT_CONNECT_TIMEOUT + 10.0
#: How long a join may run before the test gives up on it (and fails).
JOIN_PATIENCE = 60.0
#: How long the relay's usage log gets to settle after the last connection closed.
USAGE_SETTLE = 2.0

MailboxKind = Literal["real", "refused", "silent", "garbage"]

#: A stand-in mailbox in the rendezvous namespace: listens on argv[1]:0, prints
#: the port, and for every connection either never says a word (``silent``) or
#: answers junk at once (``garbage``: not HTTP, not a WebSocket, with CRLFs so a
#: line-based reader gets lines). It never closes a connection: the client must
#: give up by itself, on its own clock.
BAD_MAILBOX = r"""
import socket, sys
mode = sys.argv[2]
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
    if mode == "garbage":
        c.sendall(b"SSH-2.0-not-a-mailbox\r\n\x00\xff\xfe garbage {\"type\": 7}\r\n\r\n"
                  + bytes(range(256)) * 4)
"""

#: One side of a rendezvous, run inside a site with the p2pinvite library only
#: (no daemon): puts its candidates in the mailbox, reads the other side's,
#: meets it at the relay the other side named, swaps a marker through it.
#: argv: mailbox URL, relay host, relay port, secret (hex), role (0 or 1), marker.
PARTY = r"""
import json, sys, trio
from p2pinvite.rendezvous import (PHASE, Candidates, for_invitation, open_candidates,
                                  open_mailbox, relay_connect, seal_candidates)
url, rhost, rport = sys.argv[1], sys.argv[2], int(sys.argv[3])
names, role, marker = for_invitation(bytes.fromhex(sys.argv[4])), int(sys.argv[5]), \
    sys.argv[6].encode()
me, other = names.side(role), names.side(1 - role)

async def main():
    mine = Candidates(((f"192.0.2.{role + 1}", 1000 + role),), (rhost, rport))
    async with open_mailbox(url, names.mailbox_id, side=me, timeout=10) as mailbox:
        await mailbox.add(PHASE, seal_candidates(names.sealing_key, mine, sender_side=me))
        msg = await mailbox.receive(timeout=10)
        theirs = open_candidates(names.sealing_key, msg.body, sender_side=other)
        await trio.sleep(0.3)  # let the other side read ours before the mailbox goes
    host, port = theirs.relay
    stream = await relay_connect(host, port, names.relay_token, me, timeout=10)
    await stream.send_all(marker)
    got = b""
    while len(got) < len(marker):
        chunk = await stream.receive_some(100)
        if not chunk:
            break
        got += chunk
    await trio.sleep(0.2)
    await stream.aclose()
    print(json.dumps({"addrs": [list(a) for a in theirs.addrs], "relay": list(theirs.relay),
                      "received": got.decode()}))

trio.run(main)
"""


@dataclass
class World:
    """One test's topology, servers and daemon starter (all torn down by the fixture)."""

    net: Routed
    relay: RelayServer
    mailbox: MailboxServer | None
    mailbox_url: str
    daemons: NsDaemons
    direct: bool

    def site(self, which: Literal["host", "guest"]) -> Namespace:
        """Where a site's daemon listens: its direct-link address if there is one.

        With mDNS off a daemon tells peers (hints, candidates) only the address
        it listens on, so with ``direct`` it listens on the direct link (the
        other site can dial it); without, on its link to the rendezvous (the
        other site cannot).
        """
        if self.net.direct is not None:
            return self.net.direct[0 if which == "host" else 1]
        return self.net.host if which == "host" else self.net.guest

    def start(self, which: Literal["host", "guest"], name: str) -> DaemonProc:
        """A daemon in site *which*, mDNS off, the rendezvous configured."""
        return self.daemons.start(self.site(which), self.daemons.home(name), "--no-mdns",
                                  "--mailbox", self.mailbox_url,
                                  "--transit", self.relay.address)


@contextlib.contextmanager
def bad_mailbox(ns: Namespace, addr: str, mode: str) -> Iterator[int]:
    """Run :data:`BAD_MAILBOX` in *ns* on *addr*; its port. Killed on exit."""
    proc = subprocess.Popen(ns.argv(sys.executable, "-c", BAD_MAILBOX, addr, mode),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=REPO,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"the {mode} mailbox did not start: {line!r}"
        yield int(line)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    """Builds a :class:`World`; everything it started is stopped, in reverse order.

    Teardown order (an ExitStack): daemons, then the stand-in mailbox, the
    servers, and last the namespaces (deleting one kills whatever still runs
    in it).
    """
    with contextlib.ExitStack() as stack:

        def make(*, direct: bool = False, blackhole: bool = False,
                 mailbox: MailboxKind = "real") -> World:
            net = stack.enter_context(routed_namespaces(direct=direct, blackhole=blackhole))
            prefix = net.rendezvous.argv()
            relay = stack.enter_context(relay_server(host=net.service, prefix=prefix,
                                                     workdir=tmp_path / "relay"))
            server = None
            if mailbox == "real":
                server = stack.enter_context(mailbox_server(host=net.service, prefix=prefix,
                                                            workdir=tmp_path / "mailbox"))
                url = server.url
            elif mailbox == "refused":
                url = f"ws://{net.service}:{DEAD_PORT}/v1"
            else:
                port = stack.enter_context(bad_mailbox(net.rendezvous, net.service, mailbox))
                url = f"ws://{net.service}:{port}/v1"
            daemons = NsDaemons()
            stack.callback(daemons.cleanup)
            return World(net, relay, server, url, daemons, direct)

        yield make


# -- helpers ------------------------------------------------------------------------------


def diag(*ds: DaemonProc) -> str:
    """Every daemon's stderr, for an assertion message."""
    return "".join(f"\n--- daemon {d.home.name} stderr ---\n{d.stderr()}" for d in ds)


def rendezvous(d: DaemonProc) -> dict[str, Any]:
    """``status --json``'s ``rendezvous`` object."""
    status = ok_json(d, "status")
    assert "rendezvous" in status, f"status has no rendezvous: {status}"
    r: dict[str, Any] = status["rendezvous"]
    return r


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll *check* until it returns something true; fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s (last: {value!r})")
        time.sleep(0.2)


def timed_join(guest: DaemonProc, code: str, pin: str
               ) -> tuple[subprocess.CompletedProcess[str], float]:
    """``join - --pin - --json`` (code and PIN on stdin, as :func:`join`), and its wall time.

    The CLI gets :data:`JOIN_PATIENCE`, well past :data:`JOIN_DEADLINE`, so a
    join that is too slow is measured and reported, not cut off.
    """
    start = time.monotonic()
    try:
        r = run_cli(guest.home, "join", "-", "--pin", "-", "--json", input=f"{code}\n{pin}\n",
                    timeout=JOIN_PATIENCE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"join still running after {JOIN_PATIENCE:g} s{diag(guest)}")
    return r, time.monotonic() - start


def happy_pairs(relay: RelayServer) -> list[dict[str, Any]]:
    return [u for u in relay.usage() if u.get("mood") == "happy"]


def relayed(cap: Capture, relay: RelayServer) -> dict[Flow, tuple[bytes, int]]:
    """The paired connections to *relay* in *cap*: flow -> (its relay line, bytes after it).

    A client's stream to the relay is its ``please relay TOKEN for side S`` line
    and then what it sends through; the relay's answer on a paired one starts
    with ``ok``. (The product derives a per-attempt token, so the token itself
    is not predictable here.)
    """
    out: dict[Flow, tuple[bytes, int]] = {}
    for flow, data in cap.streams.items():
        if (flow[2], flow[3]) != (relay.host, relay.port):
            continue
        line, sep, rest = data.partition(b"\n")
        answer = cap.streams.get((flow[2], flow[3], flow[0], flow[1]), b"")
        if sep and line.startswith(b"please relay ") and answer.startswith(b"ok\n"):
            out[flow] = (line, len(rest))
    return out


def stop(*ds: DaemonProc) -> None:
    """Stop daemons (SIGTERM), so every connection they held is closed and logged."""
    for d in ds:
        assert d.stop() == 0, diag(d)


def assert_clean_logs(code: str, *ds: DaemonProc) -> None:
    """No daemon crashed a task, or wrote the code or its secret to its log."""
    secret = LinkCode.parse(code).secret.hex()
    for d in ds:
        err = d.stderr()
        assert "Traceback" not in err, diag(d)
        assert code not in err
        assert secret not in err


def space_setup(host: DaemonProc, guest: DaemonProc, tag: str) -> dict[str, Any]:
    """Identities with long unique names on both sides, a space, a PIN invitation to it."""
    names = {"host": f"HostName-{tag}-{os.urandom(10).hex()}",
             "guest": f"GuestName-{tag}-{os.urandom(10).hex()}",
             "space": f"Orchard{os.urandom(6).hex()}"}
    alice = ok_json(host, "identity", "create", "--name", names["host"])
    bob = ok_json(guest, "identity", "create", "--name", names["guest"])
    space = ok_json(host, "space", "create", names["space"])
    inv = ok_json(host, "invite", "create", "--space", names["space"], "--role", "reader")
    assert (inv["kind"], inv["auth"]) == ("space", "pin")
    return {"names": names, "alice": alice, "bob": bob, "space": space, "inv": inv}


def members(d: DaemonProc, space: str) -> list[tuple[str, str, str]]:
    return sorted((m["identity_key"], m["name"], m["role"])
                  for m in ok_json(d, "space", "members", space))


# -- 0. the infrastructure itself (passes without the daemon's rendezvous) -----------------


def test_servers_in_the_rendezvous_serve_both_sites(world: Callable[..., World],
                                                    tmp_path: Path) -> None:
    """Mailbox and relay inside the rendezvous, reached from both sites at one address.

    No daemon: two library clients, one per site, meet as the daemons will.
    Also shows that the capture sees this traffic (the relay line, the
    mailbox id the clients send masked, the relayed markers), which is what
    lets the leak test below trust "not found".
    """
    w = world()
    assert w.mailbox is not None
    secret = os.urandom(32)
    names = for_invitation(secret)
    markers = [f"marker-{role}-{os.urandom(8).hex()}" for role in (0, 1)]
    with sniff(w.net.rendezvous.argv(), workdir=tmp_path) as cap:
        procs = [subprocess.Popen(
            site.argv(sys.executable, "-c", PARTY, w.mailbox.url, w.net.service,
                      str(w.relay.port), secret.hex(), str(role), markers[role]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
            for role, site in enumerate((w.net.host, w.net.guest))]
        outs = [p.communicate(timeout=60) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-3000:]
        [usage] = w.relay.wait_usage(1)
    results = [json.loads(out) for out, _ in outs]
    for role in (0, 1):
        other = 1 - role
        assert results[role] == {"addrs": [[f"192.0.2.{other + 1}", 1000 + other]],
                                 "relay": [w.net.service, w.relay.port],
                                 "received": markers[other]}
    assert (usage["mood"], usage["total_bytes"]) == ("happy", sum(map(len, markers)))

    assert (cap.drops, cap.holes) == (0, 0)
    line = f"please relay {names.relay_token.hex()} for side ".encode()
    sites = {w.net.host.addr, w.net.guest.addr}
    assert cap.senders(line) == sites
    assert cap.senders(names.mailbox_id.encode(), "ws") == sites
    # Masked by the clients: only the unmasked view has it.
    assert names.mailbox_id.encode() not in cap.raw
    for marker in markers:
        assert cap.find(marker.encode())


# -- 1. no route between the sites: the relay carries the join, and learns nothing ---------


def secrets_of(code: str, pin: str, s: dict[str, Any]) -> dict[str, bytes]:
    """Everything that must never cross the rendezvous in the clear, by a label.

    The PIN is only six ASCII digits: inside the hex strings the relay and
    the mailbox carry it turns up by chance (it did, in a relay token), so it
    is searched for standing on its own only; by chance that way (in
    ciphertext) about once in tens of thousands of runs. Every other needle is
    32 random bytes or a long random string, which cannot.
    """
    link = LinkCode.parse(code)
    out = {
        "pin": pin.encode(),
        "code": code.encode(),
        "code body": code.split(":", 1)[1].encode(),
        "secret": link.secret,
        "secret hex": link.secret.hex().encode(),
        "secret HEX": link.secret.hex().upper().encode(),
        "space name": s["names"]["space"].encode(),
        "guest name": s["names"]["guest"].encode(),
        "host name": s["names"]["host"].encode(),
    }
    for who, key in (("guest", s["bob"]["identity_key"]), ("host", s["alice"]["identity_key"]),
                     ("space id", s["space"]["space_id"])):
        out[f"{who} key"] = bytes.fromhex(key)
        out[f"{who} key hex"] = key.encode()
    return out


@pytest.mark.parametrize("blackhole", [False, True], ids=["unroutable", "blackholed"])
def test_pin_join_through_the_relay_leaks_nothing(world: Callable[..., World], tmp_path: Path,
                                                  blackhole: bool) -> None:
    w = world(blackhole=blackhole)
    assert w.mailbox is not None
    # The capture starts before the daemons, so every connection is seen from
    # its SYN (the host opens its mailbox session when the invitation is made).
    with sniff(w.net.rendezvous.argv(), workdir=tmp_path) as cap:
        host = w.start("host", "alice")
        guest = w.start("guest", "bob")
        for d in (host, guest):
            r = rendezvous(d)
            assert (r["mailbox"], r["transit"]) == (w.mailbox_url, w.relay.address), r
        s = space_setup(host, guest, "relayed")
        code, pin = s["inv"]["code"], s["inv"]["pin"]
        link = LinkCode.parse(code)
        assert link.mailbox == w.mailbox_url
        [(hint_host, _)] = link.hints
        assert hint_host == w.net.host.addr  # the guest cannot reach it
        wait_for("the host's mailbox session", lambda: rendezvous(host)["connected"], 10)

        r, took = timed_join(guest, code, pin)
        assert r.returncode == 0, f"join failed after {took:.1f}s: {r.stderr}{diag(host, guest)}"
        assert json.loads(r.stdout) == {
            "kind": "space", "identity_key": s["bob"]["identity_key"],
            "space_id": s["space"]["space_id"], "space_name": s["names"]["space"],
            "role": "reader"}
        expected = sorted([(s["alice"]["identity_key"], s["names"]["host"], "owner"),
                           (s["bob"]["identity_key"], s["names"]["guest"], "reader")])
        assert members(host, s["space"]["space_id"]) == expected
        assert members(guest, s["space"]["space_id"]) == expected
        print(f"relayed join ({'blackholed' if blackhole else 'unroutable'}): {took:.2f} s")
        # Stopping the daemons closes every relayed connection, so its usage
        # line is written (the relay logs a pairing when it ends).
        stop(host, guest)
        wait_for("a relay usage line", w.relay.usage, 10)
        time.sleep(USAGE_SETTLE)
    usage = w.relay.usage()
    happy = happy_pairs(w.relay)
    assert len(happy) == 1, f"relay usage: {usage}"
    assert happy[0]["total_bytes"] > 0, usage
    print(f"the relay carried {happy[0]['total_bytes']} bytes for the join")
    assert took < JOIN_DEADLINE
    assert_clean_logs(code, host, guest)

    # The capture saw this join: both sites' connections to the relay, paired,
    # every relayed byte, and the invitation's mailbox id (sent masked by both).
    assert (cap.drops, cap.holes) == (0, 0)
    names = for_invitation(link.secret)
    sites = {w.net.host.addr, w.net.guest.addr}
    paired = relayed(cap, w.relay)
    assert sorted(f[0] for f in paired) == sorted(sites), paired
    assert len({line.split()[2] for line, _ in paired.values()}) == 1, paired  # one token
    # Every byte the relay says it carried is in the capture. At least: the
    # relay logs a pairing when the first side leaves, so what the other side
    # sends after that (Noise's 18-byte end-of-session record, say) is on the
    # wire but not in total_bytes.
    assert sum(n for _, n in paired.values()) >= happy[0]["total_bytes"], (paired, happy)
    mailbox_id = names.mailbox_id.encode()
    assert cap.senders(mailbox_id, "ws") == sites, cap.find(mailbox_id)
    # The PIN is six digits: it counts only standing on its own (Capture.find_token).
    leaks = {label: where for label, needle in secrets_of(code, pin, s).items()
             if (where := (cap.find_token(needle) if label == "pin" else cap.find(needle)))}
    assert leaks == {}, f"seen by the rendezvous: {leaks} (capture: {cap.pcap})"


# -- 2. a direct route too: it wins, the relay carries nothing ---------------------------------


def test_direct_route_wins_and_the_relay_carries_nothing(world: Callable[..., World]) -> None:
    w = world(direct=True)
    host = w.start("host", "phone")
    laptop = w.start("guest", "laptop")
    alice = ok_json(host, "identity", "create", "--name", "Alice")
    inv = ok_json(host, "invite", "create", "--device")
    assert (inv["kind"], inv["auth"]) == ("device", "pin")
    link = LinkCode.parse(inv["code"])
    assert link.mailbox == w.mailbox_url
    assert [h for h, _ in link.hints] == [w.site("host").addr]

    r, took = timed_join(laptop, inv["code"], inv["pin"])
    assert r.returncode == 0, f"join failed after {took:.1f}s: {r.stderr}{diag(host, laptop)}"
    assert json.loads(r.stdout)["identity_key"] == alice["identity_key"]
    devices = [dv["device_key"] for dv in ok_json(host, "devices")]
    assert len(devices) == 2
    assert devices == [dv["device_key"] for dv in ok_json(laptop, "devices")]
    print(f"direct join: {took:.2f} s")
    stop(host, laptop)
    time.sleep(USAGE_SETTLE)
    usage = w.relay.usage()
    assert happy_pairs(w.relay) == [], f"the relay paired connections: {usage}"
    assert sum(u.get("total_bytes", 0) for u in usage) == 0, usage


# -- 3. a broken mailbox: the LAN still works, the relayed join fails clearly ------------------

BROKEN: list[MailboxKind] = ["refused", "silent", "garbage"]


def broken_setup(w: World) -> tuple[DaemonProc, DaemonProc, dict[str, Any]]:
    host = w.start("host", "alice")
    guest = w.start("guest", "bob")
    s = space_setup(host, guest, "broken")
    assert LinkCode.parse(s["inv"]["code"]).mailbox == w.mailbox_url
    return host, guest, s


def assert_mailbox_trouble_shown(host: DaemonProc) -> None:
    """The host's status says its mailbox is not connected, and why."""
    r = wait_for("the host's rendezvous error", lambda: (x := rendezvous(host))["error"] and x,
                 15)
    assert r["connected"] is False, r
    print(f"host status: {r}")


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_mailbox_lan_join_still_succeeds(world: Callable[..., World],
                                                kind: MailboxKind) -> None:
    w = world(direct=True, mailbox=kind)
    host, guest, s = broken_setup(w)
    r, took = timed_join(guest, s["inv"]["code"], s["inv"]["pin"])
    assert r.returncode == 0, f"join failed after {took:.1f}s: {r.stderr}{diag(host, guest)}"
    assert json.loads(r.stdout)["space_id"] == s["space"]["space_id"]
    assert len(members(host, s["space"]["space_id"])) == 2
    print(f"LAN join with a {kind} mailbox: {took:.2f} s")
    assert took < JOIN_DEADLINE
    assert_mailbox_trouble_shown(host)
    assert happy_pairs(w.relay) == []
    assert_clean_logs(s["inv"]["code"], host, guest)


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_mailbox_relayed_join_fails_clearly(world: Callable[..., World],
                                                   kind: MailboxKind) -> None:
    w = world(direct=False, mailbox=kind)
    host, guest, s = broken_setup(w)
    r, took = timed_join(guest, s["inv"]["code"], s["inv"]["pin"])
    print(f"relayed join with a {kind} mailbox: exit {r.returncode} after {took:.2f} s: "
          f"{r.stderr.splitlines()[-1:]}")
    assert r.returncode == 1, f"{r.stdout}\n{r.stderr}{diag(host, guest)}"
    line = failure_line(r, json_mode=True)
    assert "host unreachable" in line, f"{line}{diag(host, guest)}"
    assert "mailbox" in line, f"{line}{diag(host, guest)}"
    assert took < JOIN_DEADLINE, f"{took:.1f} s{diag(host, guest)}"
    # Nothing was admitted, and both daemons still serve.
    assert members(host, s["space"]["space_id"]) == [
        (s["alice"]["identity_key"], s["names"]["host"], "owner")]
    [record] = ok_json(host, "invite", "list")
    assert record["uses"] == 0
    assert ok_json(guest, "space", "list") == []
    assert_mailbox_trouble_shown(host)
    assert happy_pairs(w.relay) == []
    assert_clean_logs(s["inv"]["code"], host, guest)
