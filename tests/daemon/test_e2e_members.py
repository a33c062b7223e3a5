"""End to end over loopback: members stay in sync after pairing, without a code.

Real daemon processes (mDNS off: the link code's hint finds the host, and the
new member's first swarm peer is the host it was admitted by; from then on the
member devices' own addresses, learned in their hellos, are dialed again after
any restart). Every check polls the real CLI until it holds or a deadline
passes: sync is asynchronous by design.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

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
