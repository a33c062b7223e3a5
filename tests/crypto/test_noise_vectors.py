"""The cacophony Noise test vectors (25519, ChaChaPoly, BLAKE2b and SHA256).

Every vector runs as its own test. A second test replays the whole file and
checks that the count of vectors run equals the count in the file, so an
unsupported protocol name fails loudly instead of being skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2pinvite.crypto.noise import HandshakeState, NoiseTransport, parse_protocol_name

VECTORS_FILE = Path(__file__).parent.parent / "vectors" / "noise-25519-chachapoly.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text())["vectors"]


def _b(v: dict[str, Any], key: str) -> bytes | None:
    return bytes.fromhex(v[key]) if key in v else None


def _side(v: dict[str, Any], prefix: str, initiator: bool) -> HandshakeState:
    return HandshakeState(
        v["protocol_name"],
        initiator=initiator,
        prologue=_b(v, f"{prefix}_prologue") or b"",
        s=_b(v, f"{prefix}_static"),
        e=_b(v, f"{prefix}_ephemeral"),
        rs=_b(v, f"{prefix}_remote_static"),
        psks=[bytes.fromhex(p) for p in v.get(f"{prefix}_psks", [])],
    )


def run_vector(v: dict[str, Any]) -> int:
    """Replay one vector, asserting every byte; return the number of messages checked."""
    init = _side(v, "init", True)
    resp = _side(v, "resp", False)
    one_way = init.protocol.pattern.one_way
    transports: tuple[NoiseTransport, NoiseTransport] | None = None
    checked = 0
    for i, m in enumerate(v["messages"]):
        payload = bytes.fromhex(m["payload"])
        expected = bytes.fromhex(m["ciphertext"])
        # Handshake and transport messages alternate directions, except
        # one-way patterns, whose transport messages all go initiator->responder.
        initiator_sends = one_way or i % 2 == 0
        if not init.complete:
            sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
            assert sender.our_turn
            assert not receiver.our_turn
            ct = sender.write_message(payload)
            assert ct.hex() == m["ciphertext"], f"handshake message {i}"
            assert receiver.read_message(ct) == payload
            if i + 1 == init.message_count:
                assert resp.complete
                assert init.handshake_hash.hex() == v["handshake_hash"]
                assert resp.handshake_hash.hex() == v["handshake_hash"]
        else:
            if transports is None:
                transports = (init.transport(), resp.transport())
            ti, tr = transports
            tx, rx = (ti, tr) if initiator_sends else (tr, ti)
            ct = tx.encrypt(payload)
            assert ct == expected, f"transport message {i}"
            assert rx.decrypt(ct) == payload
        checked += 1
    assert init.complete
    assert resp.complete
    assert init.handshake_hash == resp.handshake_hash
    return checked


@pytest.mark.parametrize(
    "vector", VECTORS, ids=[f"{i:03d}-{v['protocol_name']}" for i, v in enumerate(VECTORS)]
)
def test_vector(vector: dict[str, Any]) -> None:
    assert run_vector(vector) == len(vector["messages"])


def test_every_vector_runs() -> None:
    assert len(VECTORS) == 118  # the file we ship; update deliberately if it changes
    names = {v["protocol_name"] for v in VECTORS}
    for name in names:
        parse_protocol_name(name)  # raises UnsupportedProtocol: fail, never skip
    ran = 0
    ran_names: set[str] = set()
    for v in VECTORS:
        assert run_vector(v) == len(v["messages"])
        ran += 1
        ran_names.add(v["protocol_name"])
    assert ran == len(VECTORS)
    assert ran_names == names


def test_vectors_cover_all_pattern_families() -> None:
    # The file exercises one-way, fundamental, deferred and psk patterns and
    # both hashes; if it shrank, the tests above would prove much less.
    bases = {parse_protocol_name(v["protocol_name"]).pattern.name for v in VECTORS}
    assert {"N", "K", "X", "NN", "XX", "IK", "XX1", "I1X1", "XXpsk3", "NNpsk0"} <= bases
    hashes = {parse_protocol_name(v["protocol_name"]).hash for v in VECTORS}
    assert hashes == {"BLAKE2b", "SHA256"}
