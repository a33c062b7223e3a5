"""End to end: ``--auth key`` invitations with real daemons and the real CLI.

The guest makes a key pair with ``admission-key generate`` (no daemon
needed), the host names the public key in ``invite create --auth key
--admission-key HEX``, and the guest joins with ``--admission-key-file``.
A wrong key costs an attempt and says how many are left; the right key still
works afterwards. Command-line mistakes exit 2 with one line.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from .conftest import DaemonFactory, run_cli
from .test_e2e_pairing import failure_line, invite, join, join_ok, make_pair, members, ok_json

pytestmark = pytest.mark.slow


def generate(home: Path, out: Path) -> str:
    """``admission-key generate --out OUT --json``: the public key (hex)."""
    r = run_cli(home, "admission-key", "generate", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["path"] == str(out)
    public = result["public_key"]
    assert isinstance(public, str)
    assert len(bytes.fromhex(public)) == 32
    return public


def test_generate_writes_a_private_key_and_show_derives_its_public_key(
        short_tmp: Path) -> None:
    home = short_tmp / "home"  # no daemon runs there: these commands need none
    key = short_tmp / "guest.key"
    public = generate(home, key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    seed = bytes.fromhex(key.read_text().strip())
    assert len(seed) == 32
    assert public not in key.read_text()

    r = run_cli(home, "admission-key", "show", str(key))
    assert (r.returncode, r.stdout.strip()) == (0, public)

    # Never overwritten: the key on disk is the one whose public half was handed out.
    r = run_cli(home, "admission-key", "generate", "--out", str(key))
    assert r.returncode == 1
    assert r.stderr.strip() == f"p2pinvite: {key} already exists; not overwriting it"
    assert bytes.fromhex(key.read_text().strip()) == seed

    # A key file others can read is refused before anything is sent anywhere.
    key.chmod(0o644)
    r = run_cli(home, "admission-key", "show", str(key))
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    assert line.startswith("p2pinvite: admission key: "), line
    assert "0644" in line, line
    assert seed.hex() not in r.stderr


def test_key_invitation_admits_the_guest_holding_the_key(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    key = p.guest.home.parent / "bob.key"
    public = generate(p.guest.home, key)

    inv = invite(p.host, "--space", p.space_id, "--role", "editor", "--auth", "key",
                 "--admission-key", public)
    assert (inv["auth"], "pin" in inv) == ("key", False)
    [record] = ok_json(p.host, "invite", "list")
    assert (record["id"], record["auth"], record["status"]) == (inv["id"], "key", "pending")

    result = join_ok(p.guest, inv["code"], "--admission-key-file", str(key))
    assert (result["space_id"], result["role"]) == (p.space_id, "editor")
    expected = sorted([(p.alice["identity_key"], "Alice", "owner"),
                       (p.bob["identity_key"], "Bob", "editor")])
    assert members(p.host, p.space_id) == expected
    assert members(p.guest, p.space_id) == expected
    [record] = ok_json(p.host, "invite", "list", "--all")
    assert (record["uses"], record["failed_attempts"]) == (1, 0)
    assert ok_json(p.host, "invite", "list") == []  # single use: no longer pending
    seed = key.read_text().strip()
    for d in (p.host, p.guest):
        assert seed not in d.stderr()


def test_wrong_admission_key_is_refused_with_attempts_left(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    right = p.guest.home.parent / "right.key"
    wrong = p.guest.home.parent / "wrong.key"
    public = generate(p.guest.home, right)
    generate(p.guest.home, wrong)
    inv = invite(p.host, "--space", p.space_id, "--role", "reader", "--auth", "key",
                 "--admission-key", public)

    r = join(p.guest, inv["code"], "--admission-key-file", str(wrong))
    assert r.returncode == 1
    assert failure_line(r) == "p2pinvite: wrong admission key; 2 attempts left"
    [record] = ok_json(p.host, "invite", "list")
    assert (record["status"], record["failed_attempts"], record["uses"]) == ("pending", 1, 0)
    assert [m[1] for m in members(p.host, p.space_id)] == ["Alice"]

    # The right key still opens it.
    result = join_ok(p.guest, inv["code"], "--admission-key-file", str(right))
    assert (result["space_id"], result["role"]) == (p.space_id, "reader")
    assert sorted(m[1] for m in members(p.host, p.space_id)) == ["Alice", "Bob"]


def test_key_options_are_checked_with_one_line_each(daemons: DaemonFactory) -> None:
    p = make_pair(daemons)
    key = p.guest.home.parent / "bob.key"
    public = generate(p.guest.home, key)

    def usage(d_cli: list[str], expected: str, *, host: bool = True,
              code: str | None = None) -> None:
        """Run *d_cli* (with *code*: ``join - D_CLI...``, the code on stdin); exit 2."""
        d = p.host if host else p.guest
        r = d.cli(*d_cli) if code is None else join(d, code, *d_cli)
        assert r.returncode == 2, r.stderr
        assert r.stdout == ""
        assert r.stderr.splitlines()[-1].endswith(expected), r.stderr

    usage(["invite", "create", "--space", p.space_id, "--auth", "key"],
          "(p2pinvite admission-key generate makes a key pair)")
    usage(["invite", "create", "--space", p.space_id, "--admission-key", public],
          "--admission-key applies to --auth key only")
    usage(["invite", "create", "--space", p.space_id, "--auth", "key", "--admission-key",
           "abcd"], "(p2pinvite admission-key generate prints one)")
    # The identity point: a key no signature could ever verify under (strict Ed25519).
    r = p.host.cli("invite", "create", "--space", p.space_id, "--auth", "key",
                   "--admission-key", "01" + "00" * 31)
    assert r.returncode != 0
    assert "not a usable Ed25519 key" in r.stderr.splitlines()[-1], r.stderr
    assert ok_json(p.host, "invite", "list") == []

    pin_inv = invite(p.host, "--space", p.space_id)
    usage(["--admission-key-file", str(key)],
          "--admission-key-file applies to key invitations only (this one uses pin)",
          host=False, code=pin_inv["code"])
    key_inv = invite(p.host, "--space", p.space_id, "--auth", "key", "--admission-key", public)
    usage([],
          "this invitation needs the admission key it names: --admission-key-file PATH",
          host=False, code=key_inv["code"])
    usage(["--admission-key-file", str(key.parent / "missing.key")],
          "does not exist", host=False, code=key_inv["code"])
    os.chmod(key, 0o640)
    usage(["--admission-key-file", str(key)],
          "expected 0600", host=False, code=key_inv["code"])
    # None of these cost the invitations an attempt.
    records = ok_json(p.host, "invite", "list")
    assert sorted((r["auth"], r["failed_attempts"]) for r in records) == [("key", 0), ("pin", 0)]
