"""Fuzzing the two decoders that take input from the network (conventions of tests/fuzz/).

Proves:

* :func:`decode_server_message` raises only ``DecodeError`` for any frame: random
  text, random JSON, and the real server's frames edited as text or as JSON;
* :func:`open_candidates` raises only ``RemoteProtocolError`` (``DecodeError``,
  ``BadTag``) for any box, and when a box opens, it was one we sealed;
* :func:`decode_candidates` raises only ``DecodeError``, and what it accepts
  encodes again (canonically) to bytes that decode to the same value.

Boxes sealed under the real key around *mutated plaintexts* get past the AEAD,
so the field checks behind it are fuzzed too, not only the tag check.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import DecodeError, RemoteProtocolError
from p2pinvite.rendezvous.candidates import (
    AD_LABEL,
    Candidates,
    decode_candidates,
    encode_candidates,
    open_candidates,
    seal_candidates,
)
from p2pinvite.rendezvous.mailbox_wire import (
    Ack,
    Closed,
    ErrorReply,
    Ignored,
    Message,
    Pong,
    Welcome,
    decode_server_message,
)
from p2pinvite.rendezvous.names import SIDES, for_invitation

from ..fuzz.strategies import CHEAP, byte_mutations, fuzz_inputs, mutations

pytestmark = pytest.mark.slow

KEY = for_invitation(bytes(range(32))).sealing_key
VALID_CANDIDATES = [
    encode_candidates(Candidates()),
    encode_candidates(Candidates((("192.0.2.1", 1), ("2001:db8::1", 65535)),
                                 ("relay.example.net", 4001))),
    encode_candidates(Candidates(tuple((f"10.0.0.{i}", 4000 + i) for i in range(8)),
                                 ("127.0.0.1", 4001))),
]
BOXES = [seal_candidates(KEY, decode_candidates(p), sender_side=SIDES[0])
         for p in VALID_CANDIDATES]

#: Frames as magic-wormhole-mailbox-server 0.8.0 sends them (captured, then trimmed).
SERVER_FRAMES = [
    '{"welcome": {"your-address": {"port": 55898, "ipv4": "127.0.0.1"}}, "type": "welcome", '
    '"server_tx": 1796523932.7555804}',
    '{"welcome": {"motd": "hi", "current_cli_version": "0.24"}, "type": "welcome"}',
    '{"id": "1", "type": "ack", "server_tx": 1796523932.756933}',
    '{"side": "aaaa", "phase": "p", "body": "abcd", "server_rx": 1796523932.7655532, '
    '"id": "3", "type": "message", "server_tx": 1796523932.7689736}',
    '{"error": "crowded", "orig": {"type": "open", "mailbox": "m1", "id": "2"}, '
    '"type": "error", "server_tx": 1796523933.1734192}',
    '{"type": "closed", "server_tx": 1.0}',
    '{"type": "pong", "pong": 12345, "server_tx": 1.0}',
    '{"type": "nameplates", "nameplates": [{"id": "4"}]}',
]
_DECODED = (Welcome, Ack, Message, Closed, ErrorReply, Pong, Ignored)

_json: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=30), st.sampled_from(["welcome", "message", "ack", "error",
                                                     "pong", "closed", "00ff", "zz"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(
                                ["type", "welcome", "id", "side", "phase", "body", "error",
                                 "orig", "pong", "motd", "x"]), inner, max_size=5)),
    max_leaves=12,
)


@st.composite
def _edited_frame(draw: st.DrawFn) -> str:
    """A real frame with one or two fields replaced, dropped, or added (still JSON)."""
    frame = json.loads(draw(st.sampled_from(SERVER_FRAMES)))
    for _ in range(draw(st.integers(1, 2))):
        key = draw(st.sampled_from([*frame, "type", "body", "welcome", "pong"]))
        if draw(st.integers(0, 3)) == 0:
            frame.pop(key, None)
        else:
            frame[key] = draw(_json)
    return json.dumps(frame)


_frames = st.one_of(
    st.text(max_size=200),
    _json.map(json.dumps),
    _edited_frame(),
    _edited_frame(),
    st.sampled_from(SERVER_FRAMES).flatmap(
        lambda f: byte_mutations(f.encode())).map(lambda b: b.decode("utf-8", "replace")),
    st.binary(max_size=50),
)


@settings(max_examples=CHEAP)
@given(_frames)
def test_server_messages_raise_only_decode_errors(frame: str | bytes) -> None:
    try:
        msg = decode_server_message(frame)
    except DecodeError:
        return
    assert isinstance(msg, _DECODED)


def _seal_raw(plaintext: bytes) -> bytes:
    """*plaintext* sealed as side 0 would, whatever it is (to reach the checks behind the tag)."""
    nonce = bytes(12)
    return nonce + ChaCha20Poly1305(KEY).encrypt(nonce, plaintext,
                                                 AD_LABEL + b"\x00" + SIDES[0].encode())


_boxes = st.one_of(
    st.sampled_from(BOXES).flatmap(byte_mutations),
    st.binary(max_size=200),
    st.sampled_from(VALID_CANDIDATES).flatmap(mutations).map(_seal_raw),
    st.sampled_from(VALID_CANDIDATES).flatmap(mutations).map(_seal_raw),
)


@settings(max_examples=CHEAP)
@given(_boxes, st.sampled_from(SIDES))
def test_open_candidates_raises_only_remote_errors(box: bytes, side: str) -> None:
    try:
        got = open_candidates(KEY, box, sender_side=side)
    except RemoteProtocolError:
        return
    assert side == SIDES[0]
    assert isinstance(got, Candidates)
    assert decode_candidates(encode_candidates(got)) == got


@settings(max_examples=CHEAP)
@given(fuzz_inputs(VALID_CANDIDATES))
def test_decode_candidates_raises_only_decode_errors(data: bytes) -> None:
    try:
        got = decode_candidates(data)
    except DecodeError:
        return
    again = encode_candidates(got)
    assert decode_candidates(again) == got
