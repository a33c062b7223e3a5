"""Brute force: no way of guessing buys more than the invitation's allowed attempts.

Adversarial suite, brute force (issue 18). The attacker holds a link code
without its PIN (or, on the LAN, knows a short code's public discriminator)
and guesses through every door it has: a fresh connection per guess, guesses
spread over restarts of the host (the counter must be persisted), and many
guesses at once from several guest daemons (the counter must be atomic, not
read-then-written per connection). Proved for each:

* the guests together see at most ``max_attempts`` "wrong PIN/code" answers,
  each with a correct and strictly decreasing "attempts left";
* the host's record counts exactly those failures and ends ``locked``;
* once locked, every attempt, the right secret included, is refused (the
  uniform refusal: the guest is not told why), also after a host restart.

The link-code part runs on loopback (mDNS off, hints find the host); the
short-code part runs in two network namespaces with real mDNS (root only,
skipped with the reason otherwise). Sizes: tests/soak.py.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from ..net.netns import Namespace, skip_reason
from ..soak import size
from .conftest import DaemonFactory, DaemonProc
from .test_e2e_netns import NsDaemons, members, mistyped
from .test_e2e_netns import veth as veth  # the fixture
from .test_e2e_pairing import join, ok_json, start_join, wrong

pytestmark = pytest.mark.slow

#: Guest daemons guessing at once in a parallel burst.
GUESSERS = size(4, 12)
#: Parallel bursts (each GUESSERS guesses) after the serial, restart-spread ones.
BURSTS = size(2, 6)
#: The host answers a guess within this; a join that takes longer is a failure.
JOIN_TIMEOUT = 90.0

UNIFORM = "p2pinvite: invitation not accepted: invitation not available [refused]"
_WRONG = re.compile(r"^p2pinvite: wrong (PIN|code); (\d+) attempts? left$")


def outcome(returncode: int, stderr: str) -> tuple[str, int | None]:
    """Classify one guess: ("wrong", attempts left), ("refused", None) or ("other", None)."""
    last = stderr.splitlines()[-1] if stderr.strip() else ""
    if returncode == 0:
        return "admitted", None
    if (m := _WRONG.match(last)) is not None:
        return "wrong", int(m.group(2))
    if last == UNIFORM:
        return "refused", None
    return "other", None


def finish(procs: list[subprocess.Popen[str]], timeout: float = JOIN_TIMEOUT,
           ) -> list[tuple[int, str, str]]:
    """Wait for every join, each at most *timeout*; (exit status, stdout, stderr) each."""
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
            pytest.fail(f"a join did not finish within {timeout}s: {stderr}")
        out.append((p.returncode, stdout, stderr))
    return out


def guess_in_parallel(guests: Sequence[DaemonProc], tries: Sequence[tuple[str, str | None]]
                      ) -> list[tuple[str, int | None, str]]:
    """Run one join per (code, pin) of *tries* at once, round-robin over *guests*."""
    procs = [start_join(guests[i % len(guests)], code, pin=pin)
             for i, (code, pin) in enumerate(tries)]
    results = []
    for rc, _, err in finish(procs):
        kind, left = outcome(rc, err)
        results.append((kind, left, err))
    return results


def record_of(host: DaemonProc, inv_id: str) -> dict[str, Any]:
    [record] = [r for r in ok_json(host, "invite", "list", "--all") if r["id"] == inv_id]
    assert isinstance(record, dict)
    return record


def check_tally(seen: list[tuple[str, int | None, str]], max_attempts: int) -> None:
    """The guests' answers: at most *max_attempts* "wrong", each "left" value at most once."""
    kinds = Counter(k for k, _, _ in seen)
    assert kinds["admitted"] == 0, seen
    assert kinds["other"] == 0, [err for k, _, err in seen if k == "other"]
    lefts = [left for k, left, _ in seen if k == "wrong"]
    assert len(lefts) <= max_attempts, seen
    # Each failure was counted once, atomically: no two guests got the same "left".
    assert sorted(lefts, reverse=True) == list(range(max_attempts - 1, max_attempts - 1
                                                      - len(lefts), -1)), lefts


# -- link code + PIN, loopback -----------------------------------------------------------


@pytest.fixture
def pin_setup(daemons: DaemonFactory) -> tuple[DaemonFactory, DaemonProc,
                                               list[DaemonProc], str]:
    host = daemons.start()
    ok_json(host, "identity", "create", "--name", "Alice")
    space = ok_json(host, "space", "create", "Vault")["space_id"]
    guests = [daemons.start() for _ in range(GUESSERS)]
    for i, g in enumerate(guests):
        ok_json(g, "identity", "create", "--name", f"Mallory{i}")
    return daemons, host, guests, space


