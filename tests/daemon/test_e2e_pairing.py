"""End to end: real daemon processes on loopback, driven by the real CLI.

Every daemon is a ``python -m p2pinvite ... daemon`` process (mDNS off, the
link code's address hints find the host); every user action is a
``python -m p2pinvite ...`` process. Each step has a timeout (the CLI runner's
``subprocess`` timeout, socket timeouts, the daemon start deadline) and the
``daemons`` fixture stops every process it started, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest

from p2pinvite import ipc_codec
from p2pinvite.invitations.codes import LinkCode, is_trivial_digits
from p2pinvite.net.manager import MAX_PREAMBLE, encode_preamble
from p2pinvite.net.topics import Topic
from p2pinvite.wire import frame

from .conftest import PY, REPO, DaemonFactory, DaemonProc, child_env, raw_ipc, read_reply, run_cli

pytestmark = pytest.mark.slow

#: What ``join`` prints on stderr as progress in human mode (not failures).
_PROGRESS = frozenset({"connecting to the inviting device...", "connected",
                       "authenticating...", "admitted"})
#: Longest we wait for the daemon to drop a connection it should drop.
_DROP_TIMEOUT = 5.0


# -- helpers --------------------------------------------------------------------------


def ok_json(d: DaemonProc, *args: str) -> Any:
    """Run ``ARGS --json`` against *d*; it must succeed with one JSON value on stdout."""
    r = d.cli(*args, "--json")
    assert r.returncode == 0, f"{args}: exit {r.returncode}: {r.stderr}"
    return json.loads(r.stdout)


def failure_line(r: subprocess.CompletedProcess[str], *, json_mode: bool = False) -> str:
    """The one line a failed command printed on stderr (join progress lines aside)."""
    assert r.returncode != 0, r.stdout
    lines = []
    for line in r.stderr.splitlines():
        if line in _PROGRESS:
            continue
        if json_mode and line.startswith("{"):
            assert "state" in json.loads(line)  # progress events must be valid JSON too
            continue
        lines.append(line)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("p2pinvite: "), lines[0]
    assert r.stdout == ""
    return lines[0]


def wrong(pin: str, k: int = 1) -> str:
    """The *k*-th well-formed PIN after *pin* (trivial patterns, refused locally, skipped)."""
    n = int(pin)
    while True:
        n = (n + 1) % 10**6
        candidate = f"{n:06d}"
        if not is_trivial_digits(candidate):
            k -= 1
            if k == 0:
                return candidate


@dataclass
class Pair:
    """Two daemons with identities (Alice hosts a space, Bob is the guest)."""

    host: DaemonProc
    guest: DaemonProc
    space_id: str
    alice: dict[str, Any]
    bob: dict[str, Any]


def make_pair(daemons: DaemonFactory, host_extra: tuple[str, ...] = ()) -> Pair:
    host = daemons.start(extra=host_extra)
    guest = daemons.start()
    alice = ok_json(host, "identity", "create", "--name", "Alice")
    bob = ok_json(guest, "identity", "create", "--name", "Bob")
    space = ok_json(host, "space", "create", "Photos")
    return Pair(host, guest, space["space_id"], alice, bob)


def invite(host: DaemonProc, *args: str) -> dict[str, Any]:
    inv = ok_json(host, "invite", "create", *args)
    assert isinstance(inv, dict)
    return inv


def join(d: DaemonProc, code: str, *extra: str,
         pin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``join`` the safe way: the code (and the PIN) on standard input, never in argv."""
    if pin is None:
        return d.cli("join", "-", *extra, input=f"{code}\n")
    return d.cli("join", "-", "--pin", "-", *extra, input=f"{code}\n{pin}\n")


def start_join(guest: DaemonProc, code: str, *extra: str,
               pin: str | None = None) -> subprocess.Popen[str]:
    """:func:`join` in the background: its secrets already on its standard input."""
    args = ["join", "-", *extra] + (["--pin", "-"] if pin is not None else [])
    read, write = os.pipe()
    os.write(write, (code + "\n" + (pin + "\n" if pin is not None else "")).encode())
    os.close(write)
    try:
        return subprocess.Popen([PY, "-m", "p2pinvite", "--home", str(guest.home), *args],
                                stdin=read, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=child_env(), cwd=REPO, start_new_session=True)
    finally:
        os.close(read)


