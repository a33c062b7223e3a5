"""The join every user makes, on a real LAN, many times in a row.

Two daemons in two network namespaces joined by a veth pair, each started the
way a laptop on a LAN runs it (``daemon --listen <its address>:0
--mdns-interface <its veth>``): a link code's address hint and the host's mDNS
advert both point at the live host, and the guest races them. A race shows up
as flakiness, so each scenario runs 20 joins, not one. Also: guests started
while the host comes up (its advert appears as they look for it), wrong PINs
until the lock (kept across a restart), and a short-code join while another
daemon on the LAN advertises the same discriminator.

Root only (namespaces); skipped with the reason otherwise. Nothing multicasts
outside the namespaces.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from p2pinvite.invitations.codes import LinkCode, ShortCode, is_trivial_digits
from p2pinvite.invitations.model import AuthMethod, InvitationKind
from p2pinvite.invitations.store import InvitationStore

from ..net.netns import Namespace, skip_reason
from .conftest import DaemonProc
from .test_e2e_netns import NsDaemons, members, mistyped, ok_json
from .test_e2e_netns import veth as veth  # the fixture
from .test_e2e_pairing import join, start_join

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]

JOINS = 20
UNIFORM = "p2pinvite: invitation not accepted: invitation not available [refused]"


def _pair(veth: tuple[Namespace, Namespace, NsDaemons]
          ) -> tuple[Namespace, DaemonProc, DaemonProc, dict[str, Any], dict[str, Any]]:
    """Host in the first namespace, guest in the second, each with an identity."""
    a, b, start = veth
    host = start.start(a, start.home("alice"), "--log-level", "debug")
    guest = start.start(b, start.home("bob"), "--log-level", "debug")
    alice = ok_json(host, "identity", "create", "--name", "Alice")
    bob = ok_json(guest, "identity", "create", "--name", "Bob")
    return a, host, guest, alice, bob


def _explain(r: subprocess.CompletedProcess[str], *daemons: DaemonProc) -> str:
    logs = "\n".join(f"--- {d.home.name}:\n{d.stderr()[-6000:]}" for d in daemons)
    return f"exit {r.returncode}: {r.stderr}\n{logs}"


def _no_secret_leaked(secrets: list[str], *daemons: DaemonProc) -> None:
    for d in daemons:
        text = d.stderr()
        assert "Traceback" not in text
        for secret in secrets:
            assert secret not in text


@pytest.mark.parametrize("auth", ["pin", "none"])
def test_twenty_link_code_joins_in_a_row_with_hints_and_mdns_live(
        veth: tuple[Namespace, Namespace, NsDaemons], auth: str) -> None:
    _, host, guest, alice, bob = _pair(veth)
    status = ok_json(host, "status")
    assert status["mdns"] is True
    secrets: list[str] = []
    for i in range(JOINS):
        space = ok_json(host, "space", "create", f"Space {i}")["space_id"]
        inv = ok_json(host, "invite", "create", "--space", space, "--role", "editor",
                      "--auth", auth)
        # The common case this test is about: the hint names the live host, which
        # also advertises the invitation over mDNS.
        assert LinkCode.parse(inv["code"]).hints == (tuple(status["addresses"][0]),)
        secrets.append(LinkCode.parse(inv["code"]).secret.hex())
        if auth == "pin":
            secrets.append(inv["pin"])
        r = join(guest, inv["code"], "--json", pin=inv.get("pin"))
        assert r.returncode == 0, f"join {i + 1} of {JOINS}: {_explain(r, host, guest)}"
        assert json.loads(r.stdout)["space_id"] == space
        expected = sorted([(alice["identity_key"], "Alice", "owner"),
                           (bob["identity_key"], "Bob", "editor")])
        assert members(host, space) == members(guest, space) == expected
        [record] = [x for x in ok_json(host, "invite", "list", "--all") if x["id"] == inv["id"]]
        assert (record["status"], record["uses"], record["failed_attempts"]) == \
            ("exhausted", 1, 0)
    _no_secret_leaked(secrets, host, guest)
    # At debug level each connection's fate is in the logs: the guest's dials and
    # the one it kept per join, the host's sessions.
    guest_log, host_log = guest.stderr(), host.stderr()
    assert guest_log.count("established with peer") == JOINS
    assert host_log.count("session with peer") == JOINS
    assert "mDNS found" in guest_log


def test_joins_started_while_the_host_comes_up(
        veth: tuple[Namespace, Namespace, NsDaemons]) -> None:
    # Each guest starts looking while the host is down; the host then starts and
    # announces its invitations (mDNS) and listens on the code's hinted port again:
    # the guest sees both at about the same moment.
    a, host, guest, _alice, _bob = _pair(veth)
    _, _, start = veth
    invitations = []
    for i in range(JOINS):
        space = ok_json(host, "space", "create", f"Space {i}")["space_id"]
        auth = "pin" if i % 2 == 0 else "none"
        invitations.append((space, ok_json(host, "invite", "create", "--space", space,
                                           "--auth", auth)))
    for i, (space, inv) in enumerate(invitations):
        assert host.stop() == 0
        proc = start_join(guest, inv["code"], "--json", pin=inv.get("pin"))
        time.sleep(0.2)  # the guest is dialing the hint and browsing mDNS in vain
        host = start.start(a, host.home, "--log-level", "debug", wait=False)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"join {i + 1}: {err}\n{host.stderr()[-4000:]}"
        assert json.loads(out)["space_id"] == space
        # wait until the host answers IPC before asking it anything
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and host.cli("status").returncode != 0:
            time.sleep(0.05)
        assert members(host, space) == members(guest, space)
        assert len(members(host, space)) == 2


def _wrong(pin: str, k: int) -> str:
    n, found = int(pin), 0
    while True:
        n = (n + 1) % 10**6
        candidate = f"{n:06d}"
        if not is_trivial_digits(candidate):
            found += 1
            if found == k:
                return candidate


def test_three_wrong_pins_lock_the_invitation_also_after_a_host_restart(
        veth: tuple[Namespace, Namespace, NsDaemons]) -> None:
    a, host, guest, _alice, _bob = _pair(veth)
    _, _, start = veth
    space = ok_json(host, "space", "create", "Locked")["space_id"]
    inv = ok_json(host, "invite", "create", "--space", space, "--auth", "pin")
    for k, left in ((1, 2), (2, 1), (3, 0)):
        r = join(guest, inv["code"], pin=_wrong(inv["pin"], k))
        assert r.returncode == 1, _explain(r, host, guest)
        plural = "s" if left != 1 else ""
        assert r.stderr.splitlines()[-1] == f"p2pinvite: wrong PIN; {left} attempt{plural} left"
    [record] = ok_json(host, "invite", "list", "--all")
    assert (record["status"], record["failed_attempts"]) == ("locked", 3)
    for restart in (False, True):
        if restart:
            assert host.stop() == 0
            host = start.start(a, host.home, "--log-level", "debug")
        began = time.monotonic()
        r = join(guest, inv["code"], pin=inv["pin"])  # the right PIN, too late
        assert r.returncode == 1
        assert r.stderr.splitlines()[-1] == UNIFORM, _explain(r, host, guest)
        # Answered by the host at once, not after the guest's connect timeout.
        assert time.monotonic() - began < 20
        [record] = ok_json(host, "invite", "list", "--all")
        assert (record["status"], record["failed_attempts"], record["uses"]) == ("locked", 3, 0)
    assert len(members(host, space)) == 1
    assert ok_json(guest, "space", "list") == []
    _no_secret_leaked([inv["pin"]], host, guest)


@pytest.fixture
def impostor_discriminator(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make InvitationStore.create (in this process) draw the discriminator we name."""
    wanted: list[str] = []
    real = ShortCode.generate

    def generate(discriminator: str | None = None) -> ShortCode:
        return real(wanted[0])

    monkeypatch.setattr(ShortCode, "generate", staticmethod(generate))
    return wanted


