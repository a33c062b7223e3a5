"""Home resolution, the home lock, listen parsing, CLI helpers and log redaction."""

from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from p2pinvite.cli import build_parser, parse_duration
from p2pinvite.daemon import config as cfg
from p2pinvite.daemon.logs import LEVELS, REDACTED, close_logging, setup_logging
from p2pinvite.daemon.service import to_wire
from p2pinvite.errors import StorageError

# -- home --------------------------------------------------------------------------------


def test_home_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(cfg.ENV_HOME, raising=False)
    assert cfg.resolve_home() == tmp_path / "xdg" / "p2pinvite"
    monkeypatch.setenv(cfg.ENV_HOME, str(tmp_path / "env"))
    assert cfg.resolve_home() == tmp_path / "env"
    assert cfg.resolve_home(tmp_path / "arg") == tmp_path / "arg"
    assert cfg.socket_path(tmp_path / "arg") == tmp_path / "arg" / "daemon.sock"


def test_default_home_ignores_relative_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")
    assert cfg.default_home() == Path.home() / ".local" / "share" / "p2pinvite"


def test_relative_home_is_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert cfg.resolve_home("h") == tmp_path / "h"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("0.0.0.0:4000", ("0.0.0.0", 4000)),
     ("[::1]:65535", ("::1", 65535)), ("localhost:1", ("localhost", 1))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert cfg.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "h:", "h:x", "h:65536", "::1:80"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        cfg.parse_listen(text)


def test_lock_is_exclusive_and_writes_pid(short_tmp: Path) -> None:
    conf = cfg.DaemonConfig(home=short_tmp / "home")
    with cfg.hold_home_lock(conf):
        assert conf.home.stat().st_mode & 0o777 == 0o700
        assert conf.lock_path.read_text().strip() == str(os.getpid())
        # flock locks belong to open file descriptions: a second open conflicts
        # even in the same process, just as another daemon would.
        with pytest.raises(cfg.DaemonAlreadyRunning, match=f"pid {os.getpid()}"), \
                cfg.hold_home_lock(conf):
            pass
    with cfg.hold_home_lock(conf):  # released on exit
        pass


def test_lock_removes_stale_socket_but_not_other_files(short_tmp: Path) -> None:
    conf = cfg.DaemonConfig(home=short_tmp / "home")
    conf.home.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(conf.socket_path))
    stale.close()
    with cfg.hold_home_lock(conf):
        assert not conf.socket_path.exists()
    conf.socket_path.write_text("not a socket")
    with pytest.raises(StorageError, match="not a socket"), cfg.hold_home_lock(conf):
        pass


def test_lock_refuses_open_home_and_long_paths(short_tmp: Path) -> None:
    open_home = short_tmp / "open"
    open_home.mkdir(mode=0o755)
    open_home.chmod(0o755)
    with pytest.raises(StorageError, match="0700"), \
            cfg.hold_home_lock(cfg.DaemonConfig(home=open_home)):
        pass
    deep = short_tmp / ("d" * 120)
    with pytest.raises(StorageError, match="too long"), \
            cfg.hold_home_lock(cfg.DaemonConfig(home=deep)):
        pass


# -- CLI helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("45s", 45), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1w", 604800),
     (" 3H ", 10800)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0m", "-5m", "5y", "1.5h", "h", "1e9"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_parser_builds_invite_create() -> None:
    a = build_parser().parse_args(
        ["--home", "/h", "invite", "create", "--space", "Photos", "--role", "reader",
         "--unlimited", "--expires", "2h", "--note", "for Bob", "--json"])
    assert (a.home, a.space, a.role, a.unlimited, a.expires, a.note, a.json, a.auth) == (
        "/h", "Photos", "reader", True, 7200, "for Bob", True, "pin")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["invite", "create", "--space", "S", "--device"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["invite", "create", "--device", "--uses", "2",
                                   "--unlimited"])


