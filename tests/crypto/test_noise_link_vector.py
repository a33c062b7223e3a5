"""The link-code handshake vector (written by the independent noiseprotocol package).

Our engine must reproduce every byte of it, and the vector's prologue, PSK and
topic id must be what our own derivations give for its link secret: together
that pins docs/PROTOCOL.md Part 4 and Part 5 to bytes another implementation
produced. Regenerate with ``python -m tests.crypto.make_noise_link_vector``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p2pinvite.crypto.noise import parse_protocol_name
from p2pinvite.net.manager import encode_preamble
from p2pinvite.net.secure import PROTOCOL_XXPSK0, full_prologue
from p2pinvite.net.topics import Topic

from .test_noise_vectors import run_vector

VECTOR: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "noise-p2pinvite-link.json").read_text()
)["vectors"][0]


def test_the_vector_is_our_link_handshake() -> None:
    assert VECTOR["protocol_name"] == PROTOCOL_XXPSK0
    assert parse_protocol_name(PROTOCOL_XXPSK0).pattern.name == "XXpsk0"
    topic = Topic.from_secret(bytes.fromhex(VECTOR["link_secret"]))
    assert topic.psk is not None
    assert VECTOR["topic_id"] == topic.id.hex()
    prologue = full_prologue(PROTOCOL_XXPSK0, encode_preamble(topic.id))
    for side in ("init", "resp"):
        assert VECTOR[f"{side}_prologue"] == prologue.hex()
        assert VECTOR[f"{side}_psks"] == [topic.psk.hex()]
    # Message 1 is e and the tag of an empty payload keyed by the PSK: 48 bytes.
    assert len(bytes.fromhex(VECTOR["messages"][0]["ciphertext"])) == 48


def test_our_engine_reproduces_every_byte() -> None:
    assert run_vector(VECTOR) == len(VECTOR["messages"]) == 6
