"""The hello of a member connection: who I am in this log, and where I listen (sans-IO).

A member connection is a Noise session on a log's swarm topic (only holders of
its swarm secret get that far). Each side's Noise payload is its device
binding proof, so each knows the other's device key. Then both send one
``hello`` at once (docs/PROTOCOL.md Part 12 §3)::

    {"t": "hello", "v": 1, "log": <32-byte identity or space key>,
     "identity": <32 bytes>, "chain": [<credential bytes>...],   # space logs only
     "addrs": [[host, port], ...]}                                 # our listeners, <= 8

and checks the other's: for an identity log the device must be one of the
identity's current devices; for a space log, ``chain`` must prove the device
belongs to ``identity`` and ``identity`` must be a current member. The
checks need the log's state, so they are the swarm service's; this module
only encodes and decodes, strictly.
``addrs`` are the peer's own listening addresses, recorded to dial it next
time (they are candidates: whoever answers there must prove itself again).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import DecodeError, RemoteProtocolError
from ..wire import expect_bytes, expect_int, expect_map, expect_str, pack, unpack

__all__ = [
    "HELLO_VERSION",
    "MAX_ADDRS",
    "MAX_HELLO",
    "Hello",
    "NotAMember",
    "decode_hello",
    "encode_hello",
]

HELLO_VERSION: Final = 1
#: Most listening addresses a hello carries.
MAX_ADDRS: Final = 8
#: Largest hello (a chain of 8 credentials of at most 4 KiB each, and change).
MAX_HELLO: Final = 40 * 1024
_MAX_CHAIN: Final = 8
_MAX_CREDENTIAL: Final = 4096
_KEY: Final = 32

Address = tuple[str, int]


class NotAMember(RemoteProtocolError):
    """The peer's device is not a current member device of the log (it is dropped)."""


@dataclass(frozen=True, slots=True)
class Hello:
    """A decoded hello. ``identity``/``chain`` are set for space logs only."""

    log: bytes
    addrs: tuple[Address, ...] = ()
    identity: bytes | None = None
    chain: tuple[bytes, ...] = ()


def _address(item: Any) -> Address:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], int) and not isinstance(item[1], bool)):
        raise DecodeError("hello: an address is [host, port]")
    host, port = item
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DecodeError("hello: an address host is an IP address") from None
    if ip.is_unspecified or ip.is_multicast or not 1 <= port <= 65535:
        raise DecodeError("hello: an address must be a unicast IP and a port")
    return str(ip), port


def encode_hello(hello: Hello) -> bytes:
    """The canonical encoding of *hello*."""
    m: dict[str, Any] = {"t": "hello", "v": HELLO_VERSION, "log": hello.log,
                         "addrs": [[h, p] for h, p in hello.addrs[:MAX_ADDRS]]}
    if hello.identity is not None:
        m["identity"] = hello.identity
        m["chain"] = list(hello.chain)
    return pack(m)


def decode_hello(data: bytes) -> Hello:
    """Decode a hello strictly (``DecodeError``): exact fields, sizes and types."""
    if len(data) > MAX_HELLO:
        raise DecodeError(f"hello of {len(data)} bytes exceeds {MAX_HELLO}")
    m: Mapping[str, Any] = expect_map(unpack(data, max_size=MAX_HELLO, max_items=64), "hello")
    if expect_str(m, "t", max_len=16) != "hello":
        raise DecodeError("expected a hello")
    if expect_int(m, "v") != HELLO_VERSION:
        raise DecodeError("unsupported hello version")
    keys = set(m)
    if keys not in ({"t", "v", "log", "addrs"}, {"t", "v", "log", "addrs", "identity", "chain"}):
        raise DecodeError("hello has missing or unknown fields")
    addrs = m["addrs"]
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS:
        raise DecodeError(f"hello: addrs is a list of at most {MAX_ADDRS}")
    identity: bytes | None = None
    chain: Sequence[bytes] = ()
    if "identity" in m:
        identity = expect_bytes(m, "identity", size=_KEY)
        raw = m["chain"]
        if not (isinstance(raw, list) and 1 <= len(raw) <= _MAX_CHAIN
                and all(isinstance(c, bytes) and 0 < len(c) <= _MAX_CREDENTIAL for c in raw)):
            raise DecodeError(f"hello: chain is 1..{_MAX_CHAIN} credentials")
        chain = raw
    return Hello(expect_bytes(m, "log", size=_KEY), tuple(_address(a) for a in addrs),
                 identity, tuple(chain))
