"""Secure-stream transport frames: what a peer sends after the handshake.

Proves: whatever ciphertext arrives (valid frames of real application
messages, then flipped, cut, spliced, reordered, duplicated; random bytes;
huge length prefixes), in whatever chunks, :meth:`SecureStream.receive_message`
and :meth:`SecureStream.receive_some` return plaintext the peer really sent or
raise a :class:`~p2pinvite.errors.P2PInviteError` (``BadTag``,
``DecodeError``, ``FrameTooLarge``, ``ConnectionClosed``); never a bare error,
and never a message the peer did not send.
"""

from __future__ import annotations

from collections import deque

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.crypto.noise import HandshakeState
from p2pinvite.errors import P2PInviteError
from p2pinvite.net.secure import SecureStream
from p2pinvite.wire import frame

from .strategies import MEDIUM, byte_mutations
from .test_fuzz_noise import TRANSCRIPTS

#: Each target runs for seconds at CI size (thousands of examples).
pytestmark = pytest.mark.slow


class _Wire(trio.abc.Stream):
    """A transport that plays back fixed bytes in fixed chunks, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = deque(c for c in chunks if c)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft()
        if max_bytes is not None and len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _pair() -> tuple[HandshakeState, HandshakeState]:
    """Both sides of the XXpsk0 transcript, completed."""
    t = TRANSCRIPTS[0]
    i, r = t.side(True), t.side(False)
    r.read_message(i.write_message())
    i.read_message(r.write_message(b"responder payload"))
    r.read_message(i.write_message(b"initiator payload"))
    return i, r


def _messages() -> tuple[list[bytes], list[bytes]]:
    """Application messages and the wire bytes (one Noise frame each) the initiator sends."""
    i, _ = _pair()
    send = i.transport()
    msgs = [b"", b"hello", bytes(300), b"x" * 70000]
    frames: list[bytes] = []
    for m in msgs:
        plain = len(m).to_bytes(4, "big") + m
        for k in range(0, len(plain), 65519):  # as SecureStream cuts a long send
            frames.append(frame(send.encrypt(plain[k : k + 65519])))
    frames.append(frame(send.encrypt(b"")))  # the authenticated end of stream
    return msgs, frames


MSGS, FRAMES = _messages()


@st.composite
def _wire(draw: st.DrawFn) -> bytes:
    frames = list(FRAMES)
    how = draw(st.sampled_from(["bytes", "order", "random", "length"]))
    if how == "order":  # a reordered, dropped or replayed frame: the nonce check refuses it
        i = draw(st.integers(0, len(frames) - 1))
        j = draw(st.integers(0, len(frames) - 1))
        frames.insert(j, frames.pop(i) if draw(st.booleans()) else frames[i])
        return b"".join(frames)
    if how == "random":
        return draw(st.binary(max_size=500))
    if how == "length":  # a frame header promising more than any frame
        k = draw(st.integers(0, len(frames)))
        return b"".join(frames[:k]) + draw(st.binary(min_size=2, max_size=4)) + b"\x00" * 8
    # Byte edits inside the small frames (the large one would make each run slow).
    k = draw(st.integers(0, 2))
    return b"".join(frames[:k]) + draw(byte_mutations(b"".join(frames[k:3]))) + b"".join(
        frames[3:])


async def _drain(wire: bytes, cuts: list[int], whole: bool) -> list[bytes]:
    # Odd chunking of the first 2 KiB (where the frame boundaries are); the
    # rest at once, or byte-by-byte reads would make each run slow.
    chunks, pos, c = [], 0, 0
    while pos < min(len(wire), 2048):
        chunks.append(wire[pos : pos + cuts[c % len(cuts)]])
        pos += cuts[c % len(cuts)]
        c += 1
    chunks.append(wire[pos:])
    _, r = _pair()
    stream = SecureStream(_Wire(chunks), r, remote_payload=b"", protocol_name="test")
    got: list[bytes] = []
    try:
        while True:
            if whole:
                got.append(await stream.receive_message(1 << 17))
            else:
                data = await stream.receive_some()
                if not data:
                    break
                got.append(data)
    except P2PInviteError:
        pass
    return got


@settings(max_examples=MEDIUM)
@given(_wire(), st.lists(st.sampled_from([1, 2, 7, 100, 4096, 1 << 20]), min_size=1,
                         max_size=6), st.booleans())
def test_receive_gives_sent_plaintext_or_typed_errors(
        wire: bytes, cuts: list[int], whole: bool) -> None:
    got = trio.run(_drain, wire, cuts, whole)
    sent = b"".join(len(m).to_bytes(4, "big") + m for m in MSGS)
    if whole:
        # Messages come out whole and in order: a prefix of what was sent.
        assert got == MSGS[: len(got)]
    else:
        assert sent.startswith(b"".join(got))
