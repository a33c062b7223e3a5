"""The daemon's rendezvous settings, and how its mailbox connections are doing.

Opt-in: a daemon started with ``--mailbox URL`` (and optionally ``--transit
HOST:PORT``) meets peers beyond its LAN there (docs/RENDEZVOUS.md); without
them nothing leaves the LAN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from .mailbox_wire import check_mailbox_url
from .transit import format_relay_address

__all__ = ["MAILBOX_TIMEOUT", "RELAY_WAIT", "RendezvousConfig", "RendezvousStatus"]

#: How long connecting to the mailbox may take (seconds).
MAILBOX_TIMEOUT: Final = 10.0
#: How long either side waits at the relay for the other (seconds).
RELAY_WAIT: Final = 20.0


@dataclass(frozen=True, slots=True)
class RendezvousConfig:
    """A mailbox URL (``ws://`` or ``wss://``) and the transit relay to offer, if any."""

    mailbox: str
    transit: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        check_mailbox_url(self.mailbox)


@dataclass
class RendezvousStatus:
    """Mailbox sessions open now, and the last failure; what ``status`` shows."""

    config: RendezvousConfig | None
    open_sessions: int = 0
    last_error: str | None = field(default=None)

    def opened(self) -> None:
        """A mailbox session is open (it clears the last error)."""
        self.open_sessions += 1
        self.last_error = None

    def closed(self) -> None:
        """A mailbox session ended."""
        self.open_sessions = max(0, self.open_sessions - 1)

    def failed(self, why: str) -> None:
        """Connecting to the mailbox, or a session, failed with *why* (no secrets in it)."""
        self.last_error = why

    @property
    def state(self) -> str:
        """``off`` (not configured), ``connected`` (a session is open), ``error``
        (the last attempt failed and none is open), or ``idle`` (nothing to meet)."""
        if self.config is None:
            return "off"
        if self.open_sessions:
            return "connected"
        return "error" if self.last_error else "idle"

    def as_dict(self) -> dict[str, Any]:
        """The ``rendezvous`` field of the daemon's status."""
        cfg = self.config
        return {
            "mailbox": None if cfg is None else cfg.mailbox,
            "transit": None if cfg is None or cfg.transit is None
            else format_relay_address(*cfg.transit),
            "state": self.state,
            "connected": self.open_sessions > 0,
            "sessions": self.open_sessions,
            "error": self.last_error,
        }
