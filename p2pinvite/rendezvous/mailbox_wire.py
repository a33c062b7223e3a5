"""The magic-wormhole mailbox protocol as we speak it: codec and limits (sans-IO).

The mailbox server (magic-wormhole-mailbox-server, docs/RENDEZVOUS.md §4)
speaks JSON objects in WebSocket text frames. This module encodes the few
client messages we send and decodes, strictly and within limits, everything
the server may send; :mod:`.mailbox` moves the frames. Every decoding failure
is a :class:`~p2pinvite.errors.DecodeError` (the I/O layer adds which server
it was); nothing here touches a socket.

Client messages (each with an ``id`` the server echoes in its ``ack``)::

    {"type": "bind", "appid": A, "side": S, "client_version": ["p2pinvite", V]}
    {"type": "open", "mailbox": M}
    {"type": "add", "phase": P, "body": HEX}
    {"type": "close", "mailbox": M, "mood": "happy" | "lonely" | "errory" | "scary"}
    {"type": "ping", "ping": N}

Server messages (all also carry ``server_tx``, a float we ignore)::

    {"type": "welcome", "welcome": {"motd"?: str, "error"?: str, ...}}
    {"type": "ack", "id": ...}
    {"type": "message", "side": S, "phase": P, "body": HEX, "id": ..., "server_rx": t}
    {"type": "closed"}
    {"type": "error", "error": str, "orig": {...}}
    {"type": "pong", "pong": N}

Types we never ask for (``nameplates``, ``allocated``, ``claimed``,
``released``) or do not know decode as :class:`Ignored`; unknown keys are
ignored, as the server's own documentation asks of clients.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from .. import __version__
from ..errors import DecodeError, FrameTooLarge, LocalProtocolError, RendezvousAddressError

__all__ = [
    "MAX_BODY",
    "MAX_FIELD",
    "MAX_SERVER_MESSAGE",
    "Ack",
    "Closed",
    "ErrorReply",
    "Ignored",
    "Message",
    "Mood",
    "Pong",
    "ServerMessage",
    "Welcome",
    "check_mailbox_url",
    "decode_server_message",
    "encode_add",
    "encode_bind",
    "encode_close",
    "encode_open",
    "encode_ping",
]

#: Largest message body we send or accept, in bytes (hex doubles it on the wire).
MAX_BODY: Final = 4096
#: Largest server frame we accept, in characters: an echo of our largest ``add``
#: (an ``error`` quotes it whole) with room to spare.
MAX_SERVER_MESSAGE: Final = 32 * 1024
#: Longest side, phase, id or mailbox id we accept from the server.
MAX_FIELD: Final = 256
#: Longest server error or motd text we keep (longer text is cut, not refused).
_MAX_TEXT: Final = 200
_MAX_URL: Final = 2048

#: How a side leaves a mailbox (the server records it in its usage statistics only).
Mood = Literal["happy", "lonely", "errory", "scary"]
_MOODS: Final = frozenset({"happy", "lonely", "errory", "scary"})

# What we send: sides, phases and mailbox ids of a safe alphabet, so that none
# needs escaping and each is accepted by the transit relay too (sides).
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HEX_RE: Final = re.compile(r"(?:[0-9a-fA-F]{2})*")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# --- server messages --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's first message. ``error`` set means it refuses to serve anyone."""

    motd: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The server received one of our messages (``id`` is the one we gave it, if any)."""

    id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A message in the mailbox, from either side (our own are echoed to us)."""

    side: str
    phase: str
    body: bytes
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Closed:
    """Our ``close`` was done."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The server refused one of our messages; ``orig_type`` is that message's type."""

    error: str
    orig_type: str | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to our ``ping``; the server handles messages in order, so it
    proves every message we sent before the ping was processed."""

    pong: int


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed message of a type we never ask for (or do not know)."""

    type: str


ServerMessage = Welcome | Ack | Message | Closed | ErrorReply | Pong | Ignored


def _text(value: str) -> str:
    """Server text made safe to log: no control characters, at most 200 characters."""
    return _CONTROL_RE.sub("?", value)[:_MAX_TEXT]


def _str(m: Mapping[str, Any], key: str, *, what: str) -> str:
    v = m.get(key)
    if not isinstance(v, str):
        raise DecodeError(f"mailbox {what}: field {key!r} must be a string")
    if len(v) > MAX_FIELD:
        raise DecodeError(f"mailbox {what}: field {key!r} is too long")
    return v


def _opt_text(m: Mapping[str, Any], key: str, *, what: str) -> str | None:
    v = m.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise DecodeError(f"mailbox {what}: field {key!r} must be a string")
    return _text(v)


def _id(m: Mapping[str, Any]) -> str | None:
    # Ids are whatever the sending client chose (ours are short strings); an id
    # of another form is not an error, just not one of ours.
    v = m.get("id")
    return v if isinstance(v, str) and len(v) <= MAX_FIELD else None


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"mailbox message: {name} is not JSON")


def _parse(frame: str | bytes) -> dict[str, Any]:
    if not isinstance(frame, str):
        raise DecodeError("mailbox message: a binary frame (the server sends text)")
    if len(frame) > MAX_SERVER_MESSAGE:
        raise FrameTooLarge(f"mailbox message of {len(frame)} characters exceeds "
                            f"{MAX_SERVER_MESSAGE}")
    try:
        value = json.loads(frame, parse_constant=_refuse_constant)
    except DecodeError:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting
        raise DecodeError("mailbox message: not JSON") from None
    if not isinstance(value, dict):
        raise DecodeError("mailbox message: not a JSON object")
    return value


