"""Where the member devices of a log were last seen: dial candidates for the next start.

One small file per log, ``<home>/swarm/<log key hex>.peers`` (0600), written
atomically when it changes: the canonical msgpack map
``{"v": 1, "peers": [[device key, [[host, port], ...], last seen (unix s)], ...]}``,
most recently seen first, at most :data:`MAX_PEERS` devices of at most
:data:`~.hello.MAX_ADDRS` addresses each. The addresses are what each peer
said it listens on (its hello); they are only candidates: whoever answers
there proves itself again. A damaged file is ignored (a warning; the swarm
still has mDNS) and replaced at the next change.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any, Final

from ..errors import DecodeError, P2PInviteError
from ..fsutil import atomic_write, read_private
from ..wire import expect_int, expect_map, pack, unpack
from .hello import MAX_ADDRS, Address

__all__ = ["MAX_PEERS", "KnownPeers"]

log = logging.getLogger("p2pinvite.swarm")

#: Most devices remembered per log.
MAX_PEERS: Final = 64
_VERSION: Final = 1


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
        self._peers: dict[bytes, tuple[tuple[Address, ...], float]] = {}
        if path.exists():
            try:
                self._load(read_private(path, max_size=256 * 1024))
            except (P2PInviteError, OSError) as exc:
                log.warning("%s: ignored (%s); mDNS still finds the members", path.name, exc)
                self._peers.clear()

    def _load(self, data: bytes) -> None:
        m = expect_map(unpack(data, max_size=256 * 1024), "known peers")
        if expect_int(m, "v") != _VERSION or not isinstance(m.get("peers"), list):
            raise DecodeError("unknown known-peers format")
        for item in m["peers"][:MAX_PEERS]:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], bytes)
                    and len(item[0]) == 32 and isinstance(item[1], list)
                    and isinstance(item[2], int | float)):
                raise DecodeError("a known peer is [device, addresses, time]")
            addrs = tuple(a for a in map(_address, item[1][:MAX_ADDRS]) if a is not None)
            self._peers[item[0]] = (addrs, float(item[2]))

    def addresses(self, *, exclude: bytes | None = None) -> list[Address]:
        """Every remembered address, most recently seen device first (deduplicated)."""
        out: dict[Address, None] = {}
        for device, (addrs, _) in sorted(self._peers.items(), key=lambda kv: -kv[1][1]):
            if device != exclude:
                out.update(dict.fromkeys(addrs))
        return list(out)

    def seen(self, device: bytes, addrs: tuple[Address, ...], when: float) -> bool:
        """Record that *device* listens on *addrs*; write the file if that is news."""
        old = self._peers.get(device)
        self._peers[device] = (addrs, when)
        if len(self._peers) > MAX_PEERS:
            oldest = min(self._peers, key=lambda d: self._peers[d][1])
            del self._peers[oldest]
        if old is not None and old[0] == addrs:
            return False  # only the time changed: not worth a write
        self._write()
        return True

    def is_news(self, device: bytes, addrs: tuple[Address, ...]) -> bool:
        """Whether :meth:`seen` with these addresses would write the file."""
        old = self._peers.get(device)
        return old is None or old[0] != addrs

    def forget(self, device: bytes) -> None:
        """Drop *device* (it was removed from the log)."""
        if self._peers.pop(device, None) is not None:
            self._write()

    def _write(self) -> None:
        items: list[Any] = [[d, [list(a) for a in addrs], when]
                            for d, (addrs, when) in sorted(self._peers.items(),
                                                           key=lambda kv: -kv[1][1])]
        atomic_write(self._path, pack({"v": _VERSION, "peers": items}))
