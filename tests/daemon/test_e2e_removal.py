"""End to end over loopback: role changes, removals and leaving a space.

Real daemon processes (mDNS off: a member connects to the host that admitted
it, and to whoever dials it back from there). A removal applied anywhere, by
the remover or on arrival by sync, closes the live member connections of the
removed member's devices at once, and they get no further entries. Each
removal or leave rotates the space's swarm secret: the remaining members move
to the new epoch's topic, the removed one stays behind on the old one.
Devices removed from an identity: the same for the identity's log.
"""

from __future__ import annotations

import pytest
import trio

from p2pinvite.client import AsyncClient, RequestError

from .conftest import DaemonFactory, DaemonProc
from .test_e2e_members import admit, eventually, member_set
from .test_e2e_pairing import join, join_ok, ok_json

pytestmark = pytest.mark.slow


def _peer_identities(d: DaemonProc, space: str) -> set[str]:
    return {p["identity_key"] for p in ok_json(d, "space", "peers", space)}


def _swarm_logs(d: DaemonProc) -> set[str]:
    return {s["log"] for s in ok_json(d, "status")["swarms"]}


def _swarm(d: DaemonProc, log: str) -> tuple[int, str] | None:
    """(epoch, topic) of *d*'s swarm of *log*, None if not joined."""
    for s in ok_json(d, "status")["swarms"]:
        if s["log"] == log:
            return s["epoch"], s["topic"]
    return None


