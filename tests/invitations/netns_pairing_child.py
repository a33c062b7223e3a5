"""One side of a short-code pairing, run inside a network namespace.

``host HOME IFACE ADDR``: create an identity and a short-code device
invitation, print ``{"code": ...}``, wait for the admission, print
``{"devices": [...]}``. ``guest HOME IFACE ADDR CODE``: accept the code over
mDNS, print ``{"state": ..., "reason": ..., "devices": [...]}``.
JSON lines on stdout; mDNS only on IFACE (inside the namespace).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.invitations.pairing_nodes import open_node


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def host(home: Path, iface: str, addr: str) -> None:
    async with open_node(home, name="Alice", mdns_interfaces=[iface], listen=(addr, 0),
                         clock=lambda: 1_700_000_000.0 + trio.current_time()) as node:
        feed = node.manager.subscribe()
        created = await node.manager.create(kind="device", auth="short")
        emit(code=created.code)
        with trio.fail_after(60):
            async for ev in feed:
                if ev.type == "admitted":
                    break
        emit(devices=[d.hex() for d in node.identity.devices()])
        await trio.sleep(1)  # let the guest read its answer before we go


async def guest(home: Path, iface: str, addr: str, code: str) -> None:
    async with open_node(home, mdns_interfaces=[iface], listen=(addr, 0),
                         connect_timeout=30) as node:
        states = []
        async for ev in node.manager.accept(code):
            states.append(ev.state.value)
            last = ev
        devices = [d.hex() for d in node.identity.devices()] if node.identity.has_identity else []
        emit(state=last.state.value, reason=last.reason, states=states, devices=devices)


if __name__ == "__main__":
    role, home, iface, addr, *rest = sys.argv[1:]
    if role == "host":
        trio.run(host, Path(home), iface, addr)
    else:
        trio.run(guest, Path(home), iface, addr, rest[0])
