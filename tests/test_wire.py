"""wire.py: canonical msgpack, strict decoding with limits, framing."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pinvite import wire
from p2pinvite.errors import DecodeError, FrameTooLarge, LocalProtocolError

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@given(values)
def test_pack_unpack_round_trip(v: object) -> None:
    assert wire.unpack(wire.pack(v)) == v


@given(st.dictionaries(st.text(max_size=8), st.integers(-(2**63), 2**64 - 1), max_size=8))
def test_pack_is_canonical_whatever_the_insertion_order(d: dict[str, int]) -> None:
    reordered = dict(reversed(list(d.items())))
    assert wire.pack(d) == wire.pack(reordered)


def test_canonical_key_order_is_by_encoded_bytes() -> None:
    # "b" (1 char) encodes as a1 62, "aa" as a2 61 61: shorter fixstr sorts first.
    assert list(msgpack.unpackb(wire.pack({"aa": 1, "b": 2}))) == ["b", "aa"]


def test_unpack_refuses_ext_types() -> None:
    with pytest.raises(DecodeError, match="ext"):
        wire.unpack(msgpack.packb(msgpack.ExtType(5, b"x")))


def test_unpack_refuses_non_string_map_keys() -> None:
    with pytest.raises(DecodeError):
        wire.unpack(msgpack.packb({1: 2}))


def test_unpack_refuses_trailing_bytes_and_truncation() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        wire.unpack(wire.pack(1) + wire.pack(2))
    with pytest.raises(DecodeError, match="truncated"):
        wire.unpack(wire.pack("hello")[:-1])


def test_unpack_limits() -> None:
    with pytest.raises(FrameTooLarge):
        wire.unpack(wire.pack(b"x" * 100), max_size=50)
    with pytest.raises(DecodeError):
        wire.unpack(wire.pack(list(range(20))), max_items=10)


@given(st.binary(max_size=200))
def test_unpack_garbage_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        wire.unpack(data, max_size=100)


def test_pack_refuses_unencodable_values() -> None:
    with pytest.raises(LocalProtocolError):
        wire.pack(object())


def test_expect_helpers() -> None:
    m = {"b": b"12", "s": "x", "i": 5, "t": True}
    assert wire.expect_bytes(m, "b", size=2) == b"12"
    assert wire.expect_str(m, "s") == "x"
    assert wire.expect_int(m, "i", hi=5) == 5
    for bad in (lambda: wire.expect_bytes(m, "b", size=3), lambda: wire.expect_str(m, "i"),
                lambda: wire.expect_int(m, "t"), lambda: wire.expect_int(m, "i", hi=4),
                lambda: wire.expect_map([1])):
        with pytest.raises(DecodeError):
            bad()


@given(st.lists(st.binary(max_size=300), max_size=10), st.integers(1, 50))
def test_frame_decoder_reassembles_any_split(payloads: list[bytes], step: int) -> None:
    stream = b"".join(wire.frame(p) for p in payloads)
    dec = wire.FrameDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), step):
        dec.feed(stream[i : i + step])
        out.extend(dec.frames())
    assert out == payloads
    assert dec.buffered == 0


def test_frame_decoder_refuses_oversized_length_before_buffering_body() -> None:
    dec = wire.FrameDecoder(header=4, max_frame=1000)
    dec.feed((1001).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_frame_refuses_payload_too_big_for_header() -> None:
    with pytest.raises(LocalProtocolError):
        wire.frame(b"x" * 70000)
    assert wire.frame(b"x" * 70000, header=4)[:4] == (70000).to_bytes(4, "big")
