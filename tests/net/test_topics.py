"""Topics: derivations are deterministic, labelled apart, and keep the secret in."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import LocalProtocolError
from p2pinvite.net.topics import (
    LABEL_LINK_PSK,
    LABEL_LINK_TOPIC,
    LABEL_SHORT_TOPIC,
    LABEL_SWARM_PSK,
    LABEL_SWARM_TOPIC,
    Topic,
    encode_discovery_key,
)

SECRET = bytes(range(32))


def test_labels_are_distinct_and_fit_blake2b_personalisation() -> None:
    labels = [LABEL_LINK_TOPIC, LABEL_LINK_PSK, LABEL_SHORT_TOPIC, LABEL_SWARM_TOPIC,
              LABEL_SWARM_PSK]
    assert len(set(labels)) == len(labels)
    assert all(len(label) <= 16 for label in labels)


def test_link_topic_matches_the_documented_derivation() -> None:
    t = Topic.from_secret(SECRET)
    assert t.kind == "link"
    assert t.id == hashlib.blake2b(b"", digest_size=32, key=SECRET,
                                   person=b"p2pi/link-topic").digest()
    assert t.psk == hashlib.blake2b(b"", digest_size=32, key=SECRET,
                                    person=b"p2pi/link-psk").digest()
    assert t.txt == {"k": encode_discovery_key(t.id)}
    assert len(t.txt["k"]) == 52
    assert t.txt["k"] == t.txt["k"].lower()


def test_derivations_are_deterministic() -> None:
    assert Topic.from_secret(SECRET) == Topic.from_secret(bytes(SECRET))
    assert Topic.for_discriminator("1234") == Topic.for_discriminator("1234")
    assert Topic.for_swarm(SECRET) == Topic.for_swarm(bytes(SECRET))


def test_swarm_topic_matches_the_documented_derivation() -> None:
    t = Topic.for_swarm(SECRET)
    assert t.kind == "swarm"
    assert t.id == hashlib.blake2b(b"", digest_size=32, key=SECRET,
                                   person=b"p2pi/swarm-topic").digest()
    assert t.psk == hashlib.blake2b(b"", digest_size=32, key=SECRET,
                                    person=b"p2pi/swarm-psk").digest()
    assert t.txt == {"k": encode_discovery_key(t.id)}


def test_short_topics_are_public_and_psk_free() -> None:
    short = Topic.for_discriminator("1234")
    assert short.psk is None
    assert short.kind == "short"
    assert short.txt == {"d": "1234"}
    assert short.id == hashlib.blake2b(b"1234", digest_size=32,
                                       person=b"p2pi/short-topic").digest()


def test_same_input_different_kinds_give_different_keys() -> None:
    # The same 32 bytes as a link secret and as a swarm secret must not collide.
    link, swarm = Topic.from_secret(SECRET), Topic.for_swarm(SECRET)
    assert link.id != swarm.id
    assert link.psk != swarm.psk


def test_repr_shows_neither_secret_nor_psk() -> None:
    t = Topic.from_secret(SECRET)
    assert t.psk is not None
    text = repr(t) + str(t)
    for value in (SECRET, t.psk):
        assert value.hex() not in text
        assert repr(value) not in text
    assert "psk" not in text


@settings(max_examples=50)
@given(st.binary(min_size=32, max_size=32), st.sampled_from([Topic.from_secret,
                                                             Topic.for_swarm]))
def test_nothing_advertised_reveals_the_secret_or_psk(secret: bytes, derive: object) -> None:
    t = derive(secret)  # type: ignore[operator]
    assert t.psk is not None
    public = [t.id, t.txt_value.encode(), encode_discovery_key(t.id).encode()]
    for value in public:
        assert secret not in value
        assert secret.hex().encode() not in value
        assert t.psk not in value
        assert t.psk.hex().encode() not in value
    assert t.id != t.psk
    assert secret not in (getattr(t, f) for f in t.__slots__)  # the secret is not stored


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "0" * 32])
def test_bad_secrets_are_refused(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        Topic.from_secret(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "a b", "x" * 33, "k=1", "ü"])
def test_bad_discriminators_are_refused(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        Topic.for_discriminator(bad)


def test_inconsistent_topics_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Topic("link", b"\x00" * 32, None, "k", "x")
    with pytest.raises(LocalProtocolError):
        Topic("swarm", b"\x00" * 32, None, "k", "x")
    with pytest.raises(LocalProtocolError):
        Topic("short", b"\x00" * 32, b"\x01" * 32, "d", "x")
    with pytest.raises(LocalProtocolError):
        Topic("swarm", b"\x00" * 31, b"\x01" * 32, "k", "x")
    with pytest.raises(LocalProtocolError):
        Topic.for_swarm(b"")
