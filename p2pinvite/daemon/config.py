"""The daemon's home directory, its configuration, and the one-daemon-per-home lock.

The home is chosen as: ``--home DIR``, else ``$P2PINVITE_HOME``, else the
per-user data directory (``$XDG_DATA_HOME/p2pinvite`` or
``~/.local/share/p2pinvite``). Everything the daemon keeps lives in it, and
its IPC socket is ``HOME/daemon.sock``.

Two daemons on one home would corrupt each other's logs, so the daemon holds
an exclusive ``flock`` on ``HOME/daemon.lock`` for its whole life. The kernel
drops the lock when the process dies, however it dies; that is what makes a
leftover socket file safe to remove: if we hold the lock, nobody is serving it.

No trio here: the client and the CLI import this module to find the socket.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import IPCError, StorageError
from ..fsutil import ensure_private_dir
from ..ipc_codec import SOCKET_NAME

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_LOG_LEVEL",
    "ENV_HOME",
    "ENV_LOG_LEVEL",
    "LOCK_NAME",
    "LOG_LEVELS",
    "DaemonAlreadyRunning",
    "DaemonConfig",
    "default_home",
    "hold_home_lock",
    "parse_listen",
    "parse_log_level",
    "resolve_home",
    "resolve_log_level",
    "socket_path",
]

ENV_HOME: Final = "P2PINVITE_HOME"
#: The daemon's log level when ``--log-level`` is not given.
ENV_LOG_LEVEL: Final = "P2PINVITE_LOG_LEVEL"
#: The levels ``--log-level`` and ``$P2PINVITE_LOG_LEVEL`` accept, most verbose first.
#: Names only; :data:`p2pinvite.daemon.logs.LEVELS` maps them to :mod:`logging` levels.
LOG_LEVELS: Final = ("debug", "info", "warning")
DEFAULT_LOG_LEVEL: Final = "info"
LOCK_NAME: Final = "daemon.lock"
#: All interfaces, a port chosen by the kernel.
DEFAULT_LISTEN: Final = ("0.0.0.0", 0)  # noqa: S104 - a LAN daemon listens on the LAN
#: sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH: Final = 107


class DaemonAlreadyRunning(IPCError):
    """Another daemon holds the home's lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="already_running")


def default_home() -> Path:
    """The per-user data directory: ``$XDG_DATA_HOME/p2pinvite`` or ``~/.local/share/...``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "p2pinvite"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The home to use: *home* if given, else ``$P2PINVITE_HOME``, else :func:`default_home`.

    The result is absolute (``~`` expanded) but is not created.
    """
    if home is None or str(home) == "":
        env = os.environ.get(ENV_HOME, "")
        chosen = Path(env) if env else default_home()
    else:
        chosen = Path(home)
    return chosen.expanduser().absolute()


def socket_path(home: str | os.PathLike[str] | None = None) -> Path:
    """The daemon's IPC socket for *home* (resolved as :func:`resolve_home` does)."""
    return resolve_home(home) / SOCKET_NAME


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into ``(host, port)``.

    Raises :class:`ValueError` with a one-line reason (argparse shows it).
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0..65535, got {port_text!r}")
    return host, int(port_text)


def parse_log_level(text: str) -> str:
    """The level named by *text*, one of :data:`LOG_LEVELS` (case-insensitive).

    Raises :class:`ValueError` with a one-line reason (argparse shows it).
    """
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"invalid log level {text!r} (expected debug, info or warning)")
    return level


def resolve_log_level(flag: str | None = None) -> str:
    """The daemon's log level: *flag* (``--log-level``) if given, else ``$P2PINVITE_LOG_LEVEL``.

    The flag wins over the environment; an unset or empty variable means
    :data:`DEFAULT_LOG_LEVEL`. Raises :class:`ValueError` naming the source of a
    bad value, so the caller can report a usage error rather than silently
    logging at some other level.
    """
    if flag is not None:
        return parse_log_level(flag)
    env = os.environ.get(ENV_LOG_LEVEL, "")
    if not env:
        return DEFAULT_LOG_LEVEL
    try:
        return parse_log_level(env)
    except ValueError:
        raise ValueError(
            f"invalid {ENV_LOG_LEVEL}={env!r} (expected debug, info or warning)"
        ) from None


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything ``p2pinvite daemon`` is started with.

    ``mdns_interfaces`` is ``None`` for zeroconf's default interfaces, or the
    names of the interfaces to announce on; it is ignored when ``mdns`` is off.
    ``retention``: seconds a finished invitation stays listed before its record
    is deleted, ``None`` for the invitation manager's default (30 days).
    ``log_level``: one of :data:`LOG_LEVELS`. ``mailbox`` (a ``ws://`` or
    ``wss://`` URL) and ``transit`` (host, port): the rendezvous beyond the LAN
    (docs/RENDEZVOUS.md), both ``None`` by default: nothing leaves the LAN.
    """

    home: Path
    listen: tuple[str, int] = DEFAULT_LISTEN
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] | None = None
    retention: float | None = None
    log_level: str = DEFAULT_LOG_LEVEL
    mailbox: str | None = None
    transit: tuple[str, int] | None = None

    @property
    def socket_path(self) -> Path:
        """Where the IPC socket is bound."""
        return self.home / SOCKET_NAME

    @property
    def lock_path(self) -> Path:
        """The file whose ``flock`` marks the home as in use."""
        return self.home / LOCK_NAME


def _lock_holder(fd: int) -> str:
    """Best effort: the pid the current holder wrote into the lock file."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


@contextlib.contextmanager
def hold_home_lock(config: DaemonConfig) -> Iterator[None]:
    """Create the home (0700), take its lock, and clear a stale socket; release on exit.

    Raises :class:`DaemonAlreadyRunning` when another process holds the lock,
    and :class:`StorageError` when the home is unusable (wrong permissions,
    socket path too long for ``AF_UNIX``).
    """
    ensure_private_dir(config.home)
    if len(os.fsencode(config.socket_path)) > _MAX_SOCKET_PATH:
        raise StorageError(
            f"home path too long for a Unix socket ({config.socket_path}); choose a shorter --home"
        )
    fd = os.open(config.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise DaemonAlreadyRunning(
                f"a daemon is already running on {config.home}{_lock_holder(fd)}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        _remove_stale_socket(config.socket_path)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a daemon that died; refuse to touch anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StorageError(f"{path} exists and is not a socket; remove it by hand")
    path.unlink()
