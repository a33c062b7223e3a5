"""Connection preambles and IPC requests: the first bytes an untrusted peer controls.

Proves: :func:`~p2pinvite.net.manager.decode_preamble` raises only
:class:`~p2pinvite.errors.DecodeError` (or its :class:`FrameTooLarge`), and
:func:`~p2pinvite.ipc_codec.decode_request` only
:class:`~p2pinvite.ipc_codec.BadRequest`, for random bytes, random msgpack and
mutations of valid encodings; a request that decodes keeps the codec's
invariants. The IPC frame reader is fed the same bytes in arbitrary chunks,
and the daemon's param readers (``p_str``, ``p_hex``...) any param values.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite import ipc_codec
from p2pinvite.daemon import service
from p2pinvite.errors import DecodeError, IPCError
from p2pinvite.ipc_codec import BadRequest, Request, decode_request
from p2pinvite.net.manager import MAX_PREAMBLE, decode_preamble, encode_preamble
from p2pinvite.net.topics import TOPIC_ID_SIZE
from p2pinvite.wire import FrameDecoder, pack

from .strategies import CHEAP, any_msgpack, fuzz_inputs

#: Each target runs for seconds at CI size (thousands of examples).
pytestmark = pytest.mark.slow

_PREAMBLES = [encode_preamble(os.urandom(TOPIC_ID_SIZE)), encode_preamble(bytes(32)),
              pack({"v": 1, "topic": os.urandom(32), "extra": [1, 2]})]


@settings(max_examples=CHEAP)
@given(fuzz_inputs(_PREAMBLES, max_size=MAX_PREAMBLE + 40))
def test_preamble_decodes_or_raises_decode_error(data: bytes) -> None:
    try:
        topic = decode_preamble(data)
    except DecodeError:
        return
    assert isinstance(topic, bytes)
    assert len(topic) == TOPIC_ID_SIZE


_REQUESTS = [ipc_codec.encode(r)[ipc_codec.HEADER:] for r in (
    Request(1, "status"),
    Request(7, "invitations.create", {"space": "Team", "role": "editor", "ttl": 600}),
    Request(2**63 - 1, "invitations.accept", {"code": "P2PI1-ABC", "pin": "493817"}),
    Request(0, "spaces.members", {"space": "a" * 64}),
)]


@settings(max_examples=CHEAP)
@given(st.one_of(fuzz_inputs(_REQUESTS),
                 st.fixed_dictionaries({}, optional={"id": any_msgpack, "method": any_msgpack,
                                                     "params": any_msgpack}).map(pack)))
def test_ipc_request_decodes_or_raises_bad_request(data: bytes) -> None:
    req: Request | BadRequest
    try:
        req = decode_request(data)
    except BadRequest as exc:
        req = exc
    if isinstance(req, BadRequest):
        # The id is echoed to the client only when it was a valid one.
        assert req.request_id is None or 0 <= req.request_id <= ipc_codec.MAX_ID
        return
    assert 0 <= req.id <= ipc_codec.MAX_ID
    assert isinstance(req.method, str)
    assert 0 < len(req.method) <= ipc_codec.MAX_METHOD_LEN
    assert isinstance(req.params, dict)


@settings(max_examples=CHEAP)
@given(st.binary(max_size=600), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_ipc_frames_in_any_chunks_give_frames_or_frame_too_large(
        data: bytes, cuts: list[int]) -> None:
    # The daemon's read loop: 4-byte length frames with the request limit; a huge
    # length must be refused before its body is buffered.
    decoder = FrameDecoder(header=ipc_codec.HEADER, max_frame=ipc_codec.MAX_IPC_FRAME)
    pos = 0
    try:
        for cut in cuts * (len(data) // max(sum(cuts), 1) + 1):
            decoder.feed(data[pos : pos + cut])
            pos += cut
            for payload in decoder.frames():
                with contextlib.suppress(BadRequest):
                    decode_request(payload)
    except DecodeError:  # FrameTooLarge: the daemon answers bad_request and hangs up
        assert decoder.buffered <= len(data)


# -- the params of a request, as the daemon's handlers read them -------------------------

_PARAM_VALUES = st.one_of(any_msgpack, st.text(alphabet="0123456789abcdefABCDEFxyz \u0660",
                                                 max_size=80),
                          st.sampled_from(["", " ", "\t", "\x00", "Bob\u200b", "a" * 64]))


@settings(max_examples=CHEAP)
@given(st.dictionaries(st.sampled_from(["name", "space", "x"]), _PARAM_VALUES, max_size=3),
       st.sampled_from(["str", "name", "int", "bool", "hex"]))
def test_param_readers_raise_only_bad_request(params: dict[str, Any], reader: str) -> None:
    # A handler that reads a param only ever fails with bad_request; anything
    # else would reach the client as "internal" (a daemon bug).
    read = {
        "str": lambda: service.p_str(params, "name", required=False),
        "name": lambda: service.p_name(params),
        "int": lambda: service.p_int(params, "name", lo=0, hi=1000),
        "bool": lambda: service.p_bool(params, "name"),
        "hex": lambda: service.p_hex(params, "name", 32),
    }[reader]
    error: IPCError | None = None
    try:
        read()
    except IPCError as exc:
        error = exc
    assert error is None or error.code == "bad_request"