def test_an_admin_removes_a_member_whose_connections_close_and_who_gets_nothing_more(
        daemons: DaemonFactory) -> None:
    a, b, c, d = (daemons.start() for _ in range(4))
    ids = [ok_json(x, "identity", "create", "--name", n)["identity_key"]
           for x, n in ((a, "Alice"), (b, "Bob"), (c, "Carol"), (d, "Dave"))]
    space = ok_json(a, "space", "create", "Team")["space_id"]
    admit(a, b, space, "admin")
    admit(a, c, space, "editor")
    # A star around the owner: B's removal of Carol reaches A by sync, which
    # must then close its own connection to her.
    eventually(lambda: _peer_identities(a, space), lambda p: p == {ids[1], ids[2]},
               what="Alice connected to Bob and Carol")
    eventually(lambda: member_set(b, space), lambda s: (ids[2], "editor") in s,
               what="Bob knows Carol")

    # The rules, named when they refuse: nobody demotes the genesis owner, and
    # only an owner makes admins.
    r = b.cli("space", "role", space, ids[0], "reader")
    assert r.returncode != 0
    assert "[refused: cannot_demote_owner]" in r.stderr
    r = b.cli("space", "role", space, ids[2], "admin")
    assert r.returncode != 0
    assert "[refused: owner_required]" in r.stderr
    assert member_set(b, space) == {(ids[0], "owner"), (ids[1], "admin"), (ids[2], "editor")}

    old = _swarm(a, space)
    assert old is not None
    assert old[0] == 1
    assert _swarm(c, space) == old
    change = ok_json(b, "space", "remove", "Team", "Carol")
    assert change["member"]["identity_key"] == ids[2]
    assert change["member"]["role"] == "removed"
    # Bob rotated the swarm secret before answering; Alice opens her grant
    # and follows him to the new topic.
    assert change["epoch"] == 2
    text = b.cli("space", "members", space, "--all")
    assert text.returncode == 0
    assert "the space's swarm secret is now epoch" not in text.stdout
    eventually(lambda: _swarm(a, space), lambda s: s is not None and s[0] == 2, within=5,
               what="Alice moved to epoch 2")
    new = _swarm(b, space)
    assert new is not None
    assert new[0] == 2
    assert new[1] != old[1]
    assert _swarm(a, space) == new
    # The removal reaches Alice by sync; her connection to Carol closes at once.
    eventually(lambda: _peer_identities(a, space), lambda p: p == {ids[1]}, within=5,
               what="Alice closed her connection to Carol")
    eventually(lambda: _peer_identities(c, space), lambda p: p == set(), within=5,
               what="Carol has no member connection left")
    # She was handed the removal before the connection closed: her copy knows,
    # and her daemon left the space's swarm (it dials no member any more).
    assert ids[2] not in {k for k, _ in member_set(c, space)}
    eventually(lambda: _swarm_logs(c), lambda logs: space not in logs, within=5,
               what="Carol's daemon left the space's swarm")
    for x in (a, b):
        full = ok_json(x, "space", "members", space, "--all")
        assert [m["identity_key"] for m in full["removed"]] == [ids[2]]
        assert ids[2] not in {m["identity_key"] for m in full["members"]}

    # Carol, still running, sees no further entries: Dave's admission stays away.
    # Dave is handed the secret in force (epoch 2) with his admission.
    admit(a, d, space, "reader")
    eventually(lambda: _swarm(d, space), lambda s: s == new, what="Dave joins epoch 2")
    expected = {(ids[0], "owner"), (ids[1], "admin"), (ids[3], "reader")}
    for x in (a, b, d):
        eventually(lambda x=x: member_set(x, space), lambda s: s == expected,
                   what=f"{x.home} lists Alice, Bob and Dave")
    assert ids[3] not in {k for k, _ in member_set(c, space)}

    # A role change by the owner, then Dave leaves on his own.
    changed = ok_json(a, "space", "role", space, ids[3][:12], "editor")
    assert changed["member"]["role"] == "editor"
    eventually(lambda: member_set(d, space), lambda s: (ids[3], "editor") in s,
               what="Dave sees his new role")
    left = ok_json(d, "space", "leave", space)
    assert left["member"]["role"] == "removed"
    eventually(lambda: member_set(a, space), lambda s: ids[3] not in {k for k, _ in s},
               what="Alice sees Dave gone")
    eventually(lambda: _swarm_logs(d), lambda logs: space not in logs, within=5,
               what="Dave's daemon left the space's swarm")
    # An admin who sees a member leave rotates (Alice or Bob, after a random
    # delay of at most a second; if both do, the log's order picks one).
    eventually(lambda: (_swarm(a, space), _swarm(b, space)),
               lambda s: s[0] == s[1] and s[0] is not None and s[0][0] >= 3, within=10,
               what="Alice and Bob on the same secret after Dave left")
    # A restart does not bring a removed member back into the swarm.
    home_c = c.home
    assert c.stop() == 0
    c = daemons.start(home_c)
    assert space not in _swarm_logs(c)
    assert "not joining the swarm" in c.stderr()
    # The genesis owner cannot leave: the rule is named.
    r = a.cli("space", "leave", space)
    assert r.returncode != 0
    assert "[refused: cannot_remove_owner]" in r.stderr
    # The async client makes the same calls.
    async def demote_bob() -> None:
        async with await AsyncClient.connect(a.home) as client:
            change = await client.spaces.set_role(space, "Bob", "editor")
            assert (change.member.identity_key, change.member.role) == (ids[1], "editor")
            with pytest.raises(RequestError) as refused:
                await client.spaces.set_role(space, "Bob", "editor")
            assert refused.value.reason == "same_role"

    trio.run(demote_bob)
    eventually(lambda: member_set(b, space), lambda s: (ids[1], "editor") in s,
               what="Bob sees his new role")
    for x in (a, b, c, d):
        assert "Traceback" not in x.stderr()


def _devices(d: DaemonProc) -> set[str]:
    return {x["device_key"] for x in ok_json(d, "devices")}


