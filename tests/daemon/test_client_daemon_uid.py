"""The clients check the daemon's uid (SO_PEERCRED) before they send anything.

The daemon refuses clients of another uid; these tests are the other half: a
process of another uid listening on the home's socket (another user's
daemon, or an impostor in a home others can write to) must never receive a
request, and so never a code, a PIN or an admission key. The impostor is a
forked child that drops to user nobody, as only root can arrange; it reports
how many bytes each connection brought it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from p2pinvite.client import ForeignDaemon, connect, connect_async
from p2pinvite.errors import IPCError

from .conftest import DaemonProc, run_cli

NOBODY = 65534
#: Seconds the impostor waits for a client to send something before it reports.
_IDLE = 5.0
_LINK = "p2pinvite:AEBAGBAFAYDQQCIKBMGA2DQPCAIREEYUCULBOGAZDINRYHI6D4QA"


@dataclass
class Impostor:
    """A process of uid nobody serving ``home/daemon.sock``."""

    home: Path
    pid: int
    reports: int  # read end of a pipe: one line per connection, "BYTES eof|idle"

    def next_report(self, timeout: float = 20.0) -> str:
        """What the impostor saw on the next connection it accepted."""
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.reports], [], [], timeout)
            assert ready, "the impostor reported nothing"
            chunk = os.read(self.reports, 1)
            assert chunk, "the impostor died"
            line += chunk
        return line.decode().strip()


def _serve_as_nobody(path: Path, ready: int, reports: int) -> None:
    """The child: become nobody, listen on *path*, report every connection's bytes."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(8)
    os.write(ready, b"1")
    srv.settimeout(120)  # never outlives a stuck test by much
    while True:
        conn, _ = srv.accept()
        conn.settimeout(_IDLE)
        got, how = 0, "eof"
        try:
            while chunk := conn.recv(65536):
                got += len(chunk)
        except TimeoutError:
            how = "idle"
        except OSError:
            how = "reset"
        conn.close()
        os.write(reports, f"{got} {how}\n".encode())


@pytest.fixture
def impostor(short_tmp: Path) -> Iterator[Impostor]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the impostor daemon must run as another uid (nobody)")
    # The door a careless setup leaves open: a home nobody may write to.
    short_tmp.chmod(0o711)
    home = short_tmp / "home"
    home.mkdir()
    home.chmod(0o777)
    ready_r, ready_w = os.pipe()
    reports_r, reports_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; it must never return into pytest
        try:
            os.close(ready_r)
            os.close(reports_r)
            _serve_as_nobody(home / "daemon.sock", ready_w, reports_w)
        finally:
            os._exit(1)
    os.close(ready_w)
    os.close(reports_w)
    try:
        ready, _, _ = select.select([ready_r], [], [], 20)
        assert ready, "the impostor did not start"
        assert os.read(ready_r, 1) == b"1", "the impostor failed to listen"
        assert (home / "daemon.sock").stat().st_uid == NOBODY
        yield Impostor(home, pid, reports_r)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(reports_r)


def _assert_refused(exc: ForeignDaemon, imp: Impostor) -> None:
    assert exc.code == "foreign_daemon"
    assert (exc.uid, exc.expected_uid) == (NOBODY, 0)
    assert str(exc).startswith(f"{imp.home / 'daemon.sock'} is served by uid {NOBODY}")
    assert "not by you (uid 0" in str(exc)


def test_impostor_would_see_what_a_client_sends(impostor: Impostor) -> None:
    # The control: the report is real, so "0 eof" below means nothing was sent.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(impostor.home / "daemon.sock"))
        s.sendall(b"hello")
    assert impostor.next_report() == "5 eof"


def test_blocking_client_refuses_another_uid_before_sending(impostor: Impostor) -> None:
    with pytest.raises(ForeignDaemon) as info:
        connect(impostor.home)
    _assert_refused(info.value, impostor)
    assert isinstance(info.value, IPCError)  # one except clause catches every IPC failure
    assert impostor.next_report() == "0 eof"


async def test_async_client_refuses_another_uid_before_sending(impostor: Impostor) -> None:
    with trio.fail_after(20), pytest.raises(ForeignDaemon) as info:
        await connect_async(impostor.home)
    _assert_refused(info.value, impostor)
    assert impostor.next_report() == "0 eof"


@pytest.mark.slow
def test_cli_refuses_another_uid_with_exit_4(impostor: Impostor) -> None:
    for argv, stdin in ((["status"], None), (["join", "-", "--json"], f"{_LINK}\n")):
        r = run_cli(impostor.home, *argv, input=stdin)
        assert r.returncode == 4, (argv, r.stderr)
        assert r.stdout == ""
        [line] = r.stderr.splitlines()
        assert line.startswith(f"p2pinvite: {impostor.home / 'daemon.sock'} is served by uid "
                               f"{NOBODY}"), line
        assert line.endswith("refusing to use it: check who owns "
                             f"{impostor.home} and its permissions"), line
        assert _LINK[10:] not in r.stderr
        assert impostor.next_report() == "0 eof"  # the code never left this process


def test_clients_compare_with_the_effective_uid(daemon: DaemonProc,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Without root: the real daemon runs as us; pretend we are someone else.
    me = os.geteuid()
    with connect(daemon.home) as c:
        assert c.status().pid == daemon.proc.pid
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with pytest.raises(ForeignDaemon) as info:
        connect(daemon.home)
    assert (info.value.uid, info.value.expected_uid) == (me, me + 1)

    async def via_trio() -> None:
        with trio.fail_after(20):
            await connect_async(daemon.home)

    with pytest.raises(ForeignDaemon):
        trio.run(via_trio)
