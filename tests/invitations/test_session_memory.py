"""What guests can make a host buffer: each session at most its protocol's limit.

A code holder may open many sessions and, in each, start a message and never
finish it. The host reads guest messages with ``MAX_GUEST_MESSAGE`` as the
secure stream's limit (not the stream's 1 MiB), so a session holds at most
that plus two Noise messages of read-ahead and partial frame
(:data:`PER_SESSION_BOUND`); sessions are capped per source address. Measured
in-process with tracemalloc against a real host node over loopback TCP.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Final

import pytest
import trio

from p2pinvite.crypto.noise import MAX_MESSAGE
from p2pinvite.errors import ConnectionClosed
from p2pinvite.halo.keys import DeviceKeys
from p2pinvite.invitations import protocol as p
from p2pinvite.invitations.codes import LinkCode
from p2pinvite.net.manager import MAX_SESSIONS_PER_SOURCE, encode_preamble
from p2pinvite.net.secure import SecureStream, open_secure_stream
from p2pinvite.net.topics import Topic
from p2pinvite.wire import frame

from .pairing_nodes import open_node

#: The stated bound per session: the message limit, one read past the need and
#: one partial frame (docs/PROTOCOL.md Part 7 §2), plus 16 KiB for the session's
#: own objects (sockets, machine, cipher states, task).
PER_SESSION_BOUND: Final = p.MAX_GUEST_MESSAGE + 2 * (2 + MAX_MESSAGE) + 16 * 1024
SESSIONS: Final = MAX_SESSIONS_PER_SOURCE  # all from 127.0.0.1: the per-source cap


async def _session(address: tuple[str, int], topic: Topic) -> SecureStream:
    """A code holder with fresh keys: TCP, preamble, Noise XXpsk0, the host's accept."""
    keys = DeviceKeys.generate()
    tcp = await trio.open_tcp_stream(*address)
    preamble = encode_preamble(topic.id)
    await tcp.send_all(frame(preamble))
    s = await open_secure_stream(tcp, initiator=True, static_key=keys.static_private,
                                 psk=topic.psk, prologue=preamble,
                                 payload=keys.binding_proof(), timeout=5)
    assert await s.receive_message() == b""  # the accept
    return s


async def _drain(s: SecureStream) -> None:
    """Read until the host closes the session (a challenge may come first)."""
    while True:
        await s.receive_message()


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize("declared", [p.MAX_GUEST_MESSAGE, 1 << 20],
                         ids=["largest-allowed", "one-MiB"])
async def test_sessions_holding_a_maximal_partial_message_stay_within_the_bound(
        tmp_path: Path, declared: int) -> None:
    with trio.fail_after(60):
        async with open_node(tmp_path / "host", name="Alice") as host:
            created = await host.manager.create(kind="device", auth="none", max_uses=None)
            topic = Topic.from_secret(LinkCode.parse(created.code).secret)
            tracemalloc.start()
            try:
                before = _traced()
                sessions = [await _session(host.address, topic) for _ in range(SESSIONS)]
                # Each announces a message of *declared* bytes and sends all but one.
                for s in sessions:
                    try:
                        await s.send_all(declared.to_bytes(4, "big") + bytes(declared - 1))
                    except ConnectionClosed:
                        assert declared > p.MAX_GUEST_MESSAGE  # dropped while we sent
                await trio.sleep(1.0)  # the host reads what it is willing to hold
                held = _traced() - before
            finally:
                tracemalloc.stop()
            if declared > p.MAX_GUEST_MESSAGE:
                # Refused from its length alone: every such session is dropped at once.
                for s in sessions:
                    with pytest.raises(ConnectionClosed):
                        await _drain(s)
            assert held <= SESSIONS * PER_SESSION_BOUND, (
                f"{held} bytes for {SESSIONS} sessions: "
                f"{held // SESSIONS} per session, bound {PER_SESSION_BOUND}")
            for s in sessions:
                await s.aclose()


async def test_a_guest_that_sends_no_request_is_dropped_soon(tmp_path: Path) -> None:
    # The first request has a short deadline (REQUEST_TIMEOUT), not a whole step.
    from p2pinvite.invitations.handlers import REQUEST_TIMEOUT
    async with open_node(tmp_path / "host", name="Alice", step_timeout=3600) as host:
        created = await host.manager.create(kind="device", auth="none")
        topic = Topic.from_secret(LinkCode.parse(created.code).secret)
        s = await _session(host.address, topic)
        start = trio.current_time()
        with trio.fail_after(REQUEST_TIMEOUT + 10):
            assert p.decode_message(await s.receive_message()).T == "challenge"
            with pytest.raises(ConnectionClosed):
                await _drain(s)
        assert trio.current_time() - start >= REQUEST_TIMEOUT - 0.5
        await s.aclose()
