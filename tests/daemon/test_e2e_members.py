"""End to end over loopback: members stay in sync after pairing, without a code.

Real daemon processes (mDNS off: the link code's hint finds the host, and the
new member's first swarm peer is the host it was admitted by; from then on the
member devices' own addresses, learned in their hellos, are dialed again after
any restart). Every check polls the real CLI until it holds or a deadline
passes: sync is asynchronous by design.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from p2pinvite.client import AsyncClient, SpaceEvent, connect
from p2pinvite.errors import P2PInviteError
from p2pinvite.halo.identity import IdentityService
from p2pinvite.halo.swarm_secrets import SwarmSecret, SwarmSecrets
from p2pinvite.net.manager import open_network_manager
from p2pinvite.net.secure import SecureStream
from p2pinvite.net.topics import Topic
from p2pinvite.swarm.hello import MAX_HELLO, Hello, decode_hello, encode_hello

from .conftest import DaemonFactory, DaemonProc
from .test_e2e_pairing import join, ok_json

pytestmark = pytest.mark.slow

T = TypeVar("T")
#: How long members may take to agree once a path of member connections exists.
CONVERGE = 20.0


def eventually(probe: Callable[[], T], ok: Callable[[T], bool], *, within: float = CONVERGE,
               what: str = "") -> T:
    """Poll *probe* until *ok* holds for its value; fail with the last value otherwise."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what or 'condition'} not reached within {within:g} s: {value!r}")
        time.sleep(0.1)


def member_set(d: DaemonProc, space: str) -> set[tuple[str, str]]:
    return {(m["identity_key"], m["role"]) for m in ok_json(d, "space", "members", space)}


def admit(host: DaemonProc, guest: DaemonProc, space: str, role: str) -> dict[str, Any]:
    inv = ok_json(host, "invite", "create", "--space", space, "--role", role)
    r = join(guest, inv["code"], "--json", pin=inv["pin"])
    assert r.returncode == 0, f"{r.stderr}\n{host.stderr()[-3000:]}\n{guest.stderr()[-3000:]}"
    return inv


def test_an_admin_admits_while_the_owner_is_off_and_all_agree_after(
        daemons: DaemonFactory) -> None:
    a, b, c = (daemons.start() for _ in range(3))
    ids = [ok_json(d, "identity", "create", "--name", n)["identity_key"]
           for d, n in ((a, "Alice"), (b, "Bob"), (c, "Carol"))]
    space = ok_json(a, "space", "create", "Team")["space_id"]
    admit(a, b, space, "admin")
    eventually(lambda: ok_json(a, "space", "peers", space), lambda p: len(p) == 1,
               what="A sees B connected")
    home_a = a.home
    assert a.stop() == 0
    admit(b, c, space, "editor")
    expected = {(ids[0], "owner"), (ids[1], "admin"), (ids[2], "editor")}
    assert member_set(b, space) == expected
    a = daemons.start(home_a)
    for d in (a, b, c):
        eventually(lambda d=d: member_set(d, space), lambda s: s == expected,
                   what=f"{d.home} lists the three members")
    [carol] = [m for m in ok_json(a, "space", "members", space) if m["identity_key"] == ids[2]]
    assert carol["admitted_by"] == ids[1]
    status = ok_json(a, "status")
    assert space in {s["log"] for s in status["swarms"]}


