"""msgpack with limits, canonical encoding, and length-prefix framing.

Everything that crosses a trust boundary (network, IPC, files) is decoded
here, so the limits live in one place:

* :func:`unpack` refuses ext types, non-string map keys, oversized containers
  and trailing bytes, and turns every msgpack failure into
  :class:`~p2pinvite.errors.DecodeError`.
* :func:`pack` is *canonical*: map keys are sorted (by their encoded bytes),
  integers use their shortest form, strings are UTF-8 ``str`` and bytes are
  ``bin``. Two implementations that follow docs/PROTOCOL.md produce the same
  bytes for the same value, which signatures and hashes depend on.
* :class:`FrameDecoder` is a sans-IO reader of length-prefixed frames (2-byte
  big-endian on the network, as Noise caps a message at 65535 bytes; 4-byte on
  the IPC socket).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgpack

from .errors import DecodeError, FrameTooLarge, LocalProtocolError

__all__ = [
    "MAX_FRAME",
    "MAX_MESSAGE",
    "FrameDecoder",
    "expect_bytes",
    "expect_int",
    "expect_map",
    "expect_str",
    "frame",
    "pack",
    "unpack",
]

#: Largest payload of one 2-byte length-prefixed frame.
MAX_FRAME: Final = 0xFFFF
#: Default ceiling for a decoded message (1 MiB). Callers pass tighter limits.
MAX_MESSAGE: Final = 1 << 20
#: Default ceilings for containers inside a message.
_MAX_ITEMS: Final = 4096


def _canonical(obj: Any) -> Any:
    """Return *obj* with every map's keys sorted by their canonical encoding."""
    if isinstance(obj, Mapping):
        items = [(_packb(_canonical(k)), k, _canonical(v)) for k, v in obj.items()]
        items.sort(key=lambda kv: kv[0])
        return {k: v for _, k, v in items}  # dicts keep insertion order
    if isinstance(obj, list | tuple):
        return [_canonical(x) for x in obj]
    return obj


def _packb(obj: Any) -> bytes:
    out = msgpack.packb(obj, use_bin_type=True, strict_types=False)
    assert isinstance(out, bytes)
    return out


def pack(obj: Any) -> bytes:
    """Encode *obj* as canonical msgpack.

    Allowed values: ``None``, ``bool``, ``int`` (-2**63 .. 2**64-1), ``float``,
    ``str``, ``bytes``, lists/tuples and maps of these. Anything else raises
    :class:`LocalProtocolError` (a bug on this side, not the peer's).
    """
    try:
        return _packb(_canonical(obj))
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"value cannot be encoded: {exc}") from None


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def unpack(
    data: bytes,
    *,
    max_size: int = MAX_MESSAGE,
    max_items: int = _MAX_ITEMS,
) -> Any:
    """Decode exactly one msgpack value from *data*, strictly.

    Raises :class:`FrameTooLarge` when *data* exceeds *max_size* and
    :class:`DecodeError` for anything malformed: bad bytes, ext types,
    non-``str`` map keys, containers above *max_items*, trailing bytes.
    """
    if len(data) > max_size:
        raise FrameTooLarge(f"message of {len(data)} bytes exceeds limit {max_size}")
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        use_list=True,
        ext_hook=_refuse_ext,
        max_buffer_size=max(max_size, 1),
        max_str_len=max_size,
        max_bin_len=max_size,
        max_array_len=max_items,
        max_map_len=max_items,
        max_ext_len=max_size,  # so ext_hook sees, and names, the refusal
    )
    try:
        unpacker.feed(data)
        value = unpacker.unpack()
    except DecodeError:
        raise
    except msgpack.OutOfData:
        raise DecodeError("truncated msgpack value") from None
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}") from None
    if unpacker.tell() != len(data):
        raise DecodeError("trailing bytes after msgpack value")
    return value


def expect_map(value: Any, what: str = "message") -> dict[str, Any]:
    """Return *value* if it is a map (keys are already ``str``), else raise DecodeError."""
    if not isinstance(value, dict):
        raise DecodeError(f"{what} must be a map")
    return value


def expect_bytes(m: Mapping[str, Any], key: str, *, size: int | None = None,
                 max_size: int = MAX_MESSAGE) -> bytes:
    """Field *key* of *m* as ``bytes`` (of exactly *size* bytes if given)."""
    v = m.get(key)
    if not isinstance(v, bytes):
        raise DecodeError(f"field {key!r} must be bytes")
    if size is not None and len(v) != size:
        raise DecodeError(f"field {key!r} must be {size} bytes, got {len(v)}")
    if len(v) > max_size:
        raise DecodeError(f"field {key!r} is longer than {max_size} bytes")
    return v


def expect_str(m: Mapping[str, Any], key: str, *, max_len: int = 1024) -> str:
    """Field *key* of *m* as ``str`` of at most *max_len* characters."""
    v = m.get(key)
    if not isinstance(v, str):
        raise DecodeError(f"field {key!r} must be a string")
    if len(v) > max_len:
        raise DecodeError(f"field {key!r} is longer than {max_len} characters")
    return v


def expect_int(m: Mapping[str, Any], key: str, *, lo: int = 0, hi: int = 2**63 - 1) -> int:
    """Field *key* of *m* as ``int`` within ``[lo, hi]`` (bools are refused)."""
    v = m.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise DecodeError(f"field {key!r} must be an integer")
    if not lo <= v <= hi:
        raise DecodeError(f"field {key!r} out of range")
    return v


def frame(payload: bytes, *, header: int = 2) -> bytes:
    """Prefix *payload* with its big-endian length in *header* bytes (2 or 4)."""
    limit = (1 << (8 * header)) - 1
    if len(payload) > limit:
        raise LocalProtocolError(f"payload of {len(payload)} bytes does not fit a frame")
    return len(payload).to_bytes(header, "big") + payload


class FrameDecoder:
    """Sans-IO reader of length-prefixed frames.

    Feed bytes as they arrive with :meth:`feed`; iterate :meth:`frames` to get
    each complete payload. A length above *max_frame* raises
    :class:`FrameTooLarge` *before* the body is buffered, so a peer cannot make
    us allocate more than one frame's worth of memory.
    """

    def __init__(self, *, header: int = 2, max_frame: int = MAX_FRAME) -> None:
        if header not in (2, 4):
            raise LocalProtocolError("frame header must be 2 or 4 bytes")
        self._header = header
        self._max = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    def next_frame(self) -> bytes | None:
        """Return the next complete frame, or ``None`` if more bytes are needed."""
        h = self._header
        if len(self._buf) < h:
            return None
        n = int.from_bytes(self._buf[:h], "big")
        if n > self._max:
            raise FrameTooLarge(f"frame of {n} bytes exceeds limit {self._max}")
        if len(self._buf) < h + n:
            return None
        payload = bytes(self._buf[h : h + n])
        del self._buf[: h + n]
        return payload

    def frames(self) -> Iterator[bytes]:
        """Yield every complete frame currently buffered."""
        while (f := self.next_frame()) is not None:
            yield f
