"""The daemon's argparse-free command line reader agrees with the argparse parser.

``parse_daemon_args`` keeps argparse (and gettext) out of the long-running
daemon process. It may decline any command line (argparse then handles it),
but whatever it accepts must mean exactly what argparse makes of it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.cli import DaemonArgs, build_parser, parse_daemon_args

from .conftest import REPO


def _by_argparse(argv: list[str]) -> DaemonArgs | None:
    try:
        a = build_parser().parse_args(argv)
    except SystemExit:
        return None
    if a.command != "daemon":
        return None
    return DaemonArgs(a.home, a.listen, tuple(a.mdns_interface), a.no_mdns, a.retention,
                      a.log_level)


@pytest.mark.parametrize("argv", [
    ["daemon"],
    ["--home", "/h", "daemon", "--listen", "127.0.0.1:0", "--no-mdns"],
    ["--home=/h", "--home", "/g", "daemon", "--listen=[::1]:7000"],
    ["daemon", "--mdns-interface", "lo", "--mdns-interface=eth0", "--listen", "0.0.0.0:1",
     "--listen", "10.0.0.1:2"],
    ["daemon", "--no-mdns", "--no-mdns"],
    ["daemon", "--retention", "2d", "--retention=90"],
    ["daemon", "--log-level", "debug"],
    ["daemon", "--log-level=WARNING", "--no-mdns"],
    ["--home", "/h", "daemon", "--log-level", "info", "--log-level=Debug"],
])
def test_accepted_lines_mean_what_argparse_says(argv: list[str]) -> None:
    fast = parse_daemon_args(argv)
    assert fast is not None
    assert fast == _by_argparse(argv)


@pytest.mark.parametrize("argv", [
    [],
    ["status"],
    ["daemon", "--help"],
    ["daemon", "-h"],
    ["--version"],
    ["daemon", "--list", "127.0.0.1:0"],  # an abbreviation: argparse's business
    ["daemon", "--listen"],
    ["daemon", "--listen", "nonsense"],
    ["daemon", "--listen", "--no-mdns"],
    ["daemon", "--no-mdns=yes"],
    ["daemon", "--home", "/h"],  # --home belongs before the command
    ["--home", "daemon"],
    ["join", "daemon"],
    ["daemon", "extra"],
    ["daemon", "--retention"],
    ["daemon", "--retention", "0"],
    ["daemon", "--retention=3x"],
    ["daemon", "--log-level"],
    ["daemon", "--log-level", "loud"],
    ["daemon", "--log-level="],
    ["daemon", "--log-level", "error"],  # not a level the daemon offers
    ["daemon", "--log-level", "--no-mdns"],
    ["daemon", "--log", "debug"],  # an abbreviation
])
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert parse_daemon_args(argv) is None


_TOKENS = st.sampled_from([
    "daemon", "--home", "--home=/x", "/h", "--listen", "--listen=127.0.0.1:5",
    "127.0.0.1:0", "[::1]:9", "bad", "--mdns-interface", "--mdns-interface=lo", "eth0",
    "--no-mdns", "--no-mdns=1", "-h", "--", "status", "--json",
    "--retention", "--retention=1w", "12h", "0",
    "--log-level", "--log-level=debug", "--log-level=", "DEBUG", "warning", "loud",
])


def test_log_level_is_read_and_normalized() -> None:
    assert parse_daemon_args(["daemon", "--log-level", "DEBUG"]) == DaemonArgs(log_level="debug")
    assert parse_daemon_args(["daemon", "--log-level=warning"]) == DaemonArgs(
        log_level="warning")
    assert parse_daemon_args(["daemon"]) == DaemonArgs(log_level=None)  # the env decides later


def test_retention_is_read_in_seconds() -> None:
    assert parse_daemon_args(["daemon", "--retention", "2d"]) == DaemonArgs(retention=2 * 86400)
    assert parse_daemon_args(["daemon"]) == DaemonArgs(retention=None)


@settings(max_examples=150, deadline=None)
@given(st.lists(_TOKENS, max_size=8))
def test_never_disagrees_with_argparse(argv: list[str]) -> None:
    fast = parse_daemon_args(argv)
    if fast is not None:
        assert fast == _by_argparse(argv), argv


def test_daemon_path_does_not_import_cli_only_modules() -> None:
    code = (
        "import sys\n"
        "import p2pinvite.cli as cli\n"
        "args = cli.parse_daemon_args(['--home', '/h', 'daemon', '--listen', '127.0.0.1:0'])\n"
        "assert args is not None\n"
        "print(sorted(m for m in ('argparse', 'gettext', 'json', 'getpass', "
        "'p2pinvite.client') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
