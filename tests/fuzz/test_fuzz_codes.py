"""Link codes, short codes and PINs: text a user pastes or types.

Proves: :meth:`LinkCode.parse`, :meth:`ShortCode.parse` and :func:`parse_pin`
raise only :class:`~p2pinvite.errors.CodeError` for any text: arbitrary
Unicode, mutations of valid codes (several edits at once, beyond the single
edits tests/invitations/test_codes.py checks), and valid codes wrapped in the
whitespace, case changes and look-alike characters a chat app may add.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import CodeError
from p2pinvite.invitations.codes import LinkCode, ShortCode, parse_pin
from tests.invitations.test_codes import link_codes, short_codes, typical_code

from .strategies import CHEAP, byte_mutations

#: Each target runs for seconds at CI size (thousands of examples).
pytestmark = pytest.mark.slow

_NOISE = st.sampled_from([" ", "\n", "\t", "\u00a0", "\u200b", "-", "=", "0", "O", "1", "l",
                          "I", "\u0130", "\u212a", "\ufeff", "\x00", "é", "😀", "P2PI", "://"])


@st.composite
def _mangled(draw: st.DrawFn, text: str) -> str:
    """*text* with edits at the character level and in its UTF-8 bytes."""
    if draw(st.booleans()):
        raw = draw(byte_mutations(text.encode()))
        return raw.decode("utf-8", errors=draw(st.sampled_from(["ignore", "replace"])))
    chars = list(text)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(chars)))
        op = draw(st.sampled_from(["insert", "delete", "case", "swap"]))
        if op == "insert":
            chars.insert(i, draw(_NOISE))
        elif chars and i < len(chars):
            if op == "delete":
                del chars[i]
            elif op == "case":
                chars[i] = chars[i].swapcase()
            elif i + 1 < len(chars):
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


_LINK_TEXT = st.one_of(link_codes.map(LinkCode.encode), st.just(typical_code().encode()))


@settings(max_examples=CHEAP)
@given(st.one_of(_LINK_TEXT.flatmap(_mangled), st.text(max_size=300),
                 _LINK_TEXT.map(lambda t: t[: len(t) // 2])))
def test_link_code_parses_or_raises_code_error(text: str) -> None:
    with contextlib.suppress(CodeError):
        LinkCode.parse(text)


@settings(max_examples=CHEAP)
@given(st.one_of(short_codes.map(ShortCode.encode).flatmap(_mangled), st.text(max_size=60)))
def test_short_code_parses_or_raises_code_error(text: str) -> None:
    with contextlib.suppress(CodeError):
        ShortCode.parse(text)


@settings(max_examples=CHEAP)
@given(st.one_of(st.text(max_size=40), st.just("493817").flatmap(_mangled),
                 st.text(alphabet="0123456789 -\u0660\u06f1\uff11", max_size=12)))
def test_pin_parses_or_raises_code_error(text: str) -> None:
    try:
        pin = parse_pin(text)
    except CodeError:
        return
    assert len(pin) == 6
    assert pin.isascii()
    assert pin.isdigit()
