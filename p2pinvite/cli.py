"""The ``p2pinvite`` command line: a thin layer over :mod:`p2pinvite.client`.

Every command except ``daemon`` talks to a running daemon over its socket.
Output is for people by default and JSON with ``--json`` (one object or list
on stdout). Failures print one line on stderr and exit non-zero:

====  ==============================================================
0     success
1     the daemon refused or failed the request
2     bad command line
3     no daemon is running on the home (the message says how to start one)
4     the home's socket is served by another user's process: refused,
      nothing was sent to it
====  ==============================================================

Start-up stays light, since a person waits for every command: trio,
cryptography and zeroconf are imported only by the ``daemon`` command; segno
only for ``--qr``; cryptography also by ``admission-key``; the client only by
the commands that talk to a daemon. Every command, the daemon included, is
read by the one argparse parser of :func:`build_parser`, which adds only the
chosen command's arguments. ``bench/bench_cli.py`` measures the start-up of
``join``, ``status`` and ``invite create`` against a bare interpreter's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TextIO, TypeVar

from . import __version__
from .errors import DaemonNotRunning, IPCError, P2PInviteError

if TYPE_CHECKING:
    # Imported at run time where they are used (see the module docstring).
    from .client import (
        Client,
        CodeInfo,
        CreatedInvitation,
        InvitationInfo,
        InviteKind,
        JoinResult,
        Member,
        MemberChange,
    )

__all__ = ["build_parser", "main", "parse_duration"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_DAEMON: Final = 3
#: Not "request failed" (nothing was asked) nor "not running" (something is, and a
#: script must not react by starting a daemon of its own): a separate alarm.
EXIT_FOREIGN_DAEMON: Final = 4

#: Size of an Ed25519 admission key: the public key and the private seed alike.
ADMISSION_KEY_BYTES: Final = 32
#: Largest admission key file read (hex text with a newline, or 32 raw bytes).
_MAX_KEY_FILE: Final = 4096

_DURATION: Final = re.compile(r"^\s*(\d{1,9})\s*([smhdw]?)\s*$")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

#: What ``join`` prints for each progress state.
_JOIN_STATES: Final = {
    "connecting": "connecting to the inviting device...",
    "connected": "connected",
    "authenticating": "authenticating...",
    "admitted": "admitted",
}


class CliError(Exception):
    """A failure to report on one line, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def parse_duration(text: str) -> int:
    """Seconds in a duration like ``90``, ``45s``, ``30m``, ``2h``, ``7d``, ``1w``."""
    m = _DURATION.match(text.lower())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r} (examples: 30m, 2h, 7d)"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def _listen(text: str) -> tuple[str, int]:
    from .daemon.config import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _log_level(text: str) -> str:
    from .daemon.config import parse_log_level

    try:
        return parse_log_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mailbox_url(text: str) -> str:
    from .invitations.codes import check_mailbox_url

    try:
        return check_mailbox_url(text)
    except P2PInviteError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(
            "not a valid p2pinvite code: ")) from None


def _relay_address(text: str) -> tuple[str, int]:
    from .rendezvous.transit import parse_relay_address

    try:
        return parse_relay_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return int(text)


def _public_key_hex(text: str) -> str:
    """An Ed25519 public key given as 64 hex characters (``invite create --admission-key``)."""
    t = text.strip().lower()
    if len(t) != 2 * ADMISSION_KEY_BYTES or any(c not in "0123456789abcdef" for c in t):
        raise argparse.ArgumentTypeError(
            "expected an Ed25519 public key: 64 hex characters "
            "(p2pinvite admission-key generate prints one)"
        )
    return t