@pytest.mark.parametrize("typo", [False, True], ids=["right-code", "mistyped-code"])
def test_a_short_code_join_is_not_ended_by_another_host_with_the_same_discriminator(
        veth: tuple[Namespace, Namespace, NsDaemons], impostor_discriminator: list[str],
        typo: bool) -> None:
    a, host, guest, alice, bob = _pair(veth)
    _, _, start = veth
    space = ok_json(host, "space", "create", "Garden")["space_id"]
    real = ok_json(host, "invite", "create", "--space", space, "--role", "editor",
                   "--auth", "short")
    disc = ShortCode.parse(real["code"]).discriminator
    # Another daemon on the LAN hosts a short code with the same discriminator
    # (and another secret): it answers the guest's mDNS lookup as well.
    other = start.start(a, start.home("mallory"))
    mallory = ok_json(other, "identity", "create", "--name", "Mallory")
    assert other.stop() == 0
    impostor_discriminator.append(disc)
    store = InvitationStore.open(other.home / "invitations")
    key = bytes.fromhex(mallory["identity_key"])
    fake = store.create(kind=InvitationKind.DEVICE, target=key, created_by=key,
                        now=time.time(), auth=AuthMethod.SHORT)
    assert fake.short_discriminator == disc
    assert fake.short_secret != ShortCode.parse(real["code"]).secret
    other = start.start(a, other.home, "--log-level", "debug")

    code = mistyped(real["code"]) if typo else real["code"]
    r = join(guest, code, "--json")
    [record] = ok_json(host, "invite", "list", "--all")
    if typo:
        # Both hosts answered "wrong code"; the guest reports it with what is left.
        assert r.returncode == 1
        assert r.stderr.splitlines()[-1] == "p2pinvite: wrong code; 19 attempts left"
        assert (record["status"], record["failed_attempts"]) == ("pending", 1)
    else:
        assert r.returncode == 0, _explain(r, host, guest, other)
        assert json.loads(r.stdout)["space_id"] == space
        assert members(host, space) == members(guest, space) == sorted(
            [(alice["identity_key"], "Alice", "owner"), (bob["identity_key"], "Bob", "editor")])
        # The real host's record: admitted, and not one attempt spent.
        assert (record["status"], record["uses"], record["failed_attempts"]) == \
            ("exhausted", 1, 0)
    # The other host may have been asked (its own attempt, not the real host's).
    [theirs] = ok_json(other, "invite", "list", "--all")
    assert theirs["failed_attempts"] <= 1
    assert theirs["uses"] == 0
