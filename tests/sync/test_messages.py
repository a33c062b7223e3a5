"""The sync wire messages: exact bytes, round trips, and strict refusal of everything else."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from p2pinvite.errors import DecodeError, FrameTooLarge, RemoteProtocolError
from p2pinvite.sync import (
    MAX_BATCH,
    MAX_ENTRY,
    MAX_HAVE,
    MAX_HEADS,
    MAX_MESSAGE,
    MAX_WANT,
    EntriesMsg,
    HeadsMsg,
    WantMsg,
    decode_message,
    encode_message,
)
from p2pinvite.wire import pack

A = bytes([0xAA]) * 32
B = bytes([0xBB]) * 32
C = bytes([0xCC]) * 32


def test_heads_vector() -> None:
    # docs/PROTOCOL.md Part 11 §2 quotes these bytes
    data = encode_message(HeadsMsg((A,), (B,)))
    assert data.hex() == (
        "84a174a56865616473a17601a46861766591c420" + "bb" * 32
        + "a5686561647391c420" + "aa" * 32)
    assert decode_message(data) == HeadsMsg((A,), (B,), 1)


def test_entries_and_want_vectors() -> None:
    assert encode_message(EntriesMsg((b"\x01\x02",))).hex() == (
        "82a174a7656e7472696573a7656e747269657391c4020102")
    assert encode_message(WantMsg((C,))).hex() == "82a174a477616e74a36964739" + "1c420" + "cc" * 32


@pytest.mark.parametrize("msg", [
    HeadsMsg((), ()),
    HeadsMsg((A, B, C), (A,)),
    HeadsMsg((A,), (), 7),
    EntriesMsg((b"x",)),
    EntriesMsg((b"y" * MAX_ENTRY,) * 3),
    WantMsg((A, B)),
])
def test_round_trip(msg: Any) -> None:
    assert decode_message(encode_message(msg)) == msg


def _bad(m: dict[str, Any]) -> bytes:
    return pack(m)


_GOOD_HEADS: dict[str, Any] = {"t": "heads", "v": 1, "heads": [A], "have": []}

BAD = {
    "not msgpack": b"\xc1",
    "truncated": encode_message(HeadsMsg((A,)))[:-1],
    "trailing bytes": encode_message(HeadsMsg((A,))) + b"\x00",
    "not a map": pack([1, 2]),
    "no type": pack({"heads": [A]}),
    "unknown type": pack({"t": "hello"}),
    "type not a string": pack({"t": 1}),
    "heads: unknown field": _bad({**_GOOD_HEADS, "extra": 1}),
    "heads: missing have": _bad({"t": "heads", "v": 1, "heads": [A]}),
    "heads: missing v": _bad({"t": "heads", "heads": [A], "have": []}),
    "heads: v 0": _bad({**_GOOD_HEADS, "v": 0}),
    "heads: v too big": _bad({**_GOOD_HEADS, "v": 0x10000}),
    "heads: v is bool": _bad({**_GOOD_HEADS, "v": True}),
    "heads: short id": _bad({**_GOOD_HEADS, "heads": [A[:31]]}),
    "heads: long id": _bad({**_GOOD_HEADS, "heads": [A + b"\x00"]}),
    "heads: id as str": _bad({**_GOOD_HEADS, "heads": ["a" * 32]}),
    "heads: not sorted": _bad({**_GOOD_HEADS, "heads": [B, A]}),
    "heads: repeated": _bad({**_GOOD_HEADS, "heads": [A, A]}),
    "heads: have repeated": _bad({**_GOOD_HEADS, "have": [B, B]}),
    "heads: too many": _bad({**_GOOD_HEADS, "heads": [i.to_bytes(32, "big")
                                                      for i in range(MAX_HEADS + 1)]}),
    "heads: too many haves": _bad({**_GOOD_HEADS, "have": [i.to_bytes(32, "big")
                                                           for i in range(MAX_HAVE + 1)]}),
    "heads: heads not a list": _bad({**_GOOD_HEADS, "heads": A}),
    "entries: empty": _bad({"t": "entries", "entries": []}),
    "entries: empty entry": _bad({"t": "entries", "entries": [b""]}),
    "entries: entry as str": _bad({"t": "entries", "entries": ["abc"]}),
    "entries: entry too big": _bad({"t": "entries", "entries": [b"x" * (MAX_ENTRY + 1)]}),
    "entries: too many": _bad({"t": "entries", "entries": [b"x"] * (MAX_BATCH + 1)}),
    "entries: not a list": _bad({"t": "entries", "entries": b"x"}),
    "entries: unknown field": _bad({"t": "entries", "entries": [b"x"], "more": True}),
    "want: empty": _bad({"t": "want", "ids": []}),
    "want: repeated": _bad({"t": "want", "ids": [A, A]}),
    "want: too many": _bad({"t": "want", "ids": [i.to_bytes(32, "big")
                                                for i in range(MAX_WANT + 1)]}),
    "want: bad id": _bad({"t": "want", "ids": [b"short"]}),
    "ext type": msgpack.packb({"t": "want", "ids": [msgpack.ExtType(1, A)]}),
    "non-str key": msgpack.packb({1: "want"}),
}


@pytest.mark.parametrize("data", BAD.values(), ids=BAD.keys())
def test_malformed_is_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(data)
    assert isinstance(info.value, RemoteProtocolError)


def test_oversized_is_refused_before_decoding() -> None:
    data = pack({"t": "entries", "entries": [b"x" * MAX_ENTRY] * 4})
    assert len(data) > MAX_MESSAGE
    with pytest.raises(FrameTooLarge):
        decode_message(data)


def test_largest_batch_fits() -> None:
    # three maximal entries fit one message, a fourth does not (the session's budget)
    data = encode_message(EntriesMsg((b"z" * MAX_ENTRY,) * 3))
    assert len(data) <= MAX_MESSAGE
    data = encode_message(EntriesMsg((b"z",) * MAX_BATCH))
    assert decode_message(data) == EntriesMsg((b"z",) * MAX_BATCH)
