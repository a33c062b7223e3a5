"""A short code's invitation serves a bounded number of handshakes at once.

Short codes run Noise XX without a PSK, so any device on the LAN can finish
the channel handshake and then idle until the step timeout. Each such session
costs the host memory; the cap keeps a crowd of idle strangers (each with its
own keys, so the network manager's one-connection-per-peer rule does not
help) from exhausting it, and a session that ends frees its place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pinvite.errors import ConnectionClosed
from p2pinvite.halo.keys import DeviceKeys
from p2pinvite.invitations.codes import ShortCode
from p2pinvite.invitations.handlers import MAX_SESSIONS_SHORT
from p2pinvite.net.manager import encode_preamble
from p2pinvite.net.secure import SecureStream, open_secure_stream
from p2pinvite.net.topics import Topic
from p2pinvite.wire import frame, pack, unpack

from .pairing_nodes import open_node


async def _dial(address: tuple[str, int], topic: Topic) -> SecureStream:
    """A stranger with fresh device keys: TCP, preamble, Noise XX, the host's accept."""
    keys = DeviceKeys.generate()
    tcp = await trio.open_tcp_stream(*address)
    preamble = encode_preamble(topic.id)
    await tcp.send_all(frame(preamble))
    s = await open_secure_stream(tcp, initiator=True, static_key=keys.static_private,
                                 psk=topic.psk, prologue=preamble,
                                 payload=keys.binding_proof(), timeout=5)
    await s.receive_message()  # the network manager's accept
    return s


async def test_idle_strangers_cannot_hold_more_than_the_cap(tmp_path: Path) -> None:
    # A step timeout far beyond the test's deadline: only the cap can end the
    # extra session in time, so without the cap this test fails.
    with trio.fail_after(30):
        async with open_node(tmp_path / "host", name="Alice", step_timeout=3600) as host:
            space = host.spaces.create_space("Notes")
            created = await host.manager.create(kind="space", space_id=space, role="reader",
                                                auth="short")
            topic = Topic.for_discriminator(ShortCode.parse(created.code).discriminator)

            idle = [await _dial(host.address, topic) for _ in range(MAX_SESSIONS_SHORT)]
            # One more is accepted by the network layer, then dropped unheard.
            extra = await _dial(host.address, topic)
            with pytest.raises(ConnectionClosed):
                await extra.receive_message()

            # Sessions that end free their place: a stranger is served again.
            for s in idle:
                await s.aclose()
            while True:
                fresh = await _dial(host.address, topic)
                await fresh.send_message(pack({"t": "request", "v": 1, "kind": "space"}))
                try:
                    reply = unpack(await fresh.receive_message())
                    break
                except ConnectionClosed:
                    await trio.sleep(0.05)  # the host has not seen every close yet
            assert reply["t"] == "challenge"
            assert reply["method"] == "short"
            await fresh.aclose()