def join_ok(guest: DaemonProc, code: str, *extra: str, pin: str | None = None) -> dict[str, Any]:
    """``join - EXTRA... --json`` (see :func:`join`): must succeed; returns the result map."""
    r = join(guest, code, *extra, "--json", pin=pin)
    assert r.returncode == 0, r.stderr
    states = [json.loads(line)["state"] for line in r.stderr.splitlines()]
    assert states[-1] == "admitted"
    assert "connecting" in states
    result = json.loads(r.stdout)
    assert isinstance(result, dict)
    return result


def members(d: DaemonProc, space: str) -> list[tuple[str, str, str]]:
    return sorted((m["identity_key"], m["name"], m["role"])
                  for m in ok_json(d, "space", "members", space))


def tcp_address(d: DaemonProc) -> tuple[str, int]:
    [[host, port]] = ok_json(d, "status")["addresses"]
    return host, port


def assert_alive(*ds: DaemonProc) -> None:
    for d in ds:
        assert d.proc.poll() is None, d.stderr()
        assert ok_json(d, "status")["pid"] == d.proc.pid
        assert "Traceback" not in d.stderr()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 1. the demo's flow -------------------------------------------------------------------


def test_space_invitation_with_pin_members_agree(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = invite(p.host, "--space", p.space_id, "--role", "editor", "--note", "for Bob")
    assert (inv["kind"], inv["auth"]) == ("space", "pin")

    result = join_ok(p.guest, inv["code"], pin=inv["pin"])
    assert result == {"kind": "space", "identity_key": p.bob["identity_key"],
                      "space_id": p.space_id, "space_name": "Photos", "role": "editor"}

    expected = sorted([(p.alice["identity_key"], "Alice", "owner"),
                       (p.bob["identity_key"], "Bob", "editor")])
    assert members(p.host, p.space_id) == expected
    assert members(p.guest, p.space_id) == expected
    assert members(p.guest, "Photos") == expected  # the space name came along
    [listed] = ok_json(p.guest, "space", "list")
    assert (listed["space_id"], listed["role"], listed["members"]) == (p.space_id, "editor", 2)
    [record] = ok_json(p.host, "invite", "list", "--all")
    assert (record["status"], record["uses"], record["accepted_by"]) == (
        "exhausted", 1, [p.bob["identity_key"]])
    assert ok_json(p.host, "invite", "list") == []  # used up: no longer pending

    # A single-use code does not admit a second person.
    carol = daemons.start()
    ok_json(carol, "identity", "create", "--name", "Carol")
    again = join(carol, inv["code"], pin=inv["pin"])
    assert "refused" in failure_line(again)
    assert members(p.host, p.space_id) == expected


# -- 2. device invitation -----------------------------------------------------------------


def test_device_invitation_joins_the_identity(daemons: DaemonFactory) -> None:
    host, laptop = daemons.start(), daemons.start()
    alice = ok_json(host, "identity", "create", "--name", "Alice")
    laptop_key = ok_json(laptop, "status")["device_key"]
    inv = invite(host, "--device")
    assert (inv["kind"], inv["auth"]) == ("device", "pin")
    assert ok_json(laptop, "invite", "validate", inv["code"])["kind"] == "device"

    result = join_ok(laptop, inv["code"], pin=inv["pin"])
    assert result["kind"] == "device"
    assert result["identity_key"] == alice["identity_key"]

    for d in (host, laptop):
        shown = ok_json(d, "identity", "show")
        assert shown["identity_key"] == alice["identity_key"]
        assert shown["name"] == "Alice"
        assert ok_json(d, "status")["identity"] == alice["identity_key"]
    assert ok_json(laptop, "identity", "show")["device_key"] == laptop_key

    host_devices = ok_json(host, "devices")
    laptop_devices = ok_json(laptop, "devices")
    keys = [alice["device_key"], laptop_key]
    assert [dv["device_key"] for dv in host_devices] == keys
    assert [dv["device_key"] for dv in laptop_devices] == keys
    assert [dv["this_device"] for dv in host_devices] == [True, False]
    assert [dv["this_device"] for dv in laptop_devices] == [False, True]

    # The new device now speaks for the identity: it may create spaces of its own,
    # and it cannot join another identity.
    made = ok_json(laptop, "space", "create", "Laptop notes")
    assert members(laptop, made["space_id"]) == [(alice["identity_key"], "Alice", "owner")]
    other = invite(host, "--device")
    assert "already_has_identity" in failure_line(
        join(laptop, other["code"], pin=other["pin"]))


# -- 3. host restart between invite create and join ----------------------------------------


def test_host_restart_between_create_and_join(daemons: DaemonFactory) -> None:
    # The realistic setup for hints-only pairing: a daemon with a configured
    # port (as a service unit would have). The invitation, its PIN and its
    # failed-attempt count survive the restart and it is hosted again.
    listen = ("--listen", f"127.0.0.1:{free_port()}")
    p = make_pair(daemons, listen)
    before = tcp_address(p.host)
    inv = invite(p.host, "--space", "Photos", "--role", "reader")
    assert "2 attempts left" in failure_line(
        join(p.guest, inv["code"], pin=wrong(inv["pin"])))

    assert p.host.stop() == 0
    host = daemons.start(p.host.home, extra=listen)
    assert tcp_address(host) == before
    [record] = ok_json(host, "invite", "list")
    assert (record["id"], record["status"], record["failed_attempts"]) == (inv["id"], "pending", 1)

    # The count is durable: the next wrong PIN leaves one attempt, not two.
    assert "1 attempt left" in failure_line(
        join(p.guest, inv["code"], pin=wrong(inv["pin"], 2)))
    result = join_ok(p.guest, inv["code"], pin=inv["pin"])
    assert (result["space_id"], result["role"]) == (p.space_id, "reader")
    expected = sorted([(p.alice["identity_key"], "Alice", "owner"),
                       (p.bob["identity_key"], "Bob", "reader")])
    assert members(host, p.space_id) == expected
    assert members(p.guest, p.space_id) == expected
    [record] = ok_json(host, "invite", "list", "--all")
    assert (record["status"], record["failed_attempts"]) == ("exhausted", 2)


def test_restart_on_port_zero_keeps_the_port_of_issued_codes(daemons: DaemonFactory) -> None:
    # --listen HOST:0 re-binds the previous port when it is free, so a link code's
    # address hints stay true across a restart even without mDNS.
    d = daemons.start()
    ok_json(d, "identity", "create", "--name", "Alice")
    inv = invite(d, "--device", "--auth", "none")
    hints = LinkCode.parse(inv["code"]).hints
    assert d.stop() == 0
    again = daemons.start(d.home)
    assert tcp_address(again) in hints
    guest = daemons.start()
    join_ok(guest, inv["code"])
    assert ok_json(guest, "identity", "show")["identity_key"] == ok_json(
        again, "identity", "show")["identity_key"]


# -- 4. garbage on the TCP port and on the IPC socket ------------------------------------


def _dropped(s: socket.socket, timeout: float = _DROP_TIMEOUT) -> bool:
    """True when the daemon closes (or resets) *s* within *timeout* seconds."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


@contextlib.contextmanager
def _tcp(addr: tuple[str, int]) -> Iterator[socket.socket]:
    s = socket.create_connection(addr, timeout=5)
    try:
        yield s
    finally:
        s.close()


def _send_tcp_garbage(addr: tuple[str, int], topic: Topic) -> None:
    """Each kind of garbage a peer may send before it is authenticated gets it dropped."""
    hosted = encode_preamble(topic.id)
    cases = {
        "random bytes": os.urandom(4096),
        "huge preamble length": b"\xff\xff" + os.urandom(300),
        "preamble over the limit": frame(os.urandom(MAX_PREAMBLE + 1)),
        "preamble not msgpack": frame(b"\xc1" * 40),
        "unknown topic": frame(encode_preamble(os.urandom(32))) + os.urandom(100),
        "hosted topic, short noise message": frame(hosted) + frame(os.urandom(10)),
        "hosted topic, forged noise message": frame(hosted) + frame(os.urandom(48)),
        "hosted topic, garbage stream": frame(hosted) + os.urandom(70000),  # > any length
    }
    for what, data in cases.items():
        with _tcp(addr) as s:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                s.sendall(data)
            assert _dropped(s), f"daemon kept the connection after: {what}"




def _send_ipc_garbage(d: DaemonProc) -> None:
    # Random bytes: the daemon answers what it can and eventually hangs up or waits.
    for _ in range(3):
        s = raw_ipc(d, timeout=5)
        with contextlib.suppress(OSError):
            s.sendall(os.urandom(8192))
        s.close()
    # A huge length prefix: refused with bad_request, then closed.
    with contextlib.closing(raw_ipc(d, timeout=5)) as s:
        s.sendall(b"\xff\xff\xff\xff" + os.urandom(64))
        reply = read_reply(s)
        assert isinstance(reply, ipc_codec.ErrorReply)
        assert reply.code == "bad_request"
        assert _dropped(s)
    # A well-framed request map that is nonsense: an error with its id, still served.
    with contextlib.closing(raw_ipc(d, timeout=5)) as s:
        body = msgpack.packb({"id": 3, "method": "x" * 65, "params": [1, 2]})
        s.sendall(len(body).to_bytes(4, "big") + body)
        reply = read_reply(s)
        assert isinstance(reply, ipc_codec.ErrorReply)
        assert (reply.id, reply.code) == (3, "bad_request")
    # More connections than the daemon serves at once: some get busy.
    held = [raw_ipc(d, timeout=5) for _ in range(70)]
    try:
        assert _count_busy(held, wanted=1) >= 1
    finally:
        for s in held:
            s.close()


def _count_busy(conns: list[socket.socket], wanted: int) -> int:
    """How many of *conns* the daemon refused with busy (waits until *wanted* or 5 s)."""
    waiting, busy = set(conns), 0
    deadline = time.monotonic() + _DROP_TIMEOUT
    while busy < wanted and time.monotonic() < deadline:
        readable, _, _ = select.select(list(waiting), [], [], 0.2)
        for s in readable:
            waiting.discard(s)
            reply = read_reply(s)
            if isinstance(reply, ipc_codec.ErrorReply) and reply.code == "busy":
                busy += 1
    return busy


def test_ipc_serves_at_most_64_connections_at_once(daemon: DaemonProc) -> None:
    # docs/PROTOCOL.md Part 10: "64 connections at once (more get busy and are closed)".
    # A burst of connects is where an off-by-some cap shows; three bursts.
    request = ipc_codec.encode(ipc_codec.Request(1, "status", {}))
    for _ in range(3):
        held = [raw_ipc(daemon, timeout=5) for _ in range(70)]
        try:
            for s in held:
                with contextlib.suppress(OSError):  # a refused one may be closed already
                    s.sendall(request)
            replies = [read_reply(s) for s in held]
        finally:
            for s in held:
                s.close()
        served = sum(isinstance(r, ipc_codec.Result) for r in replies)
        busy = sum(isinstance(r, ipc_codec.ErrorReply) and r.code == "busy" for r in replies)
        assert served + busy == 70
        assert served <= 64, f"{served} connections served at once (busy: {busy})"
    assert_alive(daemon)


def test_garbage_on_tcp_and_ipc_then_pairing_still_works(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = invite(p.host, "--space", p.space_id, "--role", "editor")
    topic = Topic.from_secret(LinkCode.parse(inv["code"]).secret)
    addr = tcp_address(p.host)

    # Idle sockets that never speak, more than the unauthenticated cap (64):
    # they must not lock the real guest out, and each is closed by eviction or
    # by the handshake deadline (10 s).
    idle = [socket.create_connection(addr, timeout=5) for _ in range(100)]
    opened = time.monotonic()
    try:
        _send_tcp_garbage(addr, topic)
        _send_tcp_garbage(tcp_address(p.guest), topic)  # the guest listens too
        _send_ipc_garbage(p.host)
        _send_ipc_garbage(p.guest)

        # While the idle flood is still open, the real pairing succeeds.
        result = join_ok(p.guest, inv["code"], pin=inv["pin"])
        assert result["role"] == "editor"
        assert members(p.host, p.space_id) == members(p.guest, p.space_id)
        assert len(members(p.host, p.space_id)) == 2
        assert_alive(p.host, p.guest)

        # Every idle socket is dropped by the daemon within the handshake deadline.
        for s in idle:
            assert _dropped(s, max(0.5, opened + 15.0 - time.monotonic()))
    finally:
        for s in idle:
            s.close()
    assert_alive(p.host, p.guest)


# -- 5. wrong PINs lock the invitation -------------------------------------------------


def test_three_wrong_pins_lock_the_invitation(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = invite(p.host, "--space", p.space_id, "--role", "editor")
    expected_left = ["2 attempts left", "1 attempt left", "0 attempts left"]
    for k, left in enumerate(expected_left, start=1):
        r = join(p.guest, inv["code"], pin=wrong(inv["pin"], k))
        line = failure_line(r)
        assert line == f"p2pinvite: wrong PIN; {left}", line

    [record] = ok_json(p.host, "invite", "list", "--all")
    assert (record["id"], record["status"], record["failed_attempts"], record["max_attempts"],
            record["uses"]) == (inv["id"], "locked", 3, 3, 0)
    assert ok_json(p.host, "invite", "list") == []
    # The owner sees why: validate of an unusable code exits 1, the JSON on stdout
    # and one line on stderr both say "locked".
    r = p.host.cli("invite", "validate", inv["code"], "--json")
    assert r.returncode == 1
    checked = json.loads(r.stdout)
    assert (checked["valid"], checked["local"], checked["status"]) == (False, True, "locked")
    [line] = r.stderr.splitlines()
    assert line.startswith("p2pinvite: not usable (locked)"), line

    # The right PIN no longer opens it; the guest learns only the uniform refusal.
    r = join(p.guest, inv["code"], "--json", pin=inv["pin"])
    line = failure_line(r, json_mode=True)
    assert "[refused]" in line
    assert "locked" not in line
    [record] = ok_json(p.host, "invite", "list", "--all")
    assert (record["status"], record["failed_attempts"], record["uses"]) == ("locked", 3, 0)
    assert [m[1] for m in members(p.host, p.space_id)] == ["Alice"]
    assert p.space_id not in [s["space_id"] for s in ok_json(p.guest, "space", "list")]
    for d in (p.host, p.guest):
        assert inv["pin"] not in d.stderr()


# -- 6. JSON output and failures -------------------------------------------------------


def test_every_command_speaks_json_and_fails_in_one_line(daemons: DaemonFactory) -> None:
    host, guest = daemons.start(), daemons.start()
    # Each command's --json output parses (ok_json asserts it).
    assert ok_json(host, "status")["identity"] is None
    ident = ok_json(host, "identity", "create", "--name", "Alice")
    assert ok_json(host, "identity", "show") == ident
    assert len(ok_json(host, "devices")) == 1
    space = ok_json(host, "space", "create", "Garden")
    assert ok_json(host, "space", "list")[0]["space_id"] == space["space_id"]
    assert len(ok_json(host, "space", "members", "Garden")) == 1
    short = invite(host, "--space", "Garden", "--auth", "short")
    assert "pin" not in short
    assert short["code"].replace("-", "").isdigit()
    inv = invite(host, "--device", "--auth", "none", "--uses", "2", "--expires", "1h",
                 "--note", "n")
    assert {i["id"] for i in ok_json(host, "invite", "list")} == {short["id"], inv["id"]}
    assert ok_json(host, "invite", "list", "--all")[0]["kind"] in ("device", "space")
    assert ok_json(guest, "invite", "validate", inv["code"])["valid"] is True
    assert ok_json(host, "invite", "revoke", short["id"])["status"] == "revoked"
    joined = join_ok(guest, inv["code"])
    assert joined == {"kind": "device", "identity_key": ident["identity_key"],
                      "space_id": None, "space_name": None, "role": None}

    # --qr with --json keeps stdout pure JSON (the QR goes to stderr).
    r = host.cli("invite", "create", "--device", "--auth", "none", "--qr", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "device"

    # Failures: non-zero exit, nothing on stdout, exactly one line on stderr,
    # with and without --json.
    nobody = daemons.new_home()
    # join reads its code on standard input: a code in argv adds a warning line.
    failing: list[tuple[list[str], DaemonProc | None, int, str, str | None]] = [
        (["status"], None, 3, "not running", None),
        (["identity", "create", "--name", "Again"], host, 1, "already_exists", None),
        (["space", "members", "nowhere"], host, 1, "not_found", None),
        (["space", "create", "X"], daemons.start(), 1, "no_identity", None),
        (["invite", "revoke", "ab" * 16], host, 1, "not_found", None),
        (["invite", "validate", "p2pinvite:AAAA"], host, 1, "invalid_code", None),
        (["invite", "create", "--space", "nowhere"], host, 1, "not_found", None),
        (["join", "-"], guest, 1, "", "1234-5678-9012\n"),
        (["join", "-"], guest, 1, "already_has_identity", f"{inv['code']}\n"),
        (["join", "-"], guest, 1, "invalid_code", "nonsense\n"),
        (["join", "-"], None, 3, "not running", f"{inv['code']}\n"),
        (["join", "-"], guest, 2, "end of input", ""),
    ]
    for args, d, status, needle, stdin in failing:
        for json_flag in ((), ("--json",)):
            argv = [*args, *json_flag]
            r = run_cli(nobody if d is None else d.home, *argv, input=stdin)
            assert r.returncode == status, (argv, r.returncode, r.stderr)
            line = failure_line(r, json_mode=bool(json_flag))
            assert needle in line, (argv, line)
            assert inv["code"][10:] not in r.stderr  # a code is never quoted back
    # A usage error is argparse's (exit 2), never a traceback.
    r = host.cli("invite", "create", "--device", "--role", "editor", "--json")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert_alive(host, guest)


def test_interrupted_join_leaves_both_daemons_serving(daemons: DaemonFactory) -> None:
    # The guest's CLI is interrupted (Ctrl-C) right after starting a join: its
    # daemon cancels the accept (the IPC connection closed) and keeps running,
    # the host keeps the invitation usable, and a new join succeeds.
    p = make_pair(daemons)
    inv = invite(p.host, "--space", p.space_id, "--role", "editor")
    cli = subprocess.Popen(
        [PY, "-m", "p2pinvite", "--home", str(p.guest.home), "join", "-", "--pin", "-",
         "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        assert cli.stdin is not None
        assert cli.stderr is not None
        # Left open: join reads exactly its two lines (communicate() closes it later).
        cli.stdin.write(f"{inv['code']}\n{inv['pin']}\n")
        cli.stdin.flush()
        ready, _, _ = select.select([cli.stderr], [], [], 20)
        assert ready, "join printed no progress within 20 s"
        first = cli.stderr.readline()  # the first progress event: the join is under way
        assert json.loads(first)["state"] in ("init", "connecting")
        cli.send_signal(signal.SIGINT)
        cli.communicate(timeout=20)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=10)
    assert cli.returncode in (130, 0)  # 0: the join won the race with the signal
    died = "the guest daemon died when its client went away mid-join:\n"
    assert p.guest.cli("status", "--json").returncode == 0, died + p.guest.stderr()
    assert p.guest.proc.poll() is None, died + p.guest.stderr()
    # Whether or not the interrupted join got through (the host's admission is
    # shielded; the guest may have been cut off before installing it), a new
    # join succeeds -- fresh or resumed -- and admits Bob exactly once.
    if p.space_id not in [s["space_id"] for s in ok_json(p.guest, "space", "list")]:
        join_ok(p.guest, inv["code"], pin=inv["pin"])
    [record] = ok_json(p.host, "invite", "list", "--all")
    assert (record["status"], record["uses"]) == ("exhausted", 1)
    assert members(p.host, p.space_id) == members(p.guest, p.space_id)
    assert len(members(p.host, p.space_id)) == 2
    assert_alive(p.host, p.guest)
