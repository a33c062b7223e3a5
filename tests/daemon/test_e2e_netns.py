"""End to end over real mDNS: daemons in two network namespaces joined by veth.

Each daemon runs inside its namespace (``ip netns exec NS python -m p2pinvite
... daemon --listen <ns ip>:0 --mdns-interface <veth>``), so its multicast
never leaves the veth pair. The CLI runs in the root namespace: the IPC socket
is a file in the daemon's home. Root only; skipped with the reason otherwise.
Daemons are stopped, then the namespaces deleted (killing anything left in
them), also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pinvite.invitations.codes import LinkCode, ShortCode, is_trivial_digits

from ..net.netns import Namespace, skip_reason, veth_namespaces
from .conftest import PY, REPO, DaemonProc, wait_ready
from .test_e2e_pairing import join

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]


class NsDaemons:
    """Starts daemons inside namespaces; :meth:`cleanup` stops them and removes homes."""

    def __init__(self) -> None:
        self._procs: list[DaemonProc] = []
        self._base = Path(tempfile.mkdtemp(prefix="p2pn-", dir="/tmp"))

    def home(self, name: str) -> Path:
        return self._base / name

    def start(self, ns: Namespace, home: Path, *extra: str, wait: bool = True) -> DaemonProc:
        """A daemon in *ns* as a laptop on its LAN runs it; *extra* daemon arguments."""
        err = self._base / f"{home.name}.{time.monotonic_ns()}.stderr"
        with err.open("wb") as f:
            proc = subprocess.Popen(
                ns.argv(PY, "-m", "p2pinvite", "--home", str(home), "daemon",
                        "--listen", f"{ns.addr}:0", "--mdns-interface", ns.iface, *extra),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, cwd=REPO)
        d = DaemonProc(home, proc, err)
        self._procs.append(d)
        if wait:
            wait_ready(d)
        return d

    def cleanup(self) -> None:
        for d in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.stop()
            d.kill()
        shutil.rmtree(self._base, ignore_errors=True)


@pytest.fixture
def veth() -> Iterator[tuple[Namespace, Namespace, NsDaemons]]:
    """Two namespaces joined by veth, and a daemon starter; all torn down afterwards."""
    with veth_namespaces() as (a, b):
        starter = NsDaemons()
        try:
            yield a, b, starter
        finally:
            starter.cleanup()


def ok_json(d: DaemonProc, *args: str) -> Any:
    r = d.cli(*args, "--json")
    assert r.returncode == 0, f"{args}: exit {r.returncode}: {r.stderr}\n{d.stderr()}"
    return json.loads(r.stdout)


def members(d: DaemonProc, space: str) -> list[tuple[str, str, str]]:
    return sorted((m["identity_key"], m["name"], m["role"])
                  for m in ok_json(d, "space", "members", space))


def mistyped(code: str) -> str:
    """Another valid short code with the same discriminator (check digit recomputed)."""
    parsed = ShortCode.parse(code)
    n = int(parsed.secret)
    while True:
        n = (n + 1) % 10**7
        secret = f"{n:07d}"
        if not is_trivial_digits(secret):
            return ShortCode(parsed.discriminator, secret).encode()


def test_short_code_space_pairing_over_mdns(
        veth: tuple[Namespace, Namespace, NsDaemons]) -> None:
    a, b, start = veth
    host = start.start(a, start.home("alice"))
    guest = start.start(b, start.home("bob"))
    status = ok_json(host, "status")
    assert status["mdns"] is True
    assert status["addresses"] == [[a.addr, status["addresses"][0][1]]]
    alice = ok_json(host, "identity", "create", "--name", "Alice")
    bob = ok_json(guest, "identity", "create", "--name", "Bob")
    space = ok_json(host, "space", "create", "Garden")
    inv = ok_json(host, "invite", "create", "--space", "Garden", "--role", "editor",
                  "--auth", "short")
    assert (inv["auth"], inv["kind"]) == ("short", "space")
    assert "pin" not in inv
    code = inv["code"]
    assert ShortCode.parse(code).encode() == code  # DDDD-SSSS-SSSC with a valid check digit

    # A mistyped secret reaches the host (same discriminator) and costs one attempt.
    r = join(guest, mistyped(code))
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == "p2pinvite: wrong code; 19 attempts left"

    r = join(guest, code, "--json")
    assert r.returncode == 0, f"{r.stderr}\nhost:\n{host.stderr()}\nguest:\n{guest.stderr()}"
    assert json.loads(r.stdout) == {"kind": "space", "identity_key": bob["identity_key"],
                                    "space_id": space["space_id"], "space_name": "Garden",
                                    "role": "editor"}
    expected = sorted([(alice["identity_key"], "Alice", "owner"),
                       (bob["identity_key"], "Bob", "editor")])
    assert members(host, space["space_id"]) == expected
    assert members(guest, space["space_id"]) == expected
    [record] = ok_json(host, "invite", "list", "--all")
    assert (record["status"], record["uses"], record["failed_attempts"]) == ("exhausted", 1, 1)
    for d in (host, guest):
        assert ShortCode.parse(code).secret not in d.stderr()
        assert "Traceback" not in d.stderr()


def test_short_code_device_pairing_over_mdns(
        veth: tuple[Namespace, Namespace, NsDaemons]) -> None:
    a, b, start = veth
    host = start.start(a, start.home("phone"))
    laptop = start.start(b, start.home("laptop"))
    alice = ok_json(host, "identity", "create", "--name", "Alice")
    inv = ok_json(host, "invite", "create", "--device", "--auth", "short")
    r = join(laptop, inv["code"], "--json")
    assert r.returncode == 0, f"{r.stderr}\nhost:\n{host.stderr()}"
    assert json.loads(r.stdout)["identity_key"] == alice["identity_key"]
    host_devices = [dv["device_key"] for dv in ok_json(host, "devices")]
    assert host_devices == [dv["device_key"] for dv in ok_json(laptop, "devices")]
    assert len(host_devices) == 2
    assert ok_json(laptop, "identity", "show")["identity_key"] == alice["identity_key"]


def test_link_code_survives_host_restart_on_a_new_port(
        veth: tuple[Namespace, Namespace, NsDaemons]) -> None:
    # A restarted host whose previous port is no longer available listens on a
    # new one, so the link code's address hint is stale; mDNS (the host
    # re-advertises the topic of every pending invitation) finds it anyway.
    a, b, start = veth
    host = start.start(a, start.home("alice"))
    guest = start.start(b, start.home("bob"))
    ok_json(host, "identity", "create", "--name", "Alice")
    ok_json(guest, "identity", "create", "--name", "Bob")
    space = ok_json(host, "space", "create", "Notes")
    inv = ok_json(host, "invite", "create", "--space", "Notes", "--role", "reader")
    hints = LinkCode.parse(inv["code"]).hints
    assert hints == ((a.addr, ok_json(host, "status")["addresses"][0][1]),)

    assert host.stop() == 0
    # Forget the remembered port (as if another program had taken it meanwhile),
    # so the daemon binds a fresh one.
    (Path(host.home) / "listen.port").unlink()
    host = start.start(a, host.home)
    [[_, new_port]] = ok_json(host, "status")["addresses"]
    r = join(guest, inv["code"], "--json", pin=inv["pin"])
    assert r.returncode == 0, f"{r.stderr}\nhost:\n{host.stderr()}"
    assert json.loads(r.stdout)["role"] == "reader"
    assert members(host, space["space_id"]) == members(guest, space["space_id"])
    assert len(members(host, space["space_id"])) == 2
    if (a.addr, new_port) in hints:
        pytest.fail("the port did not change; this test no longer shows mDNS at work")
