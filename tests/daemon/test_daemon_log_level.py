"""``daemon --log-level`` and ``$P2PINVITE_LOG_LEVEL``, on real daemon processes.

The flag wins over the variable; a bad value of either is a usage error
(exit 2) before anything starts. Redaction holds at every level.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import PY, REPO, DaemonFactory, DaemonProc, child_env

pytestmark = pytest.mark.slow


def levels(d: DaemonProc) -> set[str]:
    """The levels of the ``p2pinvite.*`` records in *d*'s log (one record per line)."""
    found = set()
    for line in d.stderr().splitlines():
        parts = line.split(" ", 3)
        assert len(parts) == 4, line
        assert parts[2].startswith("p2pinvite"), line
        found.add(parts[1])
    return found


def exercise(d: DaemonProc) -> str:
    """Make the daemon do some work (an identity, a hosted invitation); return the code."""
    assert d.cli("identity", "create", "--name", "Alice").returncode == 0
    r = d.cli("invite", "create", "--device", "--auth", "none", "--json")
    assert r.returncode == 0, r.stderr
    code = json.loads(r.stdout)["code"]
    assert isinstance(code, str)
    assert d.stop() == 0
    return code


def test_default_level_is_info(daemons: DaemonFactory) -> None:
    d = daemons.start()
    exercise(d)
    assert levels(d) == {"INFO"}
    assert "daemon ready" in d.stderr()
    assert "log_level=info" in d.stderr()


def test_debug_flag_shows_debug_records_still_redacted(daemons: DaemonFactory) -> None:
    d = daemons.start(extra=["--log-level", "debug"])
    code = exercise(d)
    assert {"DEBUG", "INFO"} <= levels(d)
    assert "log_level=debug" in d.stderr()
    assert code.removeprefix("p2pinvite:")[:24] not in d.stderr()


def test_warning_flag_hides_info_and_debug(daemons: DaemonFactory) -> None:
    d = daemons.start(extra=["--log-level=warning"])
    exercise(d)
    assert not levels(d) & {"DEBUG", "INFO"}
    assert "daemon ready" not in d.stderr()


def test_environment_sets_the_level_and_the_flag_wins(daemons: DaemonFactory) -> None:
    by_env = daemons.start(env={"P2PINVITE_LOG_LEVEL": "DEBUG"})
    exercise(by_env)
    assert "DEBUG" in levels(by_env)
    assert "log_level=debug" in by_env.stderr()

    flag_wins = daemons.start(extra=["--log-level", "warning"],
                              env={"P2PINVITE_LOG_LEVEL": "debug"})
    exercise(flag_wins)
    assert not levels(flag_wins) & {"DEBUG", "INFO"}

    # A valid flag wins even over a variable that is not a level at all.
    d = daemons.start(extra=["--log-level", "info"], env={"P2PINVITE_LOG_LEVEL": "loud"})
    exercise(d)
    assert levels(d) == {"INFO"}


def _daemon_cmd(home: str, *extra: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "p2pinvite", "--home", home, "daemon", "--listen", "127.0.0.1:0",
         "--no-mdns", *extra],
        capture_output=True, text=True, timeout=30, env=child_env(env), cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def test_bad_level_is_a_usage_error(daemons: DaemonFactory) -> None:
    home = daemons.new_home()
    r = _daemon_cmd(str(home), "--log-level", "loud")
    assert r.returncode == 2
    assert "invalid log level 'loud' (expected debug, info or warning)" in r.stderr
    assert "Traceback" not in r.stderr
    assert not home.exists()  # refused before the daemon touched anything

    r = _daemon_cmd(str(home), env={"P2PINVITE_LOG_LEVEL": "loud"})
    assert r.returncode == 2
    assert r.stderr == ("p2pinvite: invalid P2PINVITE_LOG_LEVEL='loud' "
                        "(expected debug, info or warning)\n")
    assert not home.exists()