async def _outsider_visit(home: Path, daemon_addr: tuple[str, int], secret: SwarmSecret,
                          space: bytes) -> list[bytes]:
    """Dial the daemon on *space*'s member topic as a real device of a real identity
    that is not a member; return every message the daemon sent before it hung up."""
    ident = IdentityService.open(home)
    ident.create_identity("Mallory")
    keys = ident.device
    got: list[bytes] = []
    done = trio.Event()

    async def visit(stream: SecureStream) -> None:
        try:
            hello = Hello(space, identity=ident.identity_key, chain=tuple(ident.device_chain()))
            await stream.send_message(encode_hello(hello))
            while True:
                got.append(await stream.receive_message(MAX_HELLO))
        except (P2PInviteError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            done.set()

    try:
        async with open_network_manager(static_key=keys.static_private,
                                        payload=keys.binding_proof()) as net:
            await net.join(Topic.for_swarm(secret.secret), visit, advertise=False,
                           peers=[daemon_addr])
            with trio.fail_after(20):
                await done.wait()
    finally:
        ident.close()
    return got


def test_a_device_with_the_secret_that_is_no_member_gets_no_entries(
        daemons: DaemonFactory, tmp_path: Path) -> None:
    a = daemons.start()
    ok_json(a, "identity", "create", "--name", "Alice")
    space = ok_json(a, "space", "create", "Team")["space_id"]
    # The worst case: it has the space's swarm secret (as a removed member would).
    secret = SwarmSecrets.open(a.home).get(bytes.fromhex(space))
    assert secret is not None
    addr = tuple(ok_json(a, "status")["addresses"][0])
    got = trio.run(_outsider_visit, tmp_path / "mallory", addr, secret, bytes.fromhex(space))
    # The daemon's hello (sent at once, before either side's check), then nothing.
    assert [decode_hello(m).log for m in got] == [bytes.fromhex(space)]
    assert "is not a member device" in a.stderr()
    assert ok_json(a, "space", "peers", space) == []


async def _watch(home: Path, space: str, until: Callable[[list[SpaceEvent]], bool],
                 started: trio.Event) -> list[SpaceEvent]:
    """Events of ``spaces.subscribe`` on *space* until *until* holds for what came."""
    got: list[SpaceEvent] = []
    async with await AsyncClient.connect(home, timeout=None) as client:
        events = client.spaces.subscribe(space)
        with trio.fail_after(CONVERGE):
            # The daemon has registered the subscription once a request after it answers.
            first = events.__anext__
            async with trio.open_nursery() as nursery:
                async def pump() -> None:
                    while not until(got):
                        got.append(await first())
                nursery.start_soon(pump)
                await client.status()
                await trio.sleep(0.2)
                started.set()
    return got


def test_subscribers_see_members_arrive_and_peers_sync(daemons: DaemonFactory) -> None:
    a, b, c = (daemons.start() for _ in range(3))
    ids = [ok_json(d, "identity", "create", "--name", n)["identity_key"]
           for d, n in ((a, "Alice"), (b, "Bob"), (c, "Carol"))]
    space = ok_json(a, "space", "create", "Team")["space_id"]

    def saw_both(evs: list[SpaceEvent]) -> bool:
        added = {m.identity_key for e in evs if e.event == "changed" for m in e.members or ()}
        return {ids[1], ids[2]} <= added and any(e.event == "synced" for e in evs)

    async def main() -> list[SpaceEvent]:
        started = trio.Event()
        result: list[list[SpaceEvent]] = []
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                result.append(await _watch(a.home, space, saw_both, started))
            nursery.start_soon(run)
            await started.wait()
            await trio.to_thread.run_sync(admit, a, b, space, "admin")
            await trio.to_thread.run_sync(admit, b, c, space, "editor")
        return result[0]

    events = trio.run(main)
    assert all(e.log == space and e.kind == "space" for e in events)
    changed = [e for e in events if e.event == "changed"]
    # Each change carries only what differs: Bob arrives once, then Carol (through B).
    assert [m.identity_key for e in changed for m in e.members or ()] == [ids[1], ids[2]]
    assert changed[-1].count == 3
    assert all(e.gone == () for e in changed)
    [carol] = [m for e in changed for m in e.members or () if m.identity_key == ids[2]]
    assert carol.admitted_by == ids[1]
    assert carol.role == "editor"
    connected = [e.peer for e in events if e.event == "peer_connected"]
    assert connected
    assert all(p is not None for p in connected)
    # The blocking client streams the same: C's view of the space as it changes.
    # (Its generator sends the request at the first next(): a thread iterates it.)
    got: queue.Queue[SpaceEvent] = queue.Queue()

    def blocking_watch() -> None:
        with connect(c.home, timeout=None) as client:
            for ev in client.spaces.subscribe(space):
                got.put(ev)
                if ev.event == "changed":
                    return

    threading.Thread(target=blocking_watch, daemon=True).start()
    time.sleep(0.5)
    ok_json(a, "space", "create", "Other")  # another space: filtered out
    inv = ok_json(a, "invite", "create", "--space", space, "--role", "reader")
    d = daemons.start()
    dave = ok_json(d, "identity", "create", "--name", "Dave")["identity_key"]
    r = join(d, inv["code"], "--json", pin=inv["pin"])
    assert r.returncode == 0, r.stderr
    while True:
        ev = got.get(timeout=CONVERGE)
        assert ev.log == space
        if ev.event == "changed":
            assert [m.identity_key for m in ev.members or ()] == [dave]
            assert ev.count == 4
            break