def test_a_device_removed_from_its_identity_no_longer_acts_in_its_name(
        daemons: DaemonFactory) -> None:
    d1, d2, d3, guest, z = (daemons.start() for _ in range(5))
    ident = ok_json(d1, "identity", "create", "--name", "Alice")["identity_key"]
    for dx in (d2, d3):
        inv = ok_json(d1, "invite", "create", "--device")
        join_ok(dx, inv["code"], pin=inv["pin"])
    # Through d3 (only), Alice is also a member of Zed's space.
    ok_json(z, "identity", "create", "--name", "Zed")
    club = ok_json(z, "space", "create", "Club")["space_id"]
    admit(z, d3, club, "reader")
    eventually(lambda: _peer_identities(z, club), lambda p: p == {ident},
               what="Zed meets Alice's d3 in the club")
    keys = {x.home: ok_json(x, "identity", "show")["device_key"] for x in (d1, d2, d3)}
    everyone = set(keys.values())
    for x in (d1, d2, d3):
        eventually(lambda x=x: _devices(x), lambda s: s == everyone, what="three devices")
    eventually(lambda: {p["device_key"] for p in ok_json(d1, "space", "peers")},
               lambda s: s == {keys[d2.home], keys[d3.home]}, what="d1 meets d2 and d3")
    # Invitations the lost device hosts, and one it could accept.
    pending = ok_json(d3, "invite", "create", "--device")
    space = ok_json(d1, "space", "create", "Home")["space_id"]
    for_d3 = ok_json(d1, "invite", "create", "--space", space, "--role", "reader")
    old = _swarm(d1, ident)
    assert old is not None
    assert old[0] == 1

    # d2 removes d3: a revocation in the identity log, and a new swarm secret
    # sealed to the remaining devices (d2 itself, and d1, which it met).
    r = d2.cli("device", "remove", keys[d3.home][:12])
    assert r.returncode == 0, r.stderr
    assert f"removed device {keys[d3.home][:16]} from identity {ident[:16]}" in r.stdout
    assert "swarm secret is now epoch 2" in r.stdout
    remaining = {keys[d1.home], keys[d2.home]}
    for x in (d1, d2):
        eventually(lambda x=x: _devices(x), lambda s: s == remaining, what="two devices left")
    eventually(lambda: _swarm(d1, ident), lambda s: s is not None and s[0] == 2, within=5,
               what="d1 moved to epoch 2")
    assert _swarm(d1, ident) == _swarm(d2, ident) != old
    # The lost device learned it (its connection closed once it held the
    # revocation) and acts for the identity no more.
    # It leaves every swarm, the club's too, though Zed cannot know: only
    # Alice's log says so.
    eventually(lambda: _swarm_logs(d3), lambda logs: logs == set(), within=5,
               what="d3 left its identity's swarm and the club's")
    eventually(lambda: _peer_identities(z, club), lambda p: p == set(), within=5,
               what="Zed's connection to d3 closed")
    assert keys[d3.home] not in _devices(d3)
    r = d3.cli("invite", "create", "--device")
    assert r.returncode != 0
    assert "removed from its identity" in r.stderr
    r = join(d3, for_d3["code"], pin=for_d3["pin"])
    assert r.returncode != 0
    assert "device_removed" in r.stderr
    r = join(guest, pending["code"], pin=pending["pin"])
    assert r.returncode != 0
    assert "device_removed" in r.stderr or "refused" in r.stderr
    # After a restart too: its daemon starts, joins no swarm, invites nobody.
    home_d3 = d3.home
    assert d3.stop() == 0
    d3 = daemons.start(home_d3)
    assert _swarm_logs(d3) == set()
    r = d3.cli("invite", "create", "--device")
    assert r.returncode != 0
    assert "removed from its identity" in r.stderr
    assert ok_json(guest, "status")["identity"] is None
    # Refusals name their rule; d1 and d2 still invite, and the new device
    # gets the secret in force.
    r = d1.cli("device", "remove", keys[d3.home])
    assert r.returncode != 0
    assert "no current device" in r.stderr
    r = d1.cli("device", "remove", keys[d1.home])
    assert r.returncode != 0
    assert "[refused: this_device]" in r.stderr
    inv = ok_json(d1, "invite", "create", "--device")
    join_ok(guest, inv["code"], pin=inv["pin"])
    eventually(lambda: _swarm(guest, ident), lambda s: s == _swarm(d1, ident),
               what="the new device on epoch 2")
    for x in (d1, d2, d3, guest, z):
        assert "Traceback" not in x.stderr()


