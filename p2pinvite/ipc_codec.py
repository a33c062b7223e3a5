"""The IPC message layer shared by the daemon and its clients (sans-IO, no trio).

The daemon's Unix socket carries frames of a 4-byte big-endian length and a
msgpack map (see docs/PROTOCOL.md Part 10). This module turns those maps into
small typed messages and back, and holds the constants both sides must agree
on. It imports nothing heavier than msgpack so that the blocking client and
the CLI start quickly.

Messages::

    request   {"id": int, "method": str, "params": map}
    result    {"id": int, "result": any}
    error     {"id": int | nil, "error": {"code": str, "message": str, ...}}
    event     {"id": int, "event": map}        (streaming methods only)

A streaming method answers with any number of events followed by exactly one
result or error for the same id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import wire
from .errors import DecodeError

__all__ = [
    "ERROR_CODES",
    "HEADER",
    "MAX_ID",
    "MAX_IPC_FRAME",
    "MAX_IPC_REPLY",
    "MAX_METHOD_LEN",
    "SOCKET_NAME",
    "BadRequest",
    "ErrorReply",
    "Event",
    "Reply",
    "Request",
    "Result",
    "decode_reply",
    "decode_request",
    "encode",
]

#: Bytes of the length prefix on the IPC socket.
HEADER: Final = 4
#: Largest request frame the daemon accepts (1 MiB).
MAX_IPC_FRAME: Final = 1 << 20
#: Largest reply or event frame a client accepts (64 MiB). Larger than a request:
#: a space's member list grows with the space (about 300 bytes a member), and the
#: client has checked that the daemon is its own user's (SO_PEERCRED).
MAX_IPC_REPLY: Final = 64 << 20
#: Most items per container in a reply (a request keeps the codec's 4096).
MAX_REPLY_ITEMS: Final = 1 << 20
#: File name of the daemon's socket inside its home.
SOCKET_NAME: Final = "daemon.sock"
#: Request ids are non-negative and fit a signed 64-bit integer.
MAX_ID: Final = 2**63 - 1
MAX_METHOD_LEN: Final = 64

#: The closed set of error codes a daemon may send (docs/PROTOCOL.md Part 10).
ERROR_CODES: Final = frozenset(
    {
        "bad_request",  # malformed frame, request or params
        "unknown_method",  # no such method in this daemon
        "permission_denied",  # peer uid is not the daemon's uid
        "busy",  # too many connections or in-flight requests
        "not_found",  # no such space / invitation / ...
        "ambiguous",  # a name matches more than one space
        "no_identity",  # the method needs an identity; none exists yet
        "already_exists",  # e.g. identity.create when one exists
        "invalid_code",  # text that is not a valid invitation code
        "refused",  # the invitation cannot be used; "reason" says why
        "wrong_pin",  # PIN rejected; "attempts_left" says how many remain
        "timeout",  # a network step ran out of time
        "unreachable",  # the inviting host could not be reached
        "storage",  # state on disk is damaged or unreadable
        "internal",  # a bug in the daemon; see its log
    }
)


class BadRequest(DecodeError):
    """A frame that is not a valid request; ``request_id`` is set when it was readable."""

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    """A call from a client: ``method`` with ``params``, answered under ``id``."""

    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Result:
    """The successful, final answer to request ``id``."""

    id: int
    value: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The failed, final answer to request ``id`` (``None`` when the id was unreadable).

    ``details`` holds the extra fields of the error map (``reason``,
    ``attempts_left``, ...), never ``code`` or ``message``.
    """

    id: int | None
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """One intermediate message of a streaming request ``id``."""

    id: int
    event: dict[str, Any]


Reply = Result | ErrorReply | Event


def encode(msg: Request | Reply) -> bytes:
    """Encode *msg* as one complete frame (length prefix included)."""
    body: dict[str, Any]
    match msg:
        case Request(id=i, method=m, params=p):
            body = {"id": i, "method": m, "params": p}
        case Result(id=i, value=v):
            body = {"id": i, "result": v}
        case Event(id=i, event=e):
            body = {"id": i, "event": e}
        case ErrorReply(id=i, code=c, message=m, details=d):
            body = {"id": i, "error": {**d, "code": c, "message": m}}
    return wire.frame(wire.pack(body), header=HEADER)


def _read_id(m: Mapping[str, Any]) -> int | None:
    v = m.get("id")
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID:
        return v
    return None


def decode_request(payload: bytes) -> Request:
    """Decode one frame payload sent by a client; raise :class:`BadRequest` if invalid."""
    try:
        m = wire.expect_map(wire.unpack(payload, max_size=MAX_IPC_FRAME), "request")
    except DecodeError as exc:
        raise BadRequest(str(exc)) from None
    rid = _read_id(m)
    if rid is None:
        raise BadRequest("request 'id' must be an integer in [0, 2**63-1]")
    method = m.get("method")
    if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_LEN:
        raise BadRequest("request 'method' must be a non-empty string", request_id=rid)
    params = m.get("params", {})
    if not isinstance(params, dict):
        raise BadRequest("request 'params' must be a map", request_id=rid)
    extra = set(m) - {"id", "method", "params"}
    if extra:
        raise BadRequest(f"unknown request fields: {sorted(extra)}", request_id=rid)
    return Request(rid, method, params)


def decode_reply(payload: bytes) -> Reply:
    """Decode one frame payload sent by the daemon; raise :class:`DecodeError` if invalid."""
    m = wire.expect_map(wire.unpack(payload, max_size=MAX_IPC_REPLY,
                                    max_items=MAX_REPLY_ITEMS), "reply")
    rid = _read_id(m)
    if "error" in m:
        err = wire.expect_map(m["error"], "error")
        code = wire.expect_str(err, "code", max_len=64)
        message = wire.expect_str(err, "message", max_len=4096)
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
        if m.get("id") is not None and rid is None:
            raise DecodeError("reply 'id' must be an integer or nil")
        return ErrorReply(rid, code, message, details)
    if rid is None:
        raise DecodeError("reply 'id' must be an integer")
    if "result" in m:
        return Result(rid, m["result"])
    if "event" in m:
        return Event(rid, wire.expect_map(m["event"], "event"))
    raise DecodeError("reply has none of 'result', 'error', 'event'")