def test_cli_module_start_is_light() -> None:
    code = ("import sys, p2pinvite.cli; "
            "print(sorted(m for m in ('trio', 'cryptography', 'zeroconf', 'segno') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# -- to_wire never leaks repr=False fields -------------------------------------------------


def test_to_wire_drops_secret_fields() -> None:
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Info:
        id: bytes
        auth: str
        secret: bytes = field(repr=False)
        expires_at: float = 10.0

    assert to_wire(Info(b"\x01\xff", "pin", b"s" * 32)) == {
        "id": "01ff", "auth": "pin", "expires_at": 10}


# -- logs --------------------------------------------------------------------------------


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    handler = setup_logging(stream=stream)
    try:
        yield stream
    finally:
        close_logging(handler)


def test_log_line_shape(log_stream: io.StringIO) -> None:
    logging.getLogger("p2pinvite.daemon").info(
        "daemon ready", extra={"pid": 42, "home": "/a b", "device_key": b"\x01\x02"})
    line = log_stream.getvalue()
    ts, level, name, rest = line.split(" ", 3)
    assert ts.endswith("Z")
    assert "T" in ts
    assert (level, name) == ("INFO", "p2pinvite.daemon")
    assert rest == 'daemon ready device_key=0102 home="/a b" pid=42\n'


def test_log_redacts_secret_fields_and_text(log_stream: io.StringIO) -> None:
    log = logging.getLogger("p2pinvite.test")
    link = "p2pinvite:AEBAGBAFAYDQQCIKBMGA2DQPCAIREEYUCULBOGAZDINRYHI6D4QA"
    log.warning("got pin=123456 and code %s and short 1234-5678-9012", link,
                extra={"pin": "654321", "secret": b"\x00" * 32, "admission_code": "x",
                       "peer": "ok"})
    try:
        raise ValueError(f"bad {link} PIN: 999999")
    except ValueError:
        log.exception("failed")
    out = log_stream.getvalue()
    for secret in ("123456", "654321", "AEBAGBAF", "5678-9012", "999999", "00" * 32):
        assert secret not in out
    assert out.count(REDACTED) >= 6
    assert "peer=ok" in out
    assert "Traceback" not in out
    assert "error=ValueError" in out


def test_log_level_names_agree_between_config_and_logs() -> None:
    assert tuple(LEVELS) == cfg.LOG_LEVELS
    assert cfg.DEFAULT_LOG_LEVEL in cfg.LOG_LEVELS


def test_log_level_flag_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cfg.ENV_LOG_LEVEL, raising=False)
    assert cfg.resolve_log_level() == "info"
    assert cfg.resolve_log_level("Warning") == "warning"
    monkeypatch.setenv(cfg.ENV_LOG_LEVEL, "")
    assert cfg.resolve_log_level() == "info"  # empty means unset, as for P2PINVITE_HOME
    monkeypatch.setenv(cfg.ENV_LOG_LEVEL, " DEBUG ")
    assert cfg.resolve_log_level() == "debug"
    assert cfg.resolve_log_level("info") == "info"
    monkeypatch.setenv(cfg.ENV_LOG_LEVEL, "verbose")
    with pytest.raises(ValueError, match=r"^invalid P2PINVITE_LOG_LEVEL='verbose' "):
        cfg.resolve_log_level()
    assert cfg.resolve_log_level("debug") == "debug"  # a good flag makes the variable moot
    with pytest.raises(ValueError, match=r"^invalid log level 'error' "):
        cfg.resolve_log_level("error")


@pytest.mark.parametrize(("level", "shown"), [
    ("debug", ["DEBUG", "INFO", "WARNING"]),
    ("info", ["INFO", "WARNING"]),
    ("warning", ["WARNING"]),
])
def test_setup_logging_level_filters_records(level: str, shown: list[str]) -> None:
    stream = io.StringIO()
    handler = setup_logging(level=level, stream=stream)
    try:
        log = logging.getLogger("p2pinvite.net")
        log.debug("dialing peer pin=111111")
        log.info("connected", extra={"psk": b"k" * 32})
        log.warning("dropped p2pinvite:AEBAGBAFAYDQQCIKBMGA2DQPCAIREEYUCULBOGAZDINRYHI6D4QA")
    finally:
        close_logging(handler)
    lines = stream.getvalue().splitlines()
    assert [line.split(" ")[1] for line in lines] == shown
    out = stream.getvalue()
    for secret in ("111111", "6b" * 32, "AEBAGBAF"):
        assert secret not in out  # redaction holds at every level, debug included
