"""``join`` keeps the code and the PIN out of argv: prompt, standard input, files.

Every source is driven through the real CLI against real daemons. A code or
PIN in argv still works but warns (once, on one line). Without a source and
without a terminal, join fails with a usage error (exit 2) at once, never
waits, and never costs the invitation an attempt. No message quotes a
secret.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import termios
import time
from pathlib import Path

import pytest

from .conftest import PY, REPO, DaemonFactory, DaemonProc, child_env, run_cli
from .test_e2e_pairing import (
    _PROGRESS,
    Pair,
    failure_line,
    invite,
    join,
    make_pair,
    members,
    ok_json,
    wrong,
)

pytestmark = pytest.mark.slow

#: What join prints on stderr when the code and the PIN are both in argv.
ARGV_WARNING = (
    "p2pinvite: warning: the code and the PIN on the command line are visible to other "
    "local users (ps, /proc); pass them on standard input (join - --pin -), in files "
    "(--code-file, --pin-file), or leave them out to be asked"
)


def pin_invite(p: Pair) -> dict[str, str]:
    inv = invite(p.host, "--space", p.space_id, "--role", "editor")
    assert inv["auth"] == "pin"
    return inv


def joined(p: Pair) -> bool:
    return "Bob" in [m[1] for m in members(p.host, p.space_id)]


def failed_attempts(p: Pair) -> int:
    [record] = ok_json(p.host, "invite", "list", "--all")
    n = record["failed_attempts"]
    assert isinstance(n, int)
    return n


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def assert_no_secret(r: subprocess.CompletedProcess[str], inv: dict[str, str]) -> None:
    for secret in (inv["code"][10:], inv["pin"]):
        assert secret not in r.stdout
        assert secret not in r.stderr


# -- standard input -------------------------------------------------------------------


def test_code_and_pin_on_standard_input(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = pin_invite(p)
    r = p.guest.cli("join", "-", "--pin", "-", input=f"{inv['code']}\n{inv['pin']}\n")
    assert r.returncode == 0, r.stderr
    assert set(r.stderr.splitlines()) <= _PROGRESS  # no warning: nothing was in argv
    assert f"joined space 'Photos' ({p.space_id}) as editor" in r.stdout
    assert joined(p)


def test_code_alone_on_standard_input_needs_no_pin(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = invite(p.host, "--space", p.space_id, "--auth", "none")
    r = p.guest.cli("join", "-", input=f"  {inv['code']}  \n")  # surrounding blanks are fine
    assert r.returncode == 0, r.stderr
    assert set(r.stderr.splitlines()) <= _PROGRESS
    assert joined(p)


def test_short_standard_input_is_a_usage_error(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = pin_invite(p)
    cases = {
        "": "expected the code on line 1 of standard input, got end of input",
        f"{inv['code']}\n": "expected the PIN on line 2 of standard input, got end of input",
        f"{inv['code']}\n\n": "line 2 of standard input is empty; expected the PIN",
        f"\n{inv['pin']}\n": "line 1 of standard input is empty; expected the code",
    }
    for stdin, message in cases.items():
        r = p.guest.cli("join", "-", "--pin", "-", input=stdin)
        assert r.returncode == 2, (stdin, r.stderr)
        assert failure_line(r) == f"p2pinvite: {message}"
        assert_no_secret(r, inv)
    assert failed_attempts(p) == 0
    assert not joined(p)


# -- files -------------------------------------------------------------------------------


def test_code_and_pin_from_private_files(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = pin_invite(p)
    base = p.guest.home.parent
    code_file = private_file(base / "code", f"{inv['code']}\n")
    pin_file = private_file(base / "pin", f"{wrong(inv['pin'])}\n", mode=0o400)
    r = p.guest.cli("join", "--code-file", str(code_file), "--pin-file", str(pin_file))
    assert failure_line(r) == "p2pinvite: wrong PIN; 2 attempts left"
    assert_no_secret(r, inv)

    private_file(pin_file, inv["pin"])  # no newline at the end is fine too
    r = p.guest.cli("join", "--code-file", str(code_file), "--pin-file", str(pin_file),
                    "--json")
    assert r.returncode == 0, r.stderr
    assert all(line.startswith("{") for line in r.stderr.splitlines())  # no warning
    assert joined(p)


def test_secret_files_others_can_read_are_refused(daemons: DaemonFactory) -> None:
    # As for --admission-key-file: refused (exit 2), not merely warned about,
    # and before anything reaches a daemon.
    p = make_pair(daemons)
    inv = pin_invite(p)
    base = p.guest.home.parent
    code_file = private_file(base / "code", inv["code"])
    for mode in (0o644, 0o640, 0o604, 0o620):
        pin_file = private_file(base / "pin", inv["pin"], mode)
        r = p.guest.cli("join", "--code-file", str(code_file), "--pin-file", str(pin_file))
        assert r.returncode == 2
        assert failure_line(r) == (
            f"p2pinvite: PIN file: {pin_file} is accessible by other users "
            f"(mode {mode:04o}); expected 0600")
        assert_no_secret(r, inv)
    code_file.chmod(0o644)
    r = p.guest.cli("join", "--code-file", str(code_file), "--pin", "-", input=inv["pin"])
    assert r.returncode == 2
    assert "p2pinvite: code file: " in failure_line(r)
    assert_no_secret(r, inv)

    # Not a regular file, missing, empty, several lines: one line each, no secret.
    fifo = base / "fifo"
    os.mkfifo(fifo, 0o600)  # would block a reader forever: refused without opening it
    code_file.chmod(0o600)
    multi = private_file(base / "multi", f"{inv['code']}\n{inv['pin']}\n")
    empty = private_file(base / "empty", "\n")
    for args, message in [
        (["--code-file", str(fifo)], f"code file: {fifo} is not a regular file"),
        (["--code-file", str(base / "none")], f"code file: {base / 'none'} does not exist"),
        (["--code-file", str(multi)], f"{multi} has more than one line; expected only the code"),
        (["--code-file", str(empty)], f"{empty} is empty; expected the code"),
        (["--code-file", str(code_file), "--pin-file", str(multi)],
         f"{multi} has more than one line; expected only the PIN"),
    ]:
        r = p.guest.cli("join", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert failure_line(r) == f"p2pinvite: {message}", (args, r.stderr)
        assert_no_secret(r, inv)
    assert failed_attempts(p) == 0


def test_usage_errors_come_before_the_daemon(daemons: DaemonFactory) -> None:
    # No daemon on this home: a bad source is still exit 2, not 3 ("not running").
    home = daemons.new_home()
    for args, stdin, message in [
        ([], None, "no code given and no terminal to ask for it: pass it on standard input "
                   "(join -) or in a private file (--code-file PATH)"),
        (["-", "--code-file", "/x"], None, "give the code once: CODE or --code-file PATH"),
        (["-"], "", "expected the code on line 1 of standard input, got end of input"),
    ]:
        r = run_cli(home, "join", *args, input=stdin)
        assert r.returncode == 2, (args, r.stderr)
        assert failure_line(r) == f"p2pinvite: {message}"
    r = run_cli(home, "join", "-", "--pin", "-", "--pin-file", "/x", input="")
    assert r.returncode == 2  # argparse: not allowed with --pin
    assert "not allowed with argument" in r.stderr


# -- no source, no terminal ----------------------------------------------------------------


def test_missing_pin_without_terminal_fails_at_once(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = pin_invite(p)
    started = time.monotonic()
    r = join(p.guest, inv["code"])  # the code on stdin, no PIN, no terminal
    assert time.monotonic() - started < 15  # a usage error, not a timeout
    assert r.returncode == 2
    assert failure_line(r) == (
        "p2pinvite: this invitation needs a PIN and there is no terminal to ask for it: "
        "use --pin - (standard input) or --pin-file PATH")
    assert failed_attempts(p) == 0
    assert not joined(p)


def test_missing_code_with_stdin_open_but_silent_does_not_hang(daemon: DaemonProc) -> None:
    # stdin is a pipe that never ends (the CLI must not read it unless told to with -).
    proc = subprocess.Popen(
        [PY, "-m", "p2pinvite", "--home", str(daemon.home), "join"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(), cwd=REPO, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 2
    assert "no code given and no terminal to ask for it" in err


# -- argv: still works, warns once ----------------------------------------------------------


def test_code_and_pin_in_argv_warn_once_and_still_join(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = pin_invite(p)
    r = p.guest.cli("join", inv["code"], "--pin", wrong(inv["pin"]))
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line not in _PROGRESS]
    assert lines == [ARGV_WARNING, "p2pinvite: wrong PIN; 2 attempts left"]

    r = p.guest.cli("join", inv["code"], "--pin", inv["pin"])
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if line not in _PROGRESS] == [ARGV_WARNING]
    assert joined(p)


def test_only_the_pin_or_only_the_code_in_argv_warns_about_that_one(
        daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = pin_invite(p)
    code_file = private_file(p.guest.home.parent / "code", inv["code"])
    r = p.guest.cli("join", "--code-file", str(code_file), "--pin", wrong(inv["pin"]))
    assert r.stderr.splitlines()[0] == (
        "p2pinvite: warning: --pin on the command line is visible to other local users "
        "(ps, /proc); use --pin - (standard input), --pin-file PATH, or leave it out to be "
        "asked")
    r = p.guest.cli("join", inv["code"], "--pin", "-", input=f"{inv['pin']}\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == (
        "p2pinvite: warning: the code on the command line is visible to other local users "
        "(ps, /proc); pass it on standard input (join -), with --code-file PATH, or leave it "
        "out to be asked")
    assert joined(p)


# -- prompts on a terminal ---------------------------------------------------------------------


class Terminal:
    """The CLI with a pseudo-terminal as its controlling terminal (where prompts go).

    Its stdin is that terminal too, or, with *stdin*, a pipe fed with that
    text; stdout and stderr are piped.
    """

    def __init__(self, home: Path, *args: str, stdin: str | None = None) -> None:
        self.master, slave = pty.openpty()

        def take_terminal() -> None:  # in the child, after setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [PY, "-m", "p2pinvite", "--home", str(home), *args],
            stdin=slave if stdin is None else subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=child_env(), cwd=REPO,
            start_new_session=True, preexec_fn=take_terminal,
            pass_fds=(slave,))  # held open: with no slave fd at all, the master reads EIO
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.flush()  # left open: communicate() closes it
        os.close(slave)
        self.transcript = b""  # everything the CLI wrote on the terminal
        self._answered = 0  # transcript length when we last typed

    def answer(self, prompt: str, text: str, timeout: float = 20) -> None:
        """Wait until a new *prompt* shows (echo is off by then), then type *text*.

        Typing earlier would be lost: getpass flushes pending input when it
        turns echo off.
        """
        want = prompt.encode()
        deadline = time.monotonic() + timeout
        while not self.transcript[self._answered:].endswith(want):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(0.0, left))
            assert ready, f"no {prompt!r} prompt; terminal so far: {self.transcript!r}"
            self.transcript += os.read(self.master, 4096)
        self._answered = len(self.transcript)
        os.write(self.master, text.encode() + b"\n")

    def finish(self, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
            while select.select([self.master], [], [], 0)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                self.transcript += chunk
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            os.close(self.master)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)


def test_prompts_for_code_and_pin_without_echo(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = pin_invite(p)
    term = Terminal(p.guest.home, "join")
    term.answer("Code: ", inv["code"])
    term.answer("PIN: ", wrong(inv["pin"]))
    # A PIN typed at the prompt may be typed again while attempts are left.
    term.answer("PIN: ", inv["pin"])
    r = term.finish()
    assert r.returncode == 0, r.stderr
    assert "wrong PIN (2 attempts left)" in r.stderr
    assert [line for line in r.stderr.splitlines() if line not in _PROGRESS] == [
        "wrong PIN (2 attempts left)"]  # no warning: nothing was in argv
    assert f"joined space 'Photos' ({p.space_id}) as editor" in r.stdout
    # Nothing typed was echoed: the terminal shows the prompts only.
    for typed in (inv["code"], inv["code"][10:30], inv["pin"], wrong(inv["pin"])):
        assert typed.encode() not in term.transcript
    assert term.transcript.count(b"PIN: ") == 2
    assert joined(p)
    assert failed_attempts(p) == 1


def test_pin_prompt_after_code_on_standard_input(daemons: DaemonFactory) -> None:
    # The code piped in, the PIN asked on the terminal (not on stdin, which is the pipe).
    p = make_pair(daemons)
    inv = pin_invite(p)
    term = Terminal(p.guest.home, "join", "-", stdin=f"{inv['code']}\n")
    term.answer("PIN: ", inv["pin"])
    r = term.finish()
    assert r.returncode == 0, r.stderr
    assert b"Code: " not in term.transcript
    assert inv["pin"].encode() not in term.transcript
    assert joined(p)


def test_empty_answer_at_the_prompt_is_a_usage_error(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    inv = pin_invite(p)
    term = Terminal(p.guest.home, "join", "--json")
    term.answer("Code: ", inv["code"])
    term.answer("PIN: ", "")
    r = term.finish()
    assert r.returncode == 2
    assert failure_line(r, json_mode=True) == "p2pinvite: no PIN given"
    assert failed_attempts(p) == 0
