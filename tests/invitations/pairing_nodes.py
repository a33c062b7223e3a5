"""A whole p2pinvite node (keys, identity, spaces, store, network, manager) for tests.

Each node lives in its own home directory and listens on loopback, port 0.
Shared by test_pairing.py, test_pairing_netns.py and bench/bench_pairing.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from p2pinvite.halo.identity import IdentityService
from p2pinvite.halo.spaces import SpaceService
from p2pinvite.halo.swarm_secrets import SwarmSecrets
from p2pinvite.invitations.handlers import AcceptEvent
from p2pinvite.invitations.manager import InvitationManager
from p2pinvite.invitations.store import InvitationStore
from p2pinvite.net.manager import NetworkManager, open_network_manager


@dataclass
class Node:
    home: Path
    identity: IdentityService
    spaces: SpaceService
    store: InvitationStore
    secrets: SwarmSecrets
    network: NetworkManager
    manager: InvitationManager

    @property
    def address(self) -> tuple[str, int]:
        return self.network.addresses[0]

    async def accept(self, code: str, **kw: object) -> list[AcceptEvent]:
        """Run an accept to its end; return every event."""
        return [ev async for ev in self.manager.accept(code, **kw)]  # type: ignore[arg-type]


@asynccontextmanager
async def open_node(home: Path, *, name: str | None = None,
                    clock: Callable[[], float] | None = None,
                    mdns_interfaces: Sequence[str] | None = None,
                    listen: tuple[str, int] = ("127.0.0.1", 0),
                    step_timeout: float = 10.0, connect_timeout: float = 5.0,
                    ) -> AsyncIterator[Node]:
    """A running node in *home*; with *name*, create its identity if it has none."""
    identity = IdentityService.open(home)
    if name is not None and not identity.has_identity:
        identity.create_identity(name)
    spaces = SpaceService.open(identity)
    store = InvitationStore.open(home / "invitations")
    secrets = SwarmSecrets.open(home)
    keys = identity.device
    try:
        async with open_network_manager(static_key=keys.static_private,
                                        payload=keys.binding_proof(), listen=listen,
                                        mdns_interfaces=mdns_interfaces) as network:
            manager = InvitationManager(
                home, keys, identity, spaces, network, store, secrets=secrets,
                clock=clock or (lambda: 1_700_000_000.0 + trio.current_time()),
                mdns=mdns_interfaces is not None, step_timeout=step_timeout,
                connect_timeout=connect_timeout)
            async with manager:
                yield Node(home, identity, spaces, store, secrets, network, manager)
    finally:
        spaces.close()
        identity.close()
