"""A connection through a magic-wormhole transit relay (docs/RENDEZVOUS.md §5).

The relay (magic-wormhole-transit-relay) pairs two TCP connections that
present the same token with different sides, then copies bytes between them.
Each connection opens with one line::

    please relay <64 hex: the token> for side <16 of [A-Za-z0-9_]: the side>\\n

and the relay answers, once the partner has arrived::

    ok\\n               paired: every later byte is the partner's
    bad handshake\\n    the line did not parse; the relay hangs up
    impatient\\n        we sent bytes before "ok"; the relay hangs up

or hangs up without a word (our connection was redundant: another of our
side was paired first). It never times a lonely connection out, so the
*timeout* here is what ends a wait for a partner that does not come.

The answer is read one byte at a time: the partner may speak the moment we
are paired, and its first bytes must stay in the stream we return. What runs
over the stream (Noise, then CPace or the member hello) is the caller's;
the relay sees only ciphertext. Relayed connections cannot be half-closed.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

import trio

from ..errors import (
    LocalProtocolError,
    RelayRefused,
    RendezvousAddressError,
    RendezvousProtocolError,
    RendezvousTimeout,
    RendezvousUnreachable,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_ANSWER",
    "TOKEN_SIZE",
    "format_relay_address",
    "parse_relay_address",
    "relay_connect",
    "relay_line",
]

#: Seconds to connect and to wait for the partner, by default.
DEFAULT_TIMEOUT: Final = 30.0
#: Longest answer line we read (``bad handshake\n`` is 14 bytes).
MAX_ANSWER: Final = 32
TOKEN_SIZE: Final = 32
_SIDE_RE: Final = re.compile(r"[A-Za-z0-9_]{16}")
_HOST_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def relay_line(token: bytes, side: str) -> bytes:
    """The handshake line for *token* (32 bytes) and *side* (16 of ``[A-Za-z0-9_]``)."""
    if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
        raise LocalProtocolError(f"a relay token is {TOKEN_SIZE} bytes")
    if not isinstance(side, str) or not _SIDE_RE.fullmatch(side):
        raise LocalProtocolError("a relay side is 16 characters of [A-Za-z0-9_]")
    return b"please relay " + token.hex().encode("ascii") + b" for side " + \
        side.encode("ascii") + b"\n"


def format_relay_address(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 address (for messages and logs)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_relay_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` as ``(host, port)`` (``RendezvousAddressError``)."""
    if not isinstance(text, str):
        raise RendezvousAddressError("a relay address is HOST:PORT")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or len(port_text) > 5:
        raise RendezvousAddressError("a relay address is HOST:PORT (PORT in 1-65535)")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise RendezvousAddressError("the relay address' [host] is not IPv6") from None
    elif not _HOST_RE.fullmatch(host) or ":" in host:
        raise RendezvousAddressError("the relay host is not a DNS name or IPv4 address "
                                     "(write IPv6 as [ADDR]:PORT)")
    if not 1 <= port <= 65535:
        raise RendezvousAddressError("the relay port is 1-65535")
    return host, port


async def _read_answer(stream: trio.SocketStream) -> bytes:
    """The relay's answer line, without its newline; ``b""`` if it hung up first."""
    line = bytearray()
    while len(line) < MAX_ANSWER:
        byte = await stream.receive_some(1)
        if not byte:
            if line:
                raise ValueError("a partial line")
            return b""
        if byte == b"\n":
            return bytes(line)
        line += byte
    raise ValueError("no newline")


async def relay_connect(host: str, port: int, token: bytes, side: str, *,
                        timeout: float = DEFAULT_TIMEOUT) -> trio.SocketStream:
    """Connect to the relay at *host*:*port* and wait, up to *timeout* seconds, to be paired.

    Returns the stream once the relay said ``ok``: from then on it carries the
    partner's bytes. Raises :class:`~p2pinvite.errors.RendezvousUnreachable`
    (no connection), :class:`~p2pinvite.errors.RendezvousTimeout` (no answer
    or no partner in time), :class:`~p2pinvite.errors.RelayRefused` (the
    relay said no or hung up) and
    :class:`~p2pinvite.errors.RendezvousProtocolError` (an answer we do not
    understand). The token and side are never in an error message.
    """
    line = relay_line(token, side)
    where = format_relay_address(host, port)
    stream: trio.SocketStream | None = None
    try:
        with trio.fail_after(timeout):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise RendezvousUnreachable(f"cannot connect to the relay at {where}: {exc}",
                                            service=where) from None
            try:
                await stream.send_all(line)
                answer = await _read_answer(stream)
            except trio.BrokenResourceError:
                raise RelayRefused(f"the relay at {where} hung up before pairing us",
                                   service=where, answer="") from None
            except ValueError:
                raise RendezvousProtocolError(
                    f"the relay at {where} sent a garbled answer", service=where) from None
    except trio.TooSlowError:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise RendezvousTimeout(
            f"the relay at {where} did not pair us with the other side within {timeout:g} s"
            if stream is not None else f"the relay at {where} did not answer within "
            f"{timeout:g} s", service=where) from None
    except BaseException:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise
    if answer == b"ok":
        return stream
    await trio.aclose_forcefully(stream)
    if answer in (b"", b"bad handshake", b"impatient"):
        said = answer.decode("ascii")
        raise RelayRefused(f"the relay at {where} refused us: {said or 'it hung up'}",
                           service=where, answer=said)
    raise RendezvousProtocolError(f"the relay at {where} sent an unexpected answer",
                                  service=where)