def decode_server_message(frame: str | bytes) -> ServerMessage:
    """Decode one server frame strictly; ``DecodeError`` for anything malformed."""
    m = _parse(frame)
    kind = m.get("type")
    if not isinstance(kind, str):
        raise DecodeError("mailbox message: no 'type'")
    if kind == "welcome":
        w = m.get("welcome")
        if not isinstance(w, dict):
            raise DecodeError("mailbox welcome: 'welcome' must be an object")
        return Welcome(_opt_text(w, "motd", what="welcome"), _opt_text(w, "error", what="welcome"))
    if kind == "ack":
        return Ack(_id(m))
    if kind == "message":
        body = m.get("body")
        if not isinstance(body, str) or len(body) > 2 * MAX_BODY or not _HEX_RE.fullmatch(body):
            raise DecodeError(f"mailbox message: body must be hex of at most {MAX_BODY} bytes")
        return Message(_str(m, "side", what="message"), _str(m, "phase", what="message"),
                       bytes.fromhex(body), _id(m))
    if kind == "closed":
        return Closed()
    if kind == "error":
        error = m.get("error")
        if not isinstance(error, str):
            raise DecodeError("mailbox error: 'error' must be a string")
        orig = m.get("orig")
        orig_type = orig.get("type") if isinstance(orig, dict) else None
        return ErrorReply(_text(error),
                          _text(orig_type) if isinstance(orig_type, str) else None)
    if kind == "pong":
        pong = m.get("pong")
        if not isinstance(pong, int) or isinstance(pong, bool):
            raise DecodeError("mailbox pong: 'pong' must be an integer")
        return Pong(pong)
    return Ignored(_text(kind))


# --- client messages --------------------------------------------------------------------------

def _token(value: str, what: str) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise LocalProtocolError(f"a mailbox {what} is 1-128 characters of [A-Za-z0-9_-]")
    return value


def _encode(kind: str, msg_id: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "id": _token(msg_id, "message id"), **fields},
                      separators=(",", ":"), sort_keys=True)


def encode_bind(appid: str, side: str, msg_id: str) -> str:
    """``bind``: which application namespace and side this connection speaks for."""
    if not isinstance(appid, str) or not 0 < len(appid) <= MAX_FIELD or not appid.isprintable():
        raise LocalProtocolError("an appid is 1-256 printable characters")
    return _encode("bind", msg_id, appid=appid, side=_token(side, "side"),
                   client_version=["p2pinvite", __version__])


def encode_open(mailbox_id: str, msg_id: str) -> str:
    """``open``: create or join the mailbox and subscribe to its messages."""
    return _encode("open", msg_id, mailbox=_token(mailbox_id, "mailbox id"))


def encode_add(phase: str, body: bytes, msg_id: str) -> str:
    """``add``: store *body* in the open mailbox under *phase*."""
    if not isinstance(body, bytes) or len(body) > MAX_BODY:
        raise LocalProtocolError(f"a mailbox body is at most {MAX_BODY} bytes")
    return _encode("add", msg_id, phase=_token(phase, "phase"), body=body.hex())


def encode_close(mailbox_id: str, mood: Mood, msg_id: str) -> str:
    """``close``: leave the mailbox (the server deletes it when both sides have)."""
    if mood not in _MOODS:
        raise LocalProtocolError(f"a mood is one of {sorted(_MOODS)}")
    return _encode("close", msg_id, mailbox=_token(mailbox_id, "mailbox id"), mood=mood)


def encode_ping(ping: int, msg_id: str) -> str:
    """``ping``: answered by a ``pong`` once everything sent before is processed."""
    if not isinstance(ping, int) or isinstance(ping, bool) or not 0 <= ping < 2**31:
        raise LocalProtocolError("a ping is an integer in [0, 2**31)")
    return _encode("ping", msg_id, ping=ping)


# --- the URL ----------------------------------------------------------------------------------

def check_mailbox_url(url: str) -> str:
    """*url* if it is a usable mailbox URL, else :class:`RendezvousAddressError`.

    ``ws://`` or ``wss://``, a host, an optional port, a path (the public
    server's is ``/v1``); no user info (it would end up in logs), query or
    fragment. The URL is returned unchanged.
    """
    if not isinstance(url, str) or not 0 < len(url) <= _MAX_URL or not url.isprintable() \
            or any(c.isspace() for c in url):
        raise RendezvousAddressError("a mailbox URL is a ws:// or wss:// URL without spaces")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise RendezvousAddressError("the mailbox URL does not parse (bad port?)") from None
    if parts.scheme not in ("ws", "wss"):
        raise RendezvousAddressError("a mailbox URL starts with ws:// or wss://")
    if not parts.hostname:
        raise RendezvousAddressError("the mailbox URL has no host")
    if parts.username is not None or parts.password is not None:
        raise RendezvousAddressError("the mailbox URL must not carry user information")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise RendezvousAddressError("the mailbox URL must not have a query or fragment")
    if port == 0:
        raise RendezvousAddressError("the mailbox URL's port must not be 0")
    return url