def test_a_member_no_rotation_sealed_to_gets_the_secret_from_the_first_member_it_meets(
        daemons: DaemonFactory) -> None:
    a, b, c, f, g = (daemons.start() for _ in range(5))
    ids = [ok_json(x, "identity", "create", "--name", n)["identity_key"]
           for x, n in ((a, "Alice"), (b, "Bob"), (c, "Carol"), (f, "Frank"), (g, "Gus"))]
    space = ok_json(a, "space", "create", "Team")["space_id"]
    for guest, role in ((b, "admin"), (c, "editor"), (f, "reader")):
        admit(a, guest, space, role)
    pending = ok_json(b, "invite", "create", "--space", space, "--role", "reader")
    eventually(lambda: _peer_identities(a, space), lambda p: p == set(ids[1:4]),
               what="Alice connected to Bob, Carol and Frank")
    home_f = f.home
    assert f.stop() == 0
    # Bob has met Alice only (a star around her): his rotation is sealed to
    # the two of them. Frank, off, holds only the old secret.
    assert ok_json(b, "space", "remove", space, "Carol")["epoch"] == 2
    eventually(lambda: _swarm(a, space), lambda s: s == _swarm(b, space), within=5,
               what="Alice on Bob's new secret")
    f = daemons.start(home_f)
    # Frank reaches Alice where the old secret still opens; she seals the
    # secret in force to him in a grant entry, which he opens and follows.
    eventually(lambda: _swarm(f, space), lambda s: s == _swarm(a, space), within=10,
               what="Frank on the new secret")
    assert "granted the swarm key in force to device" in a.stderr()
    eventually(lambda: _peer_identities(f, space), lambda p: ids[0] in p, within=10,
               what="Frank and Alice connected on the new topic")
    # Bob is removed in turn: the invitation he made as an admin is not served.
    assert ok_json(a, "space", "remove", space, "Bob")["epoch"] == 3
    eventually(lambda: _swarm(b, space), lambda s: s is None, within=5,
               what="Bob's daemon left the space's swarm")
    r = join(g, pending["code"], pin=pending["pin"])
    assert r.returncode != 0
    assert ok_json(g, "space", "list") == []
    eventually(lambda: _swarm(f, space), lambda s: s == _swarm(a, space), within=10,
               what="Frank on epoch 3 too")
    # An admin who got the secret with its admission (no grant names it)
    # rotates too when it removes someone.
    admit(a, g, space, "admin")
    eventually(lambda: _swarm(g, space), lambda s: s == _swarm(a, space), within=10,
               what="Gus on epoch 3")
    assert ok_json(g, "space", "remove", space, "Frank")["epoch"] == 4
    eventually(lambda: _swarm(a, space), lambda s: s == _swarm(g, space), within=10,
               what="Alice on Gus's epoch 4")
    for x in (a, b, c, f, g):
        assert "Traceback" not in x.stderr()


def test_a_member_off_through_more_rotations_than_it_used_to_keep_catches_up(
        daemons: DaemonFactory) -> None:
    """Five removals while a member is off: it still meets the owner on an old topic.

    The owner keeps the secrets it replaced (up to MAX_PREVIOUS, 16) joined
    accept-only; the member, back with epoch 1 only, dials it there and is
    granted the key in force (docs/PROTOCOL.md Part 12 §7.4).
    """
    a, m = daemons.start(), daemons.start()
    others = [daemons.start() for _ in range(5)]
    a_id = ok_json(a, "identity", "create", "--name", "Alice")["identity_key"]
    m_id = ok_json(m, "identity", "create", "--name", "Mia")["identity_key"]
    ids = [ok_json(x, "identity", "create", "--name", f"R{i}")["identity_key"]
           for i, x in enumerate(others)]
    space = ok_json(a, "space", "create", "Team")["space_id"]
    for guest in (m, *others):
        admit(a, guest, space, "reader")
    eventually(lambda: _peer_identities(a, space), lambda p: m_id in p,
               what="Alice connected to Mia")
    home_m = m.home
    assert m.stop() == 0
    for n, removed in enumerate(ids, start=2):
        assert ok_json(a, "space", "remove", space, removed)["epoch"] == n
    assert _swarm(a, space) is not None
    m = daemons.start(home_m)
    eventually(lambda: _swarm(m, space), lambda s: s == _swarm(a, space), within=15,
               what="Mia on Alice's epoch 6")
    eventually(lambda: {k for k, _ in member_set(m, space)}, lambda s: s == {a_id, m_id},
               within=10, what="Mia lists Alice and herself only: the five removals")
    for x in (a, m):
        assert "Traceback" not in x.stderr()