# -- output helpers -------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _print_json(value: Any) -> None:
    import json

    json.dump(_jsonable(value), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _when(ts: int | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# -- commands -------------------------------------------------------------------------


def cmd_status(c: Client, a: argparse.Namespace) -> None:
    """``status``: is the daemon up, who is it, where does it listen."""
    s = c.status()
    if a.json:
        _print_json(s)
        return
    print(f"daemon     running (pid {s.pid}, version {s.version})")
    print(f"home       {s.home}")
    print(f"device     {s.device_key}")
    if s.identity:
        print(f"identity   {s.identity}")
    else:
        print("identity   none (create one: p2pinvite identity create --name NAME)")
    addrs = ", ".join(_addr(h, p) for h, p in s.addresses) or "not listening"
    print(f"listening  {addrs}")
    print(f"mdns       {'on' if s.mdns else 'off'}")
    print(f"swarms     {len(s.swarms)} joined, {s.peers} member connection(s)")
    for w in s.swarms:
        print(f"  {w.kind:<8}  {w.name or w.log[:16]}  epoch {w.epoch}  topic {w.topic}"
              f"  peers {w.peers}")
    r = s.rendezvous
    if r is None or r.mailbox is None:
        print("rendezvous off (LAN only)")
    else:
        relay = f", relay {r.transit}" if r.transit else ""
        why = f": {r.error}" if r.state == "error" and r.error else ""
        print(f"rendezvous {r.state} ({r.mailbox}{relay}){why}")


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_identity_create(c: Client, a: argparse.Namespace) -> None:
    """``identity create``: make this device's identity."""
    import getpass

    name = a.name if a.name is not None else getpass.getuser()
    ident = c.identity.create(name)
    if a.json:
        _print_json(ident)
    else:
        print(f"created identity {ident.name!r} ({ident.identity_key})")


def cmd_identity_show(c: Client, a: argparse.Namespace) -> None:
    """``identity show``."""
    ident = c.identity.show()
    if a.json:
        _print_json(ident)
    else:
        print(f"name       {ident.name}")
        print(f"identity   {ident.identity_key}")
        print(f"device     {ident.device_key}")


def cmd_devices(c: Client, a: argparse.Namespace) -> None:
    """``devices``: the devices authorized for this identity."""
    devices = c.devices.list()
    if a.json:
        _print_json(devices)
        return
    rows = [
        [d.device_key, _when(d.added_at) if d.added_at else "-", "yes" if d.this_device else ""]
        for d in devices
    ]
    _table(rows, ["DEVICE", "ADDED", "THIS"])


def cmd_space_create(c: Client, a: argparse.Namespace) -> None:
    """``space create NAME``."""
    space = c.spaces.create(a.name)
    if a.json:
        _print_json({"space_id": space.space_id, "name": space.name})
    else:
        print(f"created space {space.name!r} ({space.space_id})")


def cmd_space_list(c: Client, a: argparse.Namespace) -> None:
    """``space list``."""
    spaces = c.spaces.list()
    if a.json:
        _print_json(spaces)
        return
    if not spaces:
        print("no spaces (create one: p2pinvite space create NAME)")
        return
    rows = [
        [s.space_id, s.name, (s.role or "-").lower(), "-" if s.members is None else str(s.members)]
        for s in spaces
    ]
    _table(rows, ["SPACE", "NAME", "ROLE", "MEMBERS"])


def _member_rows(members: Sequence[Member]) -> list[list[str]]:
    return [[m.identity_key[:16], m.name, m.role.lower(),
             (m.admitted_by or "-")[:16],
             _when(m.admitted_at)] for m in members]


def cmd_space_members(c: Client, a: argparse.Namespace) -> None:
    """``space members SPACE [--all]``: who is in, who admitted them, when."""
    header = ["IDENTITY", "NAME", "ROLE", "ADMITTED BY", "ADMITTED"]
    if not a.all:
        members = c.spaces.members(a.space)
        if a.json:
            _print_json(members)
        else:
            _table(_member_rows(members), header)
        return
    full = c.spaces.membership(a.space)
    if a.json:
        _print_json(full)
        return
    _table(_member_rows(full.members), header)
    if full.removed:
        print("\nremoved:")
        _table(_member_rows(full.removed), header)
    if full.rejected:
        print("\nentries kept with no effect:")
        _table([[r.entry, r.rule] for r in full.rejected], ["ENTRY", "RULE"])


def cmd_space_peers(c: Client, a: argparse.Namespace) -> None:
    """``space peers [SPACE]``: member devices connected now, and their last sync."""
    peers = c.spaces.peers(a.space)
    if a.json:
        _print_json(peers)
        return
    if not peers:
        print("no member device connected")
        return
    rows = [[p.log[:16], p.device_key[:16], (p.identity_key or "-")[:16],
             ", ".join(_addr(h, port) for h, port in p.addresses) or "-",
             _when(p.last_synced), f"{p.entries_received}/{p.entries_sent}"] for p in peers]
    _table(rows, ["LOG", "DEVICE", "IDENTITY", "ADDRESSES", "LAST SYNC", "IN/OUT"])


def _show_change(change: MemberChange, a: argparse.Namespace, what: str) -> None:
    if a.json:
        _print_json(change)
        return
    m = change.member
    print(f"{what} {m.name or '(no name)'} ({m.identity_key[:16]}), now {m.role.lower()}, "
          f"in space {change.space[:16]}; entry {change.entry[:16]}")
    if change.epoch is not None:
        print(f"the space's swarm secret is now epoch {change.epoch}")


def cmd_device_remove(c: Client, a: argparse.Namespace) -> None:
    """``device remove DEVICE``: revoke another device of this identity."""
    removal = _changing(lambda: c.devices.remove(a.device))
    if a.json:
        _print_json(removal)
        return
    print(f"removed device {removal.device_key[:16]} from identity "
          f"{removal.identity_key[:16]}; entry {removal.entry[:16]}")
    if removal.epoch is not None:
        print(f"the identity's swarm secret is now epoch {removal.epoch}")


_T = TypeVar("_T")


def _changing(change: Callable[[], _T]) -> _T:
    """Run a membership change; a refusal names the membership rule that refused it."""
    from .client import RequestError

    try:
        return change()
    except RequestError as exc:
        if exc.code == "refused" and exc.reason:
            raise CliError(f"{exc} [refused: {exc.reason}]") from None
        raise


def cmd_space_role(c: Client, a: argparse.Namespace) -> None:
    """``space role SPACE MEMBER ROLE``: change a member's role."""
    change = _changing(lambda: c.spaces.set_role(a.space, a.member, a.role))
    _show_change(change, a, "changed the role of")


def cmd_space_remove(c: Client, a: argparse.Namespace) -> None:
    """``space remove SPACE MEMBER``: remove a member."""
    _show_change(_changing(lambda: c.spaces.remove(a.space, a.member)), a, "removed")


def cmd_space_leave(c: Client, a: argparse.Namespace) -> None:
    """``space leave SPACE``: remove our own identity from the space."""
    _show_change(_changing(lambda: c.spaces.leave(a.space)), a, "left as")


def _show_created(inv: CreatedInvitation, qr: bool) -> None:
    print(f"invitation {inv.id} ({inv.kind}, auth {inv.auth}), expires {_when(inv.expires_at)}")
    print()
    print(f"  code: {inv.code}")
    if inv.pin is not None:
        print(f"  PIN:  {inv.pin}   (tell the guest separately; it is never sent)")
    if qr:
        print()
        _print_qr(inv.code, sys.stdout)


def _print_qr(code: str, out: TextIO) -> None:
    import segno

    # Upper case keeps a link code in QR alphanumeric mode (smaller symbol);
    # link codes are case-insensitive, short codes are digits.
    segno.make(code.upper(), error="m").terminal(out=out, compact=True)


def cmd_invite_create(c: Client, a: argparse.Namespace) -> None:
    """``invite create``: a device or space invitation."""
    kind: InviteKind = "device" if a.device else "space"
    if a.device and a.role is not None:
        raise CliError("--role applies to space invitations only", EXIT_USAGE)
    if a.auth == "key" and a.admission_key is None:
        raise CliError("--auth key needs --admission-key HEX, the guest's public key "
                       "(p2pinvite admission-key generate makes a key pair)", EXIT_USAGE)
    if a.admission_key is not None and a.auth != "key":
        raise CliError("--admission-key applies to --auth key only", EXIT_USAGE)
    inv = c.invitations.create(
        kind=kind,
        space=a.space,
        role=a.role,
        auth=a.auth,
        max_uses=None if a.unlimited else a.uses,
        expires_in=a.expires,
        note=a.note,
        admission_key=a.admission_key,
    )
    if a.json:
        out: dict[str, Any] = _jsonable(inv)
        if inv.pin is None:
            del out["pin"]
        _print_json(out)
    else:
        _show_created(inv, a.qr)
    if a.qr and a.json:
        _print_qr(inv.code, sys.stderr)  # stdout stays pure JSON


def _uses(i: InvitationInfo) -> str:
    return f"{i.uses}/{'∞' if i.max_uses is None else i.max_uses}"


def cmd_invite_list(c: Client, a: argparse.Namespace) -> None:
    """``invite list [--all]``."""
    invs = c.invitations.list(all=a.all)
    if a.json:
        _print_json(invs)
        return
    if not invs:
        print("no invitations" if a.all else "no pending invitations (--all shows every one)")
        return
    rows = [
        [i.id, i.kind, i.status, (i.role or "-").lower(), i.auth, _uses(i), _when(i.expires_at),
         i.note]
        for i in invs
    ]
    _table(rows, ["ID", "KIND", "STATUS", "ROLE", "AUTH", "USES", "EXPIRES", "NOTE"])


def cmd_invite_revoke(c: Client, a: argparse.Namespace) -> None:
    """``invite revoke ID``."""
    inv = c.invitations.revoke(a.id)
    if a.json:
        _print_json(inv)
    else:
        # Say it when the revoke came too late for someone (already admitted).
        used = f"; it had already been used {inv.uses} time(s)" if inv.uses else ""
        print(f"invitation {inv.id} is now {inv.status}{used}")


def _describe(info: CodeInfo) -> str:
    what = f"{info.kind} invitation" if info.kind else "invitation"
    if info.space_id:
        what += f" to space {info.space_id}"
    elif info.identity_key:
        what += f" to identity {info.identity_key}"
    return f"{what} (auth {info.auth}, expires {_when(info.expires_at)})"


def cmd_invite_validate(c: Client, a: argparse.Namespace) -> None:
    """``invite validate CODE``: check a code without using it."""
    info = c.invitations.validate(a.code)
    if a.json:
        _print_json(info)
    elif info.valid:
        print(f"valid: {_describe(info)}")
    if not info.valid:
        raise CliError(f"not usable ({info.reason or 'unknown reason'}): {_describe(info)}",
                       EXIT_FAILED)


# -- join: the code and the PIN, kept out of argv ------------------------------------
#
# A code carries its invitation's 256-bit secret, and a PIN is the password of
# the PAKE: on the command line either is readable by every local user (ps,
# /proc/PID/cmdline) for as long as the join runs, and it lands in shell
# history. So each has three safe sources besides argv -- a prompt without
# echo, standard input ("-"), a private file -- and argv still works but
# warns. Secrets are read before connecting when that needs no interaction
# (files, stdin: usage errors then come first, daemon or not); prompts come
# after connecting, so nobody types a secret for a daemon that is not there
# or is not ours. Nothing here ever puts a secret into a message.

#: Largest code or PIN read from a file or a line of stdin (a link code is < 500 chars).
_MAX_SECRET: Final = 4096

_ARGV_WARNING: Final = {
    (True, False): "the code on the command line is visible to other local users (ps, "
                   "/proc); pass it on standard input (join -), with --code-file PATH, "
                   "or leave it out to be asked",
    (False, True): "--pin on the command line is visible to other local users (ps, /proc); "
                   "use --pin - (standard input), --pin-file PATH, or leave it out to be asked",
    (True, True): "the code and the PIN on the command line are visible to other local users "
                  "(ps, /proc); pass them on standard input (join - --pin -), in files "
                  "(--code-file, --pin-file), or leave them out to be asked",
}


@dataclass(slots=True)
class JoinSecrets:
    """The code and PIN of a ``join``, as far as they could be read before connecting.

    ``None``: not given; the code is then asked for, and the PIN too when the
    invitation needs one (both only when there is a terminal to ask on).
    """

    code: str | None = field(default=None, repr=False)
    pin: str | None = field(default=None, repr=False)


def _one_line(text: str, what: str, where: str) -> str:
    value = text.strip()
    if not value:
        raise CliError(f"{where} is empty; expected the {what}", EXIT_USAGE)
    if "\n" in value or "\r" in value:
        raise CliError(f"{where} has more than one line; expected only the {what}", EXIT_USAGE)
    return value


def read_secret_file(path: Path, what: str) -> str:
    """The *what* (``code`` or ``PIN``) in the private file *path*: one line of text.

    Like ``--admission-key-file``, the file must be a regular file that only its
    owner can access (0600 or 0400): a secret in a file others can read is no
    secret. Raises :class:`CliError` (usage) with one line that never quotes the
    content.
    """
    from .fsutil import read_private

    try:
        data = read_private(path, max_size=_MAX_SECRET)
    except OSError as exc:
        raise CliError(f"cannot read the {what} file {path}: {exc.strerror or exc}",
                       EXIT_USAGE) from None
    except P2PInviteError as exc:  # not regular, readable by others, too large
        raise CliError(f"{what} file: {exc}", EXIT_USAGE) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{path} is not text; expected the {what}", EXIT_USAGE) from None
    return _one_line(text, what, str(path))


def _stdin_line(number: int, what: str) -> str:
    line = sys.stdin.readline(_MAX_SECRET + 1)
    if not line:
        raise CliError(f"expected the {what} on line {number} of standard input, "
                       "got end of input", EXIT_USAGE)
    if len(line) > _MAX_SECRET:
        raise CliError(f"line {number} of standard input is too long for a {what}", EXIT_USAGE)
    return _one_line(line, what, f"line {number} of standard input")


def can_prompt() -> bool:
    """Whether a prompt has a terminal to ask on (the controlling tty, else stdin)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return sys.stdin.isatty()
    os.close(fd)
    return True


def _ask(prompt: str, what: str) -> str:
    """Ask on the terminal without echo; never falls back to reading a pipe."""
    import getpass
    import warnings

    with warnings.catch_warnings():
        # getpass falls back to reading stdin *with* echo when it cannot turn
        # echo off; that is not a terminal, so refuse instead.
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            value = getpass.getpass(prompt)
        except getpass.GetPassWarning:
            raise CliError(f"cannot ask for the {what} without echo: no terminal",
                           EXIT_USAGE) from None
        except EOFError:
            raise CliError(f"no {what} given (end of input)", EXIT_USAGE) from None
    value = value.strip()
    if not value:
        raise CliError(f"no {what} given", EXIT_USAGE)
    return value


def prepare_join(a: argparse.Namespace) -> None:
    """Read what ``join`` can read without asking, before connecting: ``a.secrets``.

    Sources: CODE (argv, warned about), ``-`` (stdin), ``--code-file``, else a
    prompt later; ``--pin`` (argv, warned about), ``--pin -`` (stdin),
    ``--pin-file``, else a prompt later if the invitation needs a PIN. When
    both come from stdin, line 1 is the code and line 2 the PIN. Without a
    terminal, a missing code is a usage error here, never a hang.
    """
    if a.code is not None and a.code_file is not None:
        raise CliError("give the code once: CODE or --code-file PATH", EXIT_USAGE)
    code_argv = a.code not in (None, "-")
    pin_argv = a.pin not in (None, "-")
    if code_argv or pin_argv:
        print(f"p2pinvite: warning: {_ARGV_WARNING[code_argv, pin_argv]}", file=sys.stderr,
              flush=True)
    secrets = JoinSecrets()
    line = 0
    if a.code == "-":
        line += 1
        secrets.code = _stdin_line(line, "code")
    elif a.code_file is not None:
        secrets.code = read_secret_file(Path(a.code_file), "code")
    elif a.code is not None:
        secrets.code = _one_line(a.code, "code", "CODE")
    elif not can_prompt():
        raise CliError("no code given and no terminal to ask for it: pass it on standard "
                       "input (join -) or in a private file (--code-file PATH)", EXIT_USAGE)
    if a.pin == "-":
        line += 1
        secrets.pin = _stdin_line(line, "PIN")
    elif a.pin_file is not None:
        secrets.pin = read_secret_file(Path(a.pin_file), "PIN")
    elif a.pin is not None:
        secrets.pin = _one_line(a.pin, "PIN", "--pin")
    a.secrets = secrets


def _join_once(c: Client, a: argparse.Namespace, code: str, pin: str | None,
               seed: bytes | None) -> JoinResult:
    import json

    from .client import AcceptEvent

    for item in c.invitations.accept(code, pin=pin, name=a.name, admission_seed=seed):
        if isinstance(item, AcceptEvent):
            if a.json:
                print(json.dumps({"state": item.state, **item.info}), file=sys.stderr)
            elif item.state in _JOIN_STATES:
                print(_JOIN_STATES[item.state], file=sys.stderr, flush=True)
        else:
            return item
    raise IPCError("the daemon ended the join without a result", code="bad_reply")


def cmd_join(c: Client, a: argparse.Namespace) -> None:
    """``join [CODE]``: accept an invitation, with live progress (see :func:`prepare_join`)."""
    from .client import RequestError

    secrets: JoinSecrets = a.secrets
    code = secrets.code if secrets.code is not None else _ask("Code: ", "code")
    info = c.invitations.validate(code)
    if not info.valid:
        raise CliError(f"this code cannot be used: {info.reason or 'not valid'}")
    seed: bytes | None = None
    if info.auth == "key":
        if a.admission_key_file is None:
            raise CliError("this invitation needs the admission key it names: "
                           "--admission-key-file PATH", EXIT_USAGE)
        seed = read_admission_key(Path(a.admission_key_file))
    elif a.admission_key_file is not None:
        raise CliError(f"--admission-key-file applies to key invitations only "
                       f"(this one uses {info.auth})", EXIT_USAGE)
    pin = secrets.pin
    prompted = False
    if info.auth == "pin" and pin is None:
        if not can_prompt():
            raise CliError("this invitation needs a PIN and there is no terminal to ask for "
                           "it: use --pin - (standard input) or --pin-file PATH", EXIT_USAGE)
        pin = _ask("PIN: ", "PIN")
        prompted = True
    # The daemon answers every failed proof with wrong_pin; name what the user typed.
    wrong = {"short": "wrong code", "key": "wrong admission key"}.get(info.auth or "", "wrong PIN")
    while True:
        try:
            result = _join_once(c, a, code, pin, seed)
            break
        except RequestError as exc:
            left = exc.attempts_left
            if exc.code != "wrong_pin":
                raise
            if prompted and left and can_prompt():
                print(f"{wrong} ({left} attempt{'s' if left != 1 else ''} left)", file=sys.stderr)
                pin = _ask("PIN: ", "PIN")
                continue
            tail = "" if left is None else f"; {left} attempt{'s' if left != 1 else ''} left"
            raise CliError(f"{wrong}{tail}") from None
    if a.json:
        _print_json(result)
    elif result.kind == "device":
        print(f"this device now belongs to identity {result.identity_key}")
    else:
        role = (result.role or "member").lower()
        print(f"joined space {result.space_name!r} ({result.space_id}) as {role}")


# -- admission keys (no daemon needed) ------------------------------------------------


def read_admission_key(path: Path) -> bytes:
    """The 32-byte Ed25519 seed in the private file *path* (hex text or raw bytes).

    The file must be a regular file that only its owner can access (0600).
    Raises :class:`CliError` (usage) with one line saying what is wrong.
    """
    from .fsutil import read_private

    try:
        data = read_private(path, max_size=_MAX_KEY_FILE)
    except OSError as exc:
        raise CliError(f"cannot read admission key {path}: {exc.strerror or exc}",
                       EXIT_USAGE) from None
    except P2PInviteError as exc:
        raise CliError(f"admission key: {exc}", EXIT_USAGE) from None
    if len(data) == ADMISSION_KEY_BYTES:
        return data
    try:
        seed = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        seed = b""
    if len(seed) != ADMISSION_KEY_BYTES:
        raise CliError(f"{path} is not an admission key (expected 64 hex characters "
                       "or 32 raw bytes)", EXIT_USAGE)
    return seed


def _public_of(seed: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw().hex()


def cmd_admission_key_generate(a: argparse.Namespace) -> None:
    """``admission-key generate --out PATH``: a new key pair; print the public key."""
    import secrets

    from .fsutil import fsync_dir

    path = Path(a.out)
    seed = secrets.token_bytes(ADMISSION_KEY_BYTES)
    try:
        # O_EXCL: never overwrite a key; the file is 0600 from its first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise CliError(f"{path} already exists; not overwriting it") from None
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.write(fd, seed.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.resolve().parent)
    public = _public_of(seed)
    if a.json:
        _print_json({"public_key": public, "path": str(path)})
    else:
        print(f"wrote the private admission key to {path} (keep it secret)")
        print(f"public key: {public}")
        print("the inviter uses: p2pinvite invite create --auth key --admission-key " + public)


def cmd_admission_key_show(a: argparse.Namespace) -> None:
    """``admission-key show PATH``: the public key of an admission key file."""
    public = _public_of(read_admission_key(Path(a.path)))
    if a.json:
        _print_json({"public_key": public, "path": a.path})
    else:
        print(public)


# -- daemon ---------------------------------------------------------------------------------


def cmd_daemon(a: argparse.Namespace) -> int:
    """``daemon``: run the daemon in the foreground until SIGINT/SIGTERM."""
    from .daemon.config import DEFAULT_LISTEN, DaemonConfig, resolve_home, resolve_log_level

    try:
        log_level = resolve_log_level(a.log_level)
    except ValueError as exc:  # a bad $P2PINVITE_LOG_LEVEL (a bad flag never gets here)
        print(f"p2pinvite: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from .daemon.service import run

    config = DaemonConfig(
        home=resolve_home(a.home),
        listen=a.listen if a.listen is not None else DEFAULT_LISTEN,
        mdns=not a.no_mdns,
        mdns_interfaces=tuple(a.mdns_interface) or None,
        retention=a.retention,
        log_level=log_level,
        mailbox=a.mailbox,
        transit=a.transit,
    )
    if config.transit is not None and config.mailbox is None:
        print("p2pinvite: --transit needs --mailbox (guests learn the relay there)",
              file=sys.stderr)
        return EXIT_USAGE
    return run(config)


# -- parser -----------------------------------------------------------------------------
#
# One argparse parser for every command, the daemon included. A command line
# names one command, so only that command's arguments are added: the others
# are listed by name and help (all that ``p2pinvite --help`` shows) and filled
# in only if argparse picks them. Adding an argument is not free -- argparse
# formats a usage line for each one to check it: building every command's
# arguments took ~2.5 ms of each start-up, one command's takes under 1 ms.

_Command = Callable[["Client", argparse.Namespace], None]
_LocalCommand = Callable[[argparse.Namespace], None]
_Build = Callable[[argparse.ArgumentParser], None]


class _LazyParser(argparse.ArgumentParser):
    """A command's parser whose arguments *build* adds when argparse picks the command.

    argparse hands the rest of the line to the chosen command's parser with
    :meth:`parse_known_args`; that is where the arguments are added, once.
    Help and usage errors are the same as with every argument added up front.
    """

    def __init__(self, *args: Any, build: _Build | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._build = build

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        """Add this command's arguments (the first time), then parse as argparse does."""
        if self._build is not None:
            build, self._build = self._build, None
            build(self)
        return super().parse_known_args(*args, **kwargs)


def _subcommands(p: argparse.ArgumentParser, dest: str, metavar: str) -> Any:
    """*p*'s subcommands, each built only when chosen (see :class:`_LazyParser`)."""
    return p.add_subparsers(dest=dest, required=True, metavar=metavar,
                            parser_class=_LazyParser)


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _runs(func: _Command, *build: _Build) -> _Build:
    """A builder: ``--json``, then *build*'s arguments, and *func* to run with a client."""
    def add(p: argparse.ArgumentParser) -> None:
        _json_flag(p)
        for b in build:
            b(p)
        p.set_defaults(func=func)
    return add


def _arg(*names: str, **kwargs: Any) -> _Build:
    """A builder adding the one argument ``add_argument(*names, **kwargs)``."""
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument(*names, **kwargs)
    return add


def _daemon_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("--listen", metavar="HOST:PORT", type=_listen,
                   help="TCP address for peers (default 0.0.0.0:0)")
    d.add_argument("--mdns-interface", metavar="IFACE", action="append", default=[],
                   help="announce and browse mDNS on IFACE only (repeatable)")
    d.add_argument("--no-mdns", action="store_true", help="disable mDNS discovery")
    d.add_argument("--retention", metavar="DURATION", type=parse_duration,
                   help="how long finished invitations stay listed before their records "
                        "are deleted (default 30d)")
    d.add_argument("--log-level", metavar="LEVEL", type=_log_level,
                   help="debug, info or warning (default: $P2PINVITE_LOG_LEVEL, else info)")
    d.add_argument("--mailbox", metavar="URL", type=_mailbox_url,
                   help="meet peers beyond the LAN at this magic-wormhole mailbox server "
                        "(ws:// or wss://; default: none, nothing leaves the LAN)")
    d.add_argument("--transit", metavar="HOST:PORT", type=_relay_address,
                   help="the magic-wormhole transit relay to meet guests at when no "
                        "direct path reaches them (with --mailbox)")
    d.set_defaults(func=None)


def _identity_args(ident: argparse.ArgumentParser) -> None:
    isub = _subcommands(ident, "action", "ACTION")
    isub.add_parser("create", help="create the identity", build=_runs(
        cmd_identity_create, _arg("--name", help="display name (default: your login name)")))
    isub.add_parser("show", help="show the identity", build=_runs(cmd_identity_show))


def _device_args(dev: argparse.ArgumentParser) -> None:
    dsub = _subcommands(dev, "action", "ACTION")
    device = _arg("device", metavar="DEVICE", help="device key, or a unique prefix (8+ hex)")
    dsub.add_parser("remove", help="remove another device of this identity (a lost laptop, say)",
                    build=_runs(cmd_device_remove, device))


def _space_args(sp: argparse.ArgumentParser) -> None:
    space = _arg("space", metavar="SPACE", help="space id, or name when unique")
    member = _arg("member", metavar="MEMBER",
                  help="member's identity key, a unique prefix of it (8+), or unique name")
    ssub = _subcommands(sp, "action", "ACTION")
    ssub.add_parser("create", help="create a space",
                    build=_runs(cmd_space_create, _arg("name", metavar="NAME")))
    ssub.add_parser("list", help="list spaces", build=_runs(cmd_space_list))
    ssub.add_parser("members", help="list a space's members", build=_runs(
        cmd_space_members, space,
        _arg("--all", action="store_true",
             help="also removed members and entries kept with no effect")))
    ssub.add_parser("peers", help="member devices connected now", build=_runs(
        cmd_space_peers,
        _arg("space", metavar="SPACE", nargs="?",
             help="space id, or name when unique (default: every log)")))
    ssub.add_parser("role", help="change a member's role", build=_runs(
        cmd_space_role, space, member,
        _arg("role", metavar="ROLE", choices=["owner", "admin", "editor", "reader"])))
    ssub.add_parser("remove", help="remove a member",
                    build=_runs(cmd_space_remove, space, member))
    ssub.add_parser("leave", help="leave a space", build=_runs(cmd_space_leave, space))


def _invite_create_args(vc: argparse.ArgumentParser) -> None:
    target = vc.add_mutually_exclusive_group(required=True)
    target.add_argument("--space", metavar="SPACE", help="invite a person into SPACE")
    target.add_argument("--device", action="store_true", help="invite a device of yours")
    vc.add_argument("--role", choices=["owner", "admin", "editor", "reader"],
                    help="role granted in the space (default reader)")
    vc.add_argument("--auth", choices=["pin", "none", "key", "short"], default="pin",
                    help="how the guest authenticates (default pin)")
    vc.add_argument("--admission-key", metavar="HEX", type=_public_key_hex,
                    help="with --auth key: the guest's Ed25519 public key (64 hex characters)")
    uses = vc.add_mutually_exclusive_group()
    uses.add_argument("--uses", metavar="N", type=_positive, default=1,
                      help="how many times it may be used (default 1)")
    uses.add_argument("--unlimited", action="store_true", help="no limit on uses")
    vc.add_argument("--expires", metavar="DURATION", type=parse_duration,
                    help="lifetime, e.g. 30m, 2h, 7d (default 7d; 15m for short codes)")
    vc.add_argument("--note", default="", help="who it is for (shown in invite list)")
    vc.add_argument("--qr", action="store_true", help="also show the code as a QR code")


def _invite_args(inv: argparse.ArgumentParser) -> None:
    vsub = _subcommands(inv, "action", "ACTION")
    vsub.add_parser("create", help="create an invitation",
                    build=_runs(cmd_invite_create, _invite_create_args))
    vsub.add_parser("list", help="list invitations", build=_runs(
        cmd_invite_list,
        _arg("--all", action="store_true", help="include accepted, expired, revoked")))
    vsub.add_parser("revoke", help="revoke an invitation", build=_runs(
        cmd_invite_revoke, _arg("id", metavar="ID")))
    vsub.add_parser("validate", help="check a code without using it", build=_runs(
        cmd_invite_validate, _arg("code", metavar="CODE")))


def _join_args(j: argparse.ArgumentParser) -> None:
    j.add_argument("code", metavar="CODE", nargs="?",
                   help="the invitation code; - reads it from standard input; "
                        "left out: asked for (a code here is visible to other users)")
    j.add_argument("--code-file", metavar="PATH",
                   help="read the code from PATH (a private file: mode 0600)")
    pin = j.add_mutually_exclusive_group()
    pin.add_argument("--pin", metavar="PIN",
                     help="the PIN; - reads it from standard input (after the code, if that "
                          "is read there too); left out: asked for when the invitation needs "
                          "one (a PIN here is visible to other users)")
    pin.add_argument("--pin-file", metavar="PATH",
                     help="read the PIN from PATH (a private file: mode 0600)")
    j.add_argument("--name", help="your display name, if this device has no identity yet")
    j.add_argument("--admission-key-file", metavar="PATH",
                   help="for a key invitation: the private admission key file (mode 0600)")
    j.set_defaults(prepare=prepare_join)


def _admission_key_args(ak: argparse.ArgumentParser) -> None:
    asub = _subcommands(ak, "action", "ACTION")

    def generate(p: argparse.ArgumentParser) -> None:
        _json_flag(p)
        p.add_argument("--out", metavar="PATH", required=True, help="file to create")
        p.set_defaults(func=None, local=cmd_admission_key_generate)

    def show(p: argparse.ArgumentParser) -> None:
        _json_flag(p)
        p.add_argument("path", metavar="PATH")
        p.set_defaults(func=None, local=cmd_admission_key_show)

    asub.add_parser("generate", help="write a new private key file (0600), print its public key",
                    build=generate)
    asub.add_parser("show", help="print the public key of a key file", build=show)


def build_parser() -> argparse.ArgumentParser:
    """The ``p2pinvite`` argument parser (each command's arguments added when it is chosen)."""
    p = argparse.ArgumentParser(
        prog="p2pinvite",
        description="Peer-to-peer invitations: pair devices and admit people on the LAN.",
        epilog="exit status: 0 ok, 1 request failed, 2 usage, 3 daemon not running, "
               "4 the socket is served by another user (refused)",
    )
    p.add_argument("--version", action="version", version=f"p2pinvite {__version__}")
    p.add_argument(
        "--home",
        metavar="DIR",
        help="state directory (default: $P2PINVITE_HOME, else ~/.local/share/p2pinvite)",
    )
    sub = _subcommands(p, "command", "COMMAND")
    sub.add_parser("daemon", help="run the daemon in the foreground", build=_daemon_args)
    sub.add_parser("status", help="show the daemon's state", build=_runs(cmd_status))
    sub.add_parser("identity", help="this device's identity", build=_identity_args)
    sub.add_parser("devices", help="list this identity's devices", build=_runs(cmd_devices))
    sub.add_parser("device", help="one of this identity's devices", build=_device_args)
    sub.add_parser("space", help="spaces", build=_space_args)
    sub.add_parser("invite", help="invitations", build=_invite_args)
    sub.add_parser(
        "join", help="accept an invitation code", build=_runs(cmd_join, _join_args),
        description="Accept an invitation. Keep the code and the PIN off the command line, "
                    "where other local users can read them: leave them out to be asked "
                    "(no echo), give - to read them from standard input (the code on line "
                    "1, the PIN on the next), or name private files (mode 0600).",
    )
    sub.add_parser("admission-key", help="key pairs for --auth key invitations",
                   build=_admission_key_args)
    return p


def _fail(message: str, status: int) -> NoReturn:
    if message:
        print(f"p2pinvite: {message}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with *argv* (default ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "daemon":
        return cmd_daemon(args)
    from .client import ForeignDaemon, RequestError, connect

    local: _LocalCommand | None = getattr(args, "local", None)
    prepare: _LocalCommand | None = getattr(args, "prepare", None)
    func: _Command = args.func
    try:
        if local is not None:
            local(args)
            return EXIT_OK
        if prepare is not None:
            prepare(args)  # usage errors first, whether a daemon runs or not
        with connect(args.home) as client:
            func(client, args)
    except DaemonNotRunning as exc:
        _fail(str(exc), EXIT_NO_DAEMON)
    except ForeignDaemon as exc:
        _fail(str(exc), EXIT_FOREIGN_DAEMON)
    except CliError as exc:
        _fail(str(exc), exc.status)
    except RequestError as exc:
        _fail(f"{exc} [{exc.code}]", EXIT_FAILED)
    except P2PInviteError as exc:
        _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK
