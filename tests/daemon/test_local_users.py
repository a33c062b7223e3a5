"""Another local user gets nothing from a daemon: not its IPC, not its files.

Adversarial suite, local users (issue 18). A real daemon runs as root with an
identity, a space, a pending invitation and a swarm secret; then a process of
another uid (``nobody``, through ``setpriv``) tries to talk to its IPC socket
and to read every secret file of its home. Two locks are tested separately:

* the file modes the daemon sets (home and subdirectories 0700, files 0600),
  which alone keep the other user out of an untouched home;
* the ``SO_PEERCRED`` check of the IPC server, which must refuse the other
  uid even when the filesystem no longer does (an owner who loosened the
  modes of the home and the socket by mistake).

The converse (the client refusing a daemon of another uid) is covered by
tests/daemon/test_client_daemon_uid.py with an impostor socket; here a REAL
daemon running as ``nobody`` is refused by root's CLI. Root only: skipped with
the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import PY, REPO, DaemonFactory, DaemonProc, child_env, run_cli, wait_ready
from .test_e2e_pairing import ok_json

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the other local user is a second uid (nobody)")

#: Run as nobody: try the IPC socket and every path given; print one JSON report.
_PROBE = r"""
import json, os, socket, sys
report = {"uid": os.getuid(), "ipc": None, "files": {}}
sock_path, paths = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sock_path)
except OSError as exc:
    report["ipc"] = "connect: " + type(exc).__name__
else:
    # A well-formed request, encoded by the project's own codec.
    from p2pinvite import ipc_codec
    try:
        s.sendall(ipc_codec.encode(ipc_codec.Request(1, "status", {})))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        report["ipc"] = ("reply: " + repr(ipc_codec.decode_reply(data[4:]))) if data else "eof"
    except OSError as exc:
        report["ipc"] = "io: " + type(exc).__name__
for p in paths:
    try:
        if os.path.isdir(p):
            report["files"][p] = "listed " + repr(sorted(os.listdir(p)))
        else:
            with open(p, "rb") as f:
                report["files"][p] = "read %d bytes" % len(f.read())
    except OSError as exc:
        report["files"][p] = "refused: " + type(exc).__name__
print(json.dumps(report))
"""


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run *argv* as uid/gid nobody with no supplementary groups."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=REPO,
        stdin=subprocess.DEVNULL)


def probe(d: DaemonProc, paths: list[Path]) -> dict[str, object]:
    r = as_nobody(PY, "-c", _PROBE, str(d.socket_path), *map(str, paths))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["uid"] == NOBODY  # the probe really ran as the other user
    assert isinstance(report, dict)
    return report


def secrets_of(home: Path) -> list[Path]:
    """Every file and directory of *home* that holds keys, logs, invitations or secrets."""
    found = [home / "keys", home / "keys" / "device.key", home / "identity",
             home / "spaces", home / "invitations", home / "swarm"]
    for sub in ("identity", "spaces", "invitations", "swarm"):
        found += sorted((home / sub).rglob("*"))
    # Each kind must be present, or the test proves nothing about it.
    assert list((home / "invitations").glob("*.inv"))
    assert list((home / "swarm").glob("*.swarm"))
    assert list((home / "spaces").rglob("space.log"))
    assert (home / "identity" / "identity.log").exists()
    return found


@pytest.fixture
def populated(daemons: DaemonFactory) -> DaemonProc:
    """A root daemon with an identity, a space (and its swarm secret) and an invitation."""
    d = daemons.start()
    ok_json(d, "identity", "create", "--name", "Alice")
    space = ok_json(d, "space", "create", "Photos")
    ok_json(d, "invite", "create", "--space", space["space_id"], "--role", "editor")
    # The home's parent is a private mkdtemp dir; open it so that only the
    # daemon's own modes stand between nobody and the home (as for ~/.p2pinvite).
    d.home.parent.chmod(0o755)
    return d


def test_other_uid_cannot_open_the_socket_or_read_any_secret(populated: DaemonProc) -> None:
    """With the modes the daemon set, nobody can neither connect nor read nor list a thing."""
    d = populated
    paths = secrets_of(d.home)
    report = probe(d, [d.home, *paths])
    assert report["ipc"] == "connect: PermissionError", report
    files = report["files"]
    assert isinstance(files, dict)
    for p in [d.home, *paths]:
        assert files[str(p)] == "refused: PermissionError", (p, files[str(p)])
    # And the daemon did not even see a client, so it is unaffected.
    assert ok_json(d, "status")["pid"] == d.proc.pid


def test_file_modes_alone_protect_secrets_in_a_traversable_home(
        populated: DaemonProc) -> None:
    """If the home and its directories were made traversable, every secret FILE is still 0600."""
    d = populated
    paths = secrets_of(d.home)
    dirs = [d.home, *[p for p in paths if p.is_dir()]]
    for p in dirs:
        p.chmod(0o711)  # others may traverse, not list
    files = [p for p in paths if p.is_file()]
    for p in files:
        assert p.stat().st_mode & 0o077 == 0, f"{p} is {oct(p.stat().st_mode)}"
    report = probe(d, files)
    assert isinstance(report["files"], dict)
    for p in files:
        assert report["files"][str(p)] == "refused: PermissionError", p


def test_so_peercred_refuses_another_uid_when_the_socket_is_open_to_all(
        populated: DaemonProc) -> None:
    """The second lock: a socket others may connect to still serves no other uid."""
    d = populated
    d.home.chmod(0o711)
    d.socket_path.chmod(0o666)
    report = probe(d, [])
    ipc = report["ipc"]
    assert isinstance(ipc, str)
    # One permission_denied error (or a bare close), never a status result.
    assert ipc == "eof" or (ipc.startswith("reply: ") and "permission_denied" in ipc), ipc
    assert "addresses" not in ipc  # no status result leaked
    # The CLI run as nobody fails the same way, with a one-line error and no output.
    r = as_nobody(PY, "-m", "p2pinvite", "--home", str(d.home), "status", "--json")
    assert r.returncode != 0
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    # The owner is still served.
    assert ok_json(d, "status")["pid"] == d.proc.pid


def test_root_cli_refuses_a_real_daemon_running_as_another_uid(daemons: DaemonFactory) -> None:
    """A real daemon of uid nobody (in a home root may enter) is refused by root's CLI, exit 4."""
    home = daemons.new_home()
    home.parent.chmod(0o755)
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY, NOBODY)
    err = home.parent / "nobody.stderr"
    with err.open("wb") as f:
        proc = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             PY, "-m", "p2pinvite", "--home", str(home), "daemon",
             "--listen", "127.0.0.1:0", "--no-mdns"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
            env=child_env(), cwd=REPO)
    d = DaemonProc(home, proc, err)
    try:
        wait_ready(d)
        r = run_cli(home, "status")
        assert r.returncode == 4, r.stderr
        assert r.stdout == ""
        [line] = r.stderr.splitlines()
        assert f"is served by uid {NOBODY}" in line, line
    finally:
        d.kill()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
