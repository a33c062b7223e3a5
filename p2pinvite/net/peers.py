"""What discovery reports about peers: small values with no zeroconf in sight.

Kept apart from discovery.py so that code handling these events (the network
manager) does not load python-zeroconf when mDNS is off: that import alone
costs several megabytes of resident memory in an idle daemon.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PeerEvent", "PeerFound", "PeerLost"]


@dataclass(frozen=True, slots=True)
class PeerFound:
    """A service instance advertising the browsed topic, with its TCP addresses."""

    instance: str
    addresses: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class PeerLost:
    """A previously found instance withdrew (goodbye) or expired."""

    instance: str


PeerEvent = PeerFound | PeerLost
