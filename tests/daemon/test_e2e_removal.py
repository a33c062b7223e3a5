"""End to end over loopback: role changes, removals and leaving a space.

Real daemon processes (mDNS off: a member connects to the host that admitted
it, and to whoever dials it back from there). A removal applied anywhere, by
the remover or on arrival by sync, closes the live member connections of the
removed member's devices at once, and they get no further entries. Rekeying
the swarm secret is not part of this file.
"""

from __future__ import annotations

import pytest
import trio

from p2pinvite.client import AsyncClient, RequestError

from .conftest import DaemonFactory, DaemonProc
from .test_e2e_members import admit, eventually, member_set
from .test_e2e_pairing import ok_json

pytestmark = pytest.mark.slow


def _peer_identities(d: DaemonProc, space: str) -> set[str]:
    return {p["identity_key"] for p in ok_json(d, "space", "peers", space)}


def _swarm_logs(d: DaemonProc) -> set[str]:
    return {s["log"] for s in ok_json(d, "status")["swarms"]}


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

    change = ok_json(b, "space", "remove", "Team", "Carol")
    assert change["member"]["identity_key"] == ids[2]
    assert change["member"]["role"] == "removed"
    text = b.cli("space", "members", space, "--all")
    assert text.returncode == 0
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
    admit(a, d, space, "reader")
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