def test_pin_guesses_through_reconnects_restarts_and_parallel_connections_stay_capped(
        pin_setup: tuple[DaemonFactory, DaemonProc, list[DaemonProc], str]) -> None:
    """Reconnects, host restarts and parallel guesses together never get over max_attempts."""
    daemons, host, guests, space = pin_setup
    inv = ok_json(host, "invite", "create", "--space", space, "--role", "editor")
    max_attempts = record_of(host, inv["id"])["max_attempts"]
    assert max_attempts == 3  # the documented default for PINs
    seen: list[tuple[str, int | None, str]] = []
    k = 0

    def next_wrong() -> str:
        nonlocal k
        k += 1
        return wrong(inv["pin"], k)

    # 1. One guess per connection, with a host restart between the guesses: the
    # counter survives the restart (persisted with the attempt, not in memory).
    r = join(guests[0], inv["code"], pin=next_wrong())
    seen.append((*outcome(r.returncode, r.stderr), r.stderr))
    assert seen[-1][:2] == ("wrong", max_attempts - 1), r.stderr
    assert host.stop() == 0
    host = daemons.start(host.home)
    assert record_of(host, inv["id"])["failed_attempts"] == 1

    # 2. Bursts of parallel guesses from every guest daemon at once: the remaining
    # attempts are handed out one by one, never twice.
    for burst in range(BURSTS):
        seen += guess_in_parallel(guests, [(inv["code"], next_wrong())
                                           for _ in range(len(guests))])
        if burst == 0:
            assert host.stop() == 0  # a restart in the middle of the attack, too
            host = daemons.start(host.home)
    check_tally(seen, max_attempts)
    assert Counter(kind for kind, _, _ in seen)["wrong"] == max_attempts
    record = record_of(host, inv["id"])
    assert (record["status"], record["failed_attempts"], record["uses"]) == \
        ("locked", max_attempts, 0)

    # 3. Locked for good: the right PIN too, from every guest at once, before and
    # after a restart; the counter does not move any more.
    for restart in (False, True):
        if restart:
            assert host.stop() == 0
            host = daemons.start(host.home)
        right = guess_in_parallel(guests, [(inv["code"], inv["pin"])] * len(guests))
        assert [kind for kind, _, _ in right] == ["refused"] * len(guests), right
        record = record_of(host, inv["id"])
        assert (record["status"], record["failed_attempts"], record["uses"]) == \
            ("locked", max_attempts, 0)
    assert len(ok_json(host, "space", "members", space)) == 1
    for d in (host, *guests):
        assert inv["pin"] not in d.stderr()
        assert "Traceback" not in d.stderr()


# -- short code on a LAN, mDNS in namespaces ----------------------------------------------


def _wrong_codes(code: str, n: int) -> list[str]:
    """*n* distinct well-formed short codes with *code*'s discriminator, none of them *code*."""
    out, current = [], code
    while len(out) < n:
        current = mistyped(current)
        if current != code:
            out.append(current)
    return out


@pytest.mark.netns
@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_short_code_guesser_on_a_lan_gets_at_most_the_allowed_attempts(
        veth: tuple[Namespace, Namespace, NsDaemons]) -> None:
    """Wrong short codes, in sequence then in parallel over mDNS, lock at max_attempts."""
    a, b, start = veth
    host = start.start(a, start.home("alice"))
    ok_json(host, "identity", "create", "--name", "Alice")
    space = ok_json(host, "space", "create", "Garden")["space_id"]
    inv = ok_json(host, "invite", "create", "--space", space, "--role", "editor",
                  "--auth", "short")
    max_attempts = record_of(host, inv["id"])["max_attempts"]
    assert max_attempts == 20  # the documented default for short codes
    guests = [start.start(b, start.home(f"mallory{i}")) for i in range(size(3, 8))]
    for i, g in enumerate(guests):
        ok_json(g, "identity", "create", "--name", f"Mallory{i}")
    serial = size(4, 8)
    # Enough wrong codes to go well past the limit in the parallel phase.
    codes = _wrong_codes(inv["code"], max_attempts + size(10, 40))
    seen: list[tuple[str, int | None, str]] = []
    began = time.monotonic()
    for code in codes[:serial]:  # one at a time, each a fresh mDNS lookup + connection
        r = join(guests[0], code)
        seen.append((*outcome(r.returncode, r.stderr), r.stderr))
        assert seen[-1][0] == "wrong", r.stderr
    serial_took = time.monotonic() - began
    assert record_of(host, inv["id"])["failed_attempts"] == serial
    rest = codes[serial:]
    width = len(guests) * 2  # two joins per guest daemon at a time
    for i in range(0, len(rest), width):
        seen += guess_in_parallel(guests, [(c, None) for c in rest[i:i + width]])
    check_tally(seen, max_attempts)
    assert Counter(kind for kind, _, _ in seen)["wrong"] == max_attempts
    record = record_of(host, inv["id"])
    assert (record["status"], record["failed_attempts"], record["uses"]) == \
        ("locked", max_attempts, 0)
    # The right code is now refused as well; no one was admitted.
    r = join(guests[0], inv["code"])
    assert outcome(r.returncode, r.stderr)[0] == "refused", r.stderr
    assert len(members(host, space)) == 1
    assert serial_took < serial * 30  # each guess was answered, not timed out
    for d in (host, *guests):
        assert "Traceback" not in d.stderr()
