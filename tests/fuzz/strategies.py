"""Inputs for the fuzz targets: random bytes, mutations of valid encodings, odd msgpack.

Pure random bytes mostly die in the first check of a decoder (not msgpack, bad
length). To reach the deep checks the targets also feed *mutations of valid
encodings*: a few byte-level edits (flip, overwrite, insert, delete, truncate,
duplicate) and *structural* edits of the decoded msgpack map (a field dropped,
added, or replaced by a value of another type), re-packed so the result is
still well-formed msgpack and gets past the codec into the field checks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import msgpack
from hypothesis import strategies as st

from tests.soak import examples

__all__ = ["CHEAP", "MEDIUM", "any_msgpack", "byte_mutations", "fuzz_inputs",
           "map_mutations", "mutations"]

#: max_examples of a target costing microseconds, and of one costing about a millisecond.
CHEAP = examples(2000, 20000)
MEDIUM = examples(1000, 10000)

_INT = st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from([0, 1, -1, 2**32, 2**63]))
_SCALAR = st.one_of(st.none(), st.booleans(), _INT, st.floats(allow_nan=True),
                    st.text(max_size=40), st.binary(max_size=80),
                    st.sampled_from([b"\x00" * 32, b"\xff" * 64, "", b""]))

#: Any msgpack value (without ext types, which every decoder refuses first).
any_msgpack: st.SearchStrategy[Any] = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=12,
)


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """*data* after one to four byte-level edits (may be empty, never checked for equality)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup",
                                   "extend"]))
        n = len(out)
        if op in ("flip", "set") and n:
            i = draw(st.integers(0, n - 1))
            out[i] = (out[i] ^ (1 << draw(st.integers(0, 7))) if op == "flip"
                      else draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC4, 0xD9,
                                                 0xDC, 0xDE, 0xFF, draw(st.integers(0, 255))])))
        elif op == "insert":
            i = draw(st.integers(0, n))
            out[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del out[i : i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del out[draw(st.integers(0, n)):]
        elif op == "dup" and n:
            i = draw(st.integers(0, n - 1))
            out[i:i] = out[i : i + draw(st.integers(1, 32))]
        elif op == "extend":
            out += draw(st.binary(min_size=1, max_size=32))
    return bytes(out)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every node inside *value* (itself first), depth first."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _edit_node(draw: st.DrawFn, value: Any) -> Any:
    """*value* changed: its type, its size, its content, or one of its items."""
    if draw(st.integers(0, 3)) == 0:
        return draw(any_msgpack)
    if isinstance(value, dict):
        out = dict(value)  # the order is kept: canonical inputs stay canonical-ordered
        key = draw(st.sampled_from([*value, "x", "t", "v", ""])) + draw(
            st.sampled_from(["", "_"]))
        out[key] = draw(any_msgpack)
        return out if draw(st.booleans()) else {}
    if isinstance(value, list):
        op = draw(st.sampled_from(["dup", "many", "empty", "append"]))
        if op == "dup" and value:
            i = draw(st.integers(0, len(value) - 1))
            return [*value[: i + 1], value[i], *value[i + 1 :]]
        if op == "many":
            return value * draw(st.integers(2, 40))
        if op == "append":
            return [*value, draw(any_msgpack)]
        return []
    if isinstance(value, bytes):
        return draw(byte_mutations(value)) if value else draw(st.binary(max_size=40))
    if isinstance(value, bool) or value is None:
        return draw(any_msgpack)
    if isinstance(value, int):
        return draw(st.sampled_from([value + 1, value - 1, -value, 2**16, 2**32, 2**63 - 1,
                                     2**64 - 1, -(2**63), 0]))
    if isinstance(value, str):
        return draw(st.sampled_from([value + "x", value[:-1], value.upper(), value * 100, "",
                                     "\x00", "é"]))
    return draw(any_msgpack)


def _edit_at(draw: st.DrawFn, value: Any, path: tuple[Any, ...]) -> Any:
    """*value* with the node at *path* edited, or removed from its parent."""
    if not path:
        return _edit_node(draw, value)
    head, rest = path[0], path[1:]
    out: Any = dict(value) if isinstance(value, dict) else list(value)
    if not rest and draw(st.integers(0, 4)) == 0:
        del out[head]
    else:
        out[head] = _edit_at(draw, value[head], rest)
    return out


def _mutate_value(draw: st.DrawFn, value: Any) -> Any:
    """*value* with one or two structural edits, each at a node chosen uniformly.

    Choosing among all nodes (not walking down at random) makes a field three
    levels deep (a grant inside a list inside a credential) as likely a target
    as a top-level one.
    """
    for _ in range(draw(st.integers(1, 2))):
        paths = list(itertools.islice(_paths(value), 400))
        value = _edit_at(draw, value, draw(st.sampled_from(paths)))
    return value


@st.composite
def map_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """*data* (msgpack) decoded, edited structurally, and packed again."""
    value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    mutated = _mutate_value(draw, value)
    try:
        return bytes(msgpack.packb(mutated, use_bin_type=True))
    except (OverflowError, ValueError, TypeError):  # an int out of msgpack's range
        return data


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """Byte-level or structural (when *data* is msgpack) mutations of *data*."""
    try:
        msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # not msgpack: only byte-level edits make sense
        return byte_mutations(data)
    return st.one_of(byte_mutations(data), map_mutations(data))


def fuzz_inputs(valid: list[bytes], *, max_size: int = 400) -> st.SearchStrategy[bytes]:
    """Random bytes, random msgpack values, and mutations of the *valid* encodings."""
    packed = any_msgpack.map(lambda v: bytes(msgpack.packb(v, use_bin_type=True)))
    # Mutations weigh most: they are what reaches past the first checks.
    mutated = st.sampled_from(valid).flatmap(mutations)
    return st.one_of(st.binary(max_size=max_size), packed, mutated, mutated, mutated)
