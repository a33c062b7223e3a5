"""Structured logging to stderr, with secrets redacted before anything is written.

One line per record::

    2025-01-01T12:00:00.123Z INFO p2pinvite.daemon daemon ready pid=42 socket=/home/.../daemon.sock

Structured fields are passed with ``extra=`` (``log.info("x", extra={"peer": ...})``)
and printed as ``key=value`` after the message.

Why a filter and not discipline alone: a PIN or a link code (which carries a
256-bit secret) that slipped into an exception message or a field must still
never reach the log. :class:`RedactFilter` replaces, in every record,

* any field whose name looks secret (``pin``, ``secret``, ``psk``,
  ``password``, ``private``, ``code``, ...), and
* link codes and ``pin=...``-style fragments inside the message text,

with ``<redacted>``. It is a last line of defence: callers still log only
what is safe.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Final, TextIO

__all__ = [
    "LEVELS",
    "REDACTED",
    "RedactFilter",
    "StructuredFormatter",
    "close_logging",
    "setup_logging",
]

REDACTED: Final = "<redacted>"

#: ``--log-level`` names (:data:`p2pinvite.daemon.config.LOG_LEVELS`) to :mod:`logging` levels.
LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}

#: Field names that are never printed (matched as a whole word or a name part).
_SECRET_NAME: Final = re.compile(
    r"(^|_)(pin|pins|secret|secrets|psk|password|passphrase|private|private_key|seed|"
    r"code|link|token|key_material|sk)($|_)",
    re.IGNORECASE,
)
#: Secret-looking fragments inside free text.
_SECRET_TEXT: Final = (
    # A link code carries the invitation secret: drop everything after the scheme.
    (re.compile(r"p2pinvite:[A-Za-z0-9=_-]+"), "p2pinvite:" + REDACTED),
    # "pin=123456", "PIN: 123456", "secret 'abc'"
    (
        re.compile(r"\b(pin|secret|psk|password|private[_ ]key)(\s*[=:]\s*|\s+)\S+", re.I),
        r"\1\2" + REDACTED,
    ),
    # Short codes: groups of digits such as 1234-5678-9012.
    (re.compile(r"\b\d{4}-\d{4}-\d{3,4}\b"), REDACTED),
)

#: Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)


def _redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and k[0] != "_"}


class RedactFilter(logging.Filter):
    """Rewrite each record so that no secret-looking field or fragment survives."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact *record* in place; never drops it."""
        # Render the message now, so that %-args are redacted too.
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            text = f"{record.msg!r} (unformattable args)"
        record.msg = _redact_text(text)
        record.args = None
        for key, value in _fields(record).items():
            if _SECRET_NAME.search(key):
                setattr(record, key, REDACTED)
            elif isinstance(value, str):
                setattr(record, key, _redact_text(value))
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks print the exception message; keep the type and a redacted message.
            exc = record.exc_info[1]
            record.exc_text = None
            record.exc_info = None
            record.msg += f" error={type(exc).__name__}: {_redact_text(str(exc))}"
        return True


def _format_value(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    text = str(value)
    if text == "" or any(c.isspace() or c in "\"=" for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class StructuredFormatter(logging.Formatter):
    """``ts level logger msg key=value ...`` with an ISO-8601 UTC timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        """Render *record* as one line."""
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ms = int(record.msecs)
        parts = [f"{ts}.{ms:03d}Z", record.levelname, record.name, record.getMessage()]
        parts += [f"{k}={_format_value(v)}" for k, v in sorted(_fields(record).items())]
        return " ".join(parts).replace("\n", "\\n")


def setup_logging(
    *, level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send the ``p2pinvite`` loggers to *stream* (stderr) in the structured format.

    *level* is a :mod:`logging` level or one of the names in :data:`LEVELS`
    (``debug``, ``info``, ``warning``); records below it are dropped. It
    applies to the ``p2pinvite.*`` loggers only: libraries' own loggers
    (zeroconf, trio) keep their defaults.

    Returns the installed handler, for :func:`close_logging`. The redaction
    filter sits on the handler, so records from every ``p2pinvite.*`` logger
    (and from libraries logging under it) pass through it, at every level.
    """
    if isinstance(level, str):
        level = LEVELS[level]
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(StructuredFormatter())
    handler.addFilter(RedactFilter())
    root = logging.getLogger("p2pinvite")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return handler


def close_logging(handler: logging.Handler) -> None:
    """Flush and detach *handler* installed by :func:`setup_logging`."""
    logging.getLogger("p2pinvite").removeHandler(handler)
    handler.flush()
    handler.close()
