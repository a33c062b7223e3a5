"""The member devices of a log this device has met: where they listen, and their keys.

One small file per log, ``<home>/swarm/<log key hex>.peers`` (0600), written
atomically when it changes: the canonical msgpack map
``{"v": 2, "peers": [[device key, [[host, port], ...], last seen (unix s),
static key, member], ...]}``, most recently seen first, at most
:data:`MAX_PEERS` devices of at most :data:`~.hello.MAX_ADDRS` addresses
each. The addresses are what each peer said it listens on (its hello); they
are only candidates: whoever answers there proves itself again. The static
key (its Noise handshake) and member (the identity its hello proved) are who
a rotated swarm secret is sealed to (halo/swarm_keys.py). A damaged file is
ignored (a warning; the swarm still has mDNS) and replaced at the next
change; version 1 rows (no keys) are read too.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import DecodeError, P2PInviteError
from ..fsutil import atomic_write, read_private
from ..wire import expect_int, expect_map, pack, unpack
from .hello import MAX_ADDRS, Address

__all__ = ["MAX_PEERS", "KnownPeer", "KnownPeers"]

log = logging.getLogger("p2pinvite.swarm")

#: Most devices remembered per log.
MAX_PEERS: Final = 64
_VERSION: Final = 2


@dataclass(frozen=True, slots=True)
class KnownPeer:
    """One remembered member device (``static``/``member`` None if never recorded)."""

    device: bytes
    addrs: tuple[Address, ...]
    when: float
    static: bytes | None = None
    member: bytes | None = None


def _key(value: Any) -> bytes | None:
    return value if isinstance(value, bytes) and len(value) == 32 else None


def _address(item: Any) -> Address | None:
    """``[ip, port]`` as an address, or None if it is anything else (skipped)."""
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], int) and not isinstance(item[1], bool)
            and 1 <= item[1] <= 65535):
        return None
    try:  # an IP literal only: a name would be resolved (DNS) before each dial
        return str(ipaddress.ip_address(item[0])), item[1]
    except ValueError:
        return None


class KnownPeers:
    """The last known addresses of a log's member devices (see the module notes)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._peers: dict[bytes, KnownPeer] = {}
        if path.exists():
            try:
                self._load(read_private(path, max_size=256 * 1024))
            except (P2PInviteError, OSError) as exc:
                log.warning("%s: ignored (%s); mDNS still finds the members", path.name, exc)
                self._peers.clear()

    def _load(self, data: bytes) -> None:
        m = expect_map(unpack(data, max_size=256 * 1024), "known peers")
        version = expect_int(m, "v")
        if version not in (1, 2) or not isinstance(m.get("peers"), list):
            raise DecodeError("unknown known-peers format")
        size = 3 if version == 1 else 5
        for item in m["peers"][:MAX_PEERS]:
            if not (isinstance(item, list) and len(item) == size and isinstance(item[0], bytes)
                    and len(item[0]) == 32 and isinstance(item[1], list)
                    and isinstance(item[2], int | float)):
                raise DecodeError("a known peer is [device, addresses, time, static, member]")
            addrs = tuple(a for a in map(_address, item[1][:MAX_ADDRS]) if a is not None)
            static, member = (None, None) if size == 3 else (_key(item[3]), _key(item[4]))
            self._peers[item[0]] = KnownPeer(item[0], addrs, float(item[2]), static, member)

    def _by_recency(self) -> list[KnownPeer]:
        return sorted(self._peers.values(), key=lambda p: -p.when)

    def addresses(self, *, exclude: bytes | None = None) -> list[Address]:
        """Every remembered address, most recently seen device first (deduplicated)."""
        out: dict[Address, None] = {}
        for peer in self._by_recency():
            if peer.device != exclude:
                out.update(dict.fromkeys(peer.addrs))
        return list(out)

    def peers(self) -> list[KnownPeer]:
        """Every remembered device, most recently seen first."""
        return self._by_recency()

    def seen(self, device: bytes, addrs: tuple[Address, ...], when: float, *,
             static: bytes | None = None, member: bytes | None = None) -> bool:
        """Record that *device* (Noise *static* key, of *member*) listens on *addrs*.

        Writes the file if that is news (not when only the time changed).
        """
        news = self.is_news(device, addrs, static=static, member=member)
        old = self._peers.get(device)
        if old is not None:
            static = static or old.static
            member = member or old.member
        self._peers[device] = KnownPeer(device, addrs, when, static, member)
        if len(self._peers) > MAX_PEERS:
            oldest = min(self._peers.values(), key=lambda p: p.when)
            del self._peers[oldest.device]
        if news:
            self._write()
        return news

    def is_news(self, device: bytes, addrs: tuple[Address, ...], *,
                static: bytes | None = None, member: bytes | None = None) -> bool:
        """Whether :meth:`seen` with these values would write the file."""
        old = self._peers.get(device)
        return old is None or old.addrs != addrs or (
            static is not None and old.static != static) or (
            member is not None and old.member != member)

    def forget(self, device: bytes) -> None:
        """Drop *device* (it was removed from the log)."""
        if self._peers.pop(device, None) is not None:
            self._write()

    def _write(self) -> None:
        items: list[Any] = [[p.device, [list(a) for a in p.addrs], p.when, p.static, p.member]
                            for p in self._by_recency()]
        atomic_write(self._path, pack({"v": _VERSION, "peers": items}))
