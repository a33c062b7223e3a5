"""The daemon, the CLI and the clients, as real processes over the real socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time

import msgpack
import pytest
import trio

from p2pinvite import ipc_codec
from p2pinvite.client import RequestError, connect, connect_async
from p2pinvite.errors import DaemonNotRunning

from .conftest import (
    PY,
    REPO,
    DaemonFactory,
    DaemonProc,
    raw_ipc,
    read_reply,
    run_cli,
    socket_answers,
)

pytestmark = pytest.mark.slow


def _json(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- lifecycle ------------------------------------------------------------------------


def test_start_status_and_sigterm_stop(daemon: DaemonProc) -> None:
    st = _json(daemon.cli("status", "--json"))
    assert isinstance(st, dict)
    assert st["pid"] == daemon.proc.pid
    assert st["home"] == str(daemon.home)
    assert st["mdns"] is False
    assert st["identity"] is None
    assert len(st["device_key"]) == 64
    [[host, port]] = st["addresses"]
    assert host == "127.0.0.1"
    assert 0 < port < 65536
    # The TCP listener really is there.
    with socket.create_connection((host, port), timeout=5):
        pass
    mode = daemon.socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(daemon.home.stat().st_mode) == 0o700

    assert daemon.stop() == 0
    assert not daemon.socket_path.exists()
    err = daemon.stderr()
    assert "daemon ready" in err
    assert "shutting down signal=SIGTERM" in err
    assert "daemon stopped" in err
    assert "Traceback" not in err


def test_sigint_also_stops_cleanly(daemon: DaemonProc) -> None:
    assert daemon.signal(signal.SIGINT) == 0
    assert not daemon.socket_path.exists()
    assert "shutting down signal=SIGINT" in daemon.stderr()


def test_second_daemon_on_same_home_is_refused(daemons: DaemonFactory) -> None:
    first = daemons.start()
    second = daemons.spawn(first.home)
    assert second.proc.wait(timeout=20) != 0
    assert f"a daemon is already running on {first.home} (pid {first.proc.pid})" in (
        second.stderr()
    )
    # The first one is unharmed and still owns its socket.
    assert _json(first.cli("status", "--json"))["pid"] == first.proc.pid  # type: ignore[index]


def test_stale_socket_of_a_killed_daemon_is_replaced(daemons: DaemonFactory) -> None:
    first = daemons.start()
    first.signal(signal.SIGKILL)
    assert first.socket_path.exists()  # left behind, nobody listening
    assert not socket_answers(first.socket_path)
    again = daemons.start(first.home)
    st = _json(again.cli("status", "--json"))
    assert st["pid"] == again.proc.pid  # type: ignore[index]
    # Same home, same device key: the keys persisted.
    assert again.stop() == 0


def test_home_from_environment(daemons: DaemonFactory) -> None:
    d = daemons.start()
    env = dict(os.environ, P2PINVITE_HOME=str(d.home))
    r = subprocess.run([PY, "-m", "p2pinvite", "status", "--json"], capture_output=True,
                       text=True, timeout=30, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pid"] == d.proc.pid


def test_daemon_not_running_says_how_to_start(daemons: DaemonFactory) -> None:
    home = daemons.new_home()
    r = run_cli(home, "status")
    assert r.returncode == 3
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not running" in lines[0]
    assert f"p2pinvite --home {home} daemon" in lines[0]
    with pytest.raises(DaemonNotRunning, match="daemon"):
        connect(home)


# -- identity, devices, spaces through the CLI --------------------------------------------


def test_identity_create_and_show(daemon: DaemonProc) -> None:
    r = daemon.cli("identity", "show")
    assert r.returncode == 1
    assert "no_identity" in r.stderr
    created = _json(daemon.cli("identity", "create", "--name", "Alice", "--json"))
    shown = _json(daemon.cli("identity", "show", "--json"))
    assert created == shown
    assert isinstance(shown, dict)
    assert shown["name"] == "Alice"
    assert len(shown["identity_key"]) == 64
    st = _json(daemon.cli("status", "--json"))
    assert st["identity"] == shown["identity_key"]  # type: ignore[index]
    again = daemon.cli("identity", "create", "--name", "Bob")
    assert again.returncode == 1
    assert "already_exists" in again.stderr
    devices = _json(daemon.cli("devices", "--json"))
    assert devices == [
        {"device_key": shown["device_key"], "this_device": True, "added_at": None}
    ]
    human = daemon.cli("identity", "show")
    assert human.returncode == 0
    assert "Alice" in human.stdout


def test_spaces_create_list_members(daemon: DaemonProc) -> None:
    assert daemon.cli("space", "create", "Photos").returncode == 1  # no identity yet
    ident = _json(daemon.cli("identity", "create", "--name", "Alice", "--json"))
    made = _json(daemon.cli("space", "create", "Photos", "--json"))
    assert isinstance(made, dict)
    assert made["name"] == "Photos"
    sid = made["space_id"]
    assert len(sid) == 64
    assert sid == sid.lower()
    listed = _json(daemon.cli("space", "list", "--json"))
    assert listed == [{"space_id": sid, "name": "Photos", "role": "owner", "members": 1}]
    [owner] = _json(daemon.cli("space", "members", sid, "--json"))  # type: ignore[misc]
    # The owner's membership is the genesis's second entry, signed by the space key.
    assert (owner["identity_key"], owner["name"], owner["role"], owner["admitted_by"],
            owner["invitation"]) == (ident["identity_key"], "Alice", "owner", sid, None)  # type: ignore[index]
    assert abs(owner["admitted_at"] - time.time()) < 60
    assert len(owner["entry"]) == 64
    expected = [owner]
    assert _json(daemon.cli("space", "members", "Photos", "--json")) == expected
    assert _json(daemon.cli("space", "members", sid[:12], "--json")) == expected

    daemon.cli("space", "create", "Photos")
    r = daemon.cli("space", "members", "Photos")
    assert r.returncode == 1
    assert "ambiguous" in r.stderr
    r = daemon.cli("space", "members", "nothing")
    assert r.returncode == 1
    assert "not_found" in r.stderr
    human = daemon.cli("space", "list")
    assert human.returncode == 0
    assert human.stdout.count("Photos") == 2


def test_state_survives_restart(daemons: DaemonFactory) -> None:
    d = daemons.start()
    ident = _json(d.cli("identity", "create", "--name", "Alice", "--json"))
    space = _json(d.cli("space", "create", "Notes", "--json"))
    assert d.stop() == 0
    d2 = daemons.start(d.home)
    assert _json(d2.cli("identity", "show", "--json")) == ident
    listed = _json(d2.cli("space", "list", "--json"))
    assert [s["space_id"] for s in listed] == [space["space_id"]]  # type: ignore[index,union-attr]


def test_cli_usage_errors_exit_2(daemon: DaemonProc) -> None:
    r = daemon.cli("invite", "create", "--role", "editor")  # neither --space nor --device
    assert r.returncode == 2
    r = daemon.cli("invite", "create", "--device", "--expires", "soon")
    assert r.returncode == 2
    assert "invalid duration" in r.stderr
    r = run_cli(daemon.home, "daemon", "--listen", "nope")
    assert r.returncode == 2
    assert "HOST:PORT" in r.stderr


# -- the Python clients against a real daemon ---------------------------------------------


def test_blocking_client(daemon: DaemonProc) -> None:
    with connect(daemon.home) as c:
        st = c.status()
        assert st.pid == daemon.proc.pid
        assert st.addresses[0][0] == "127.0.0.1"
        with pytest.raises(RequestError) as info:
            c.identity.show()
        assert info.value.code == "no_identity"
        ident = c.identity.create("Carol")
        assert c.identity.show() == ident
        space = c.spaces.create("Garden")
        assert [s.space_id for s in c.spaces.list()] == [space.space_id]
        [member] = c.spaces.members("Garden")
        assert (member.identity_key, member.role) == (ident.identity_key, "owner")
        [dev] = c.devices.list()
        assert dev.this_device
        assert dev.device_key == st.device_key
        with pytest.raises(RequestError) as info:
            c.call("no.such.method")
        assert info.value.code == "unknown_method"
        with pytest.raises(RequestError) as info:
            c.call("spaces.create", {"name": 7})
        assert info.value.code == "bad_request"


async def test_async_client_concurrent_requests(daemon: DaemonProc) -> None:
    with trio.fail_after(20):
        async with await connect_async(daemon.home) as c:
            await c.identity.create("Dave")
            results: dict[int, object] = {}

            async def one(i: int) -> None:
                results[i] = await c.spaces.create(f"space {i}")

            async with trio.open_nursery() as n:
                for i in range(8):
                    n.start_soon(one, i)
                n.start_soon(c.status)
            names = sorted(s.name for s in await c.spaces.list())
            assert names == sorted(f"space {i}" for i in range(8))
            assert len({r.space_id for r in results.values()}) == 8  # type: ignore[attr-defined]


def test_blocking_client_and_cli_do_not_import_trio(daemon: DaemonProc) -> None:
    code = (
        "import sys, p2pinvite.client as c, p2pinvite.cli\n"
        f"cl = c.connect({str(daemon.home)!r})\n"
        "st = cl.status()\n"
        "heavy = [m for m in ('trio', 'cryptography', 'zeroconf') if m in sys.modules]\n"
        "print(st.pid, heavy)\n"
    )
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(" ", 1) == [str(daemon.proc.pid), "[]\n"]


# -- bad input on the IPC socket ---------------------------------------------------------




def _status_works(d: DaemonProc) -> bool:
    with connect(d.home, timeout=10) as c:
        return c.status().pid == d.proc.pid


def test_garbage_frame_gets_error_and_connection_keeps_serving(daemon: DaemonProc) -> None:
    with raw_ipc(daemon) as s:
        s.sendall((5).to_bytes(4, "big") + b"\xc1junk")  # 0xc1 is never valid msgpack
        reply = read_reply(s)
        assert isinstance(reply, ipc_codec.ErrorReply)
        assert (reply.id, reply.code) == (None, "bad_request")
        body = msgpack.packb({"id": 9, "method": "status", "params": {}})
        s.sendall(len(body).to_bytes(4, "big") + body)
        ok = read_reply(s)
        assert isinstance(ok, ipc_codec.Result)
        assert ok.id == 9
    assert _status_works(daemon)


def test_request_without_method_gets_error_with_its_id(daemon: DaemonProc) -> None:
    with raw_ipc(daemon) as s:
        body = msgpack.packb({"id": 4, "params": {}})
        s.sendall(len(body).to_bytes(4, "big") + body)
        reply = read_reply(s)
        assert isinstance(reply, ipc_codec.ErrorReply)
        assert (reply.id, reply.code) == (4, "bad_request")


def test_oversized_frame_is_refused_and_closed(daemon: DaemonProc) -> None:
    with raw_ipc(daemon) as s:
        s.sendall((ipc_codec.MAX_IPC_FRAME + 1).to_bytes(4, "big") + b"x" * 100)
        reply = read_reply(s)
        assert isinstance(reply, ipc_codec.ErrorReply)
        assert reply.code == "bad_request"
        assert read_reply(s) is None  # then closed
    assert _status_works(daemon)


def test_truncated_frame_then_hangup_leaves_daemon_serving(daemon: DaemonProc) -> None:
    for _ in range(3):
        with raw_ipc(daemon) as s:
            s.sendall((100).to_bytes(4, "big") + b"\x83\xa2id")  # promised 100, sent 4
    assert _status_works(daemon)
    assert daemon.proc.poll() is None


# -- SO_PEERCRED: another uid is refused ---------------------------------------------------

_NOBODY_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
except BrokenPipeError:
    pass  # refused before we spoke: the answer is still there to read
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.hex())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as user nobody")
def test_other_uid_is_refused_by_peercred(daemon: DaemonProc) -> None:
    system_python = "/usr/bin/python3"
    if not os.access(system_python, os.X_OK):
        pytest.skip("needs /usr/bin/python3 runnable by user nobody")
    # Open the filesystem door (test only) so that only SO_PEERCRED stands in the way.
    for p in (daemon.home.parent, daemon.home):
        p.chmod(0o711)
    daemon.socket_path.chmod(0o666)
    request = ipc_codec.encode(ipc_codec.Request(1, "status", {}))
    r = subprocess.run(
        [system_python, "-I", "-c", _NOBODY_CLIENT, str(daemon.socket_path), request.hex()],
        capture_output=True, text=True, timeout=30, user=65534, group=65534, cwd="/",
    )
    assert r.returncode == 0, r.stderr
    data = bytes.fromhex(r.stdout.strip())
    reply = ipc_codec.decode_reply(data[4:])
    assert isinstance(reply, ipc_codec.ErrorReply)
    assert reply.code == "permission_denied"
    assert reply.id is None
    assert len(data) == 4 + int.from_bytes(data[:4], "big")  # nothing else, then closed
    assert "ipc peer refused peer_uid=65534" in daemon.stderr()
    assert _status_works(daemon)  # the owner is still served


# -- startup failures are one clear line ----------------------------------------------------


def test_listen_address_in_use_is_a_clear_failure(daemons: DaemonFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        home = daemons.new_home()
        r = subprocess.run(
            [PY, "-m", "p2pinvite", "--home", str(home), "daemon", "--no-mdns",
             "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30, cwd=REPO,
        )
    assert r.returncode == 1
    assert "cannot start" in r.stderr
    assert "Traceback" not in r.stderr


# -- invitations end to end: two daemons over loopback --------------------------------------


def _wrong(pin: str) -> str:
    return f"{(int(pin) + 1) % 10**6:06d}"


def test_invite_and_join_with_pin_between_two_daemons(daemons: DaemonFactory) -> None:
    host, guest = daemons.start(), daemons.start()
    assert host.cli("identity", "create", "--name", "Alice").returncode == 0
    assert guest.cli("identity", "create", "--name", "Bob").returncode == 0
    space = _json(host.cli("space", "create", "Photos", "--json"))
    inv = _json(host.cli("invite", "create", "--space", "Photos", "--role", "editor",
                         "--note", "for Bob", "--json"))
    assert isinstance(inv, dict)
    assert (inv["kind"], inv["auth"]) == ("space", "pin")
    assert len(inv["pin"]) == 6
    assert inv["code"].startswith("p2pinvite:")
    info = _json(guest.cli("invite", "validate", inv["code"], "--json"))
    assert isinstance(info, dict)
    assert (info["valid"], info["auth"], info["kind"]) == (True, "pin", "space")

    wrong = guest.cli("join", "-", "--pin", "-", input=f"{inv['code']}\n{_wrong(inv['pin'])}\n")
    assert wrong.returncode == 1
    assert "wrong PIN; 2 attempts left" in wrong.stderr

    ok = guest.cli("join", "-", "--pin", "-", input=f"{inv['code']}\n{inv['pin']}\n")
    assert ok.returncode == 0, ok.stderr
    assert "connecting" in ok.stderr
    assert "admitted" in ok.stderr
    assert isinstance(space, dict)
    assert f"joined space 'Photos' ({space['space_id']}) as editor" in ok.stdout

    members = _json(host.cli("space", "members", "Photos", "--json"))
    assert sorted((m["name"], m["role"]) for m in members) == [  # type: ignore[union-attr,index]
        ("Alice", "owner"), ("Bob", "editor")]
    [record] = _json(host.cli("invite", "list", "--all", "--json"))  # type: ignore[misc]
    assert (record["status"], record["uses"], record["failed_attempts"], record["note"]) == (
        "exhausted", 1, 1, "for Bob")
    # No PIN or code secret in either daemon's log.
    for d in (host, guest):
        err = d.stderr()
        assert inv["pin"] not in err
        assert inv["code"][10:40] not in err


def test_invite_revoke_and_bad_code(daemon: DaemonProc) -> None:
    assert daemon.cli("identity", "create", "--name", "Alice").returncode == 0
    inv = _json(daemon.cli("invite", "create", "--device", "--auth", "none", "--json"))
    assert "pin" not in inv  # type: ignore[operator]
    listed = _json(daemon.cli("invite", "list", "--json"))
    assert [i["id"] for i in listed] == [inv["id"]]  # type: ignore[index,union-attr]
    revoked = _json(daemon.cli("invite", "revoke", inv["id"], "--json"))  # type: ignore[index]
    assert revoked["status"] == "revoked"  # type: ignore[index]
    assert _json(daemon.cli("invite", "list", "--json")) == []
    unknown = daemon.cli("invite", "revoke", "00" * 16)
    assert unknown.returncode == 1
    assert "not_found" in unknown.stderr
    r = daemon.cli("invite", "validate", "p2pinvite:NOTACODE")
    assert r.returncode == 1
    assert "invalid_code" in r.stderr


def test_retention_option_prunes_finished_invitations_at_start(daemons: DaemonFactory) -> None:
    d = daemons.start()
    assert d.cli("identity", "create", "--name", "Alice").returncode == 0
    inv = _json(d.cli("invite", "create", "--device", "--auth", "none", "--json"))
    _json(d.cli("invite", "revoke", inv["id"], "--json"))  # type: ignore[index]
    assert d.stop() == 0
    time.sleep(1.1)  # the record is now finished for more than a second
    d = daemons.start(d.home)  # the default retention (30 days) keeps it
    listed = _json(d.cli("invite", "list", "--all", "--json"))
    assert [i["id"] for i in listed] == [inv["id"]]  # type: ignore[index,union-attr]
    assert d.stop() == 0
    d = daemons.start(d.home, extra=["--retention", "1s"])
    assert _json(d.cli("invite", "list", "--all", "--json")) == []
    assert "pruned 1 finished invitation record(s)" in d.stderr()
