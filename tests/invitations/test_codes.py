"""Link codes, short codes and PINs: round trips, error detection, strict parsing."""

from __future__ import annotations

import base64
import dataclasses
import os
import random
import string
import struct
import zlib

import pytest
import segno
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import CodeError
from p2pinvite.invitations.codes import (
    LINK_PREFIX,
    MAX_HINTS,
    MAX_LINK_CODE_LENGTH,
    MAX_MAILBOX_URL,
    LinkCode,
    ShortCode,
    damm_check_digit,
    damm_valid,
    generate_pin,
    is_trivial_digits,
    parse_pin,
)
from p2pinvite.invitations.model import AuthMethod, Invitation, InvitationKind

B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
#: Documented QR budget for a typical code (two IPv4 hints): see docs/PROTOCOL.md Part 3.
TYPICAL_BUDGET = 250

# -- strategies ----------------------------------------------------------------

hints_st = st.lists(
    st.tuples(st.ip_addresses().map(str), st.integers(1, 65535)), max_size=MAX_HINTS
).map(tuple)

link_codes = st.builds(
    LinkCode,
    kind=st.sampled_from(list(InvitationKind)),
    invitation_id=st.binary(min_size=16, max_size=16),
    secret=st.binary(min_size=32, max_size=32),
    target=st.binary(min_size=32, max_size=32),
    host_device_key=st.binary(min_size=32, max_size=32),
    auth=st.sampled_from([AuthMethod.NONE, AuthMethod.PIN, AuthMethod.KEY]),
    expires_at=st.integers(0, 2**32 - 1),
    hints=hints_st,
    mailbox=st.none() | st.builds(
        lambda s, host, port, path: f"{s}://{host}:{port}/{path}", st.sampled_from(["ws", "wss"]),
        st.from_regex(r"[a-z0-9]{1,40}(\.[a-z0-9]{1,20}){0,3}", fullmatch=True),
        st.integers(1, 65535), st.text(alphabet=string.ascii_letters + string.digits + "/._-",
                                       max_size=80)),
)

digits = st.text(alphabet="0123456789", min_size=1, max_size=1)
secrets7 = st.text(alphabet="0123456789", min_size=7, max_size=7).filter(
    lambda s: not is_trivial_digits(s)
)
short_codes = st.builds(
    ShortCode,
    discriminator=st.text(alphabet="0123456789", min_size=4, max_size=4),
    secret=secrets7,
)


def typical_code(hints: tuple[tuple[str, int], ...] = (("192.168.1.20", 45123),
                                                         ("10.0.0.7", 45123))) -> LinkCode:
    return LinkCode(
        kind=InvitationKind.SPACE,
        invitation_id=os.urandom(16),
        secret=os.urandom(32),
        target=os.urandom(32),
        host_device_key=os.urandom(32),
        auth=AuthMethod.PIN,
        expires_at=1_900_000_000,
        hints=hints,
    )


def raw_code(payload_fields: bytes) -> str:
    """A link code text around arbitrary payload bytes, with a correct CRC."""
    data = payload_fields + zlib.crc32(payload_fields).to_bytes(4, "big")
    return LINK_PREFIX + base64.b32encode(data).decode().rstrip("=")


def fixed(version: int = 1, kind: int = 1, auth: int = 1) -> bytes:
    return struct.pack(">BBB16s32s32s32sI", version, kind, auth, b"i" * 16, b"s" * 32,
                       b"t" * 32, b"h" * 32, 1_900_000_000)


# -- link codes: round trip and format ---------------------------------------


@given(link_codes)
@settings(max_examples=300)
def test_link_code_round_trips(code: LinkCode) -> None:
    text = code.encode()
    assert text.startswith(LINK_PREFIX)
    assert len(text) <= MAX_LINK_CODE_LENGTH
    assert LinkCode.parse(text) == code
    assert LinkCode.parse(f"  \n{text.lower()}\t ") == code
    assert LinkCode.parse(code.qr_text()) == code
    assert LinkCode.from_binary(code.to_binary()) == code


def test_encoding_is_uppercase_base32_without_padding() -> None:
    text = typical_code().encode()
    body = text[len(LINK_PREFIX):]
    assert set(body) <= set(B32)
    assert "=" not in text
    assert typical_code().qr_text().isupper()


def test_hints_are_canonicalised_and_keep_families() -> None:
    code = typical_code(hints=(("2001:DB8:0:0::1", 80), ("192.168.1.2", 1)))
    assert code.hints == (("2001:db8::1", 80), ("192.168.1.2", 1))
    assert LinkCode.parse(code.encode()).hints == code.hints


def test_typical_code_length_fits_the_qr_budget() -> None:
    # Measured lengths (documented in docs/PROTOCOL.md Part 3).
    assert len(typical_code().encode()) == 231
    assert len(typical_code().encode()) < TYPICAL_BUDGET
    assert len(typical_code(hints=(("192.168.1.20", 1), ("fd00::1:2:3:4", 1))).encode()) == 250
    assert len(typical_code(hints=()).encode()) == 209
    assert len(typical_code(hints=(("2001:db8::1", 1),) * MAX_HINTS).encode()) == 452
    # A mailbox adds 2 bytes and its URL: a typical one, then the longest code.
    with_mailbox = dataclasses.replace(typical_code(), mailbox="wss://relay.example.net:4000/v1")
    assert len(with_mailbox.encode()) == 284
    longest = dataclasses.replace(typical_code(hints=(("2001:db8::1", 1),) * MAX_HINTS),
                                  mailbox="ws://" + "m" * (MAX_MAILBOX_URL - 5))
    assert len(longest.encode()) == MAX_LINK_CODE_LENGTH == 775
    qr = segno.make(typical_code().qr_text(), error="m", boost_error=False)
    assert qr.mode == "alphanumeric"
    assert isinstance(qr.version, int)
    assert qr.version <= 10


def test_documented_test_vectors() -> None:
    # docs/PROTOCOL.md Part 3, section 1.3: other implementations check against these.
    code = LinkCode(
        kind=InvitationKind.SPACE,
        invitation_id=bytes(range(16)),
        secret=bytes(range(0x20, 0x40)),
        target=bytes(range(0x40, 0x60)),
        host_device_key=bytes(range(0x60, 0x80)),
        auth=AuthMethod.PIN,
        expires_at=1_900_000_000,
        hints=(("192.168.1.20", 45123), ("fd00::1", 45123)),
    )
    binary = bytes.fromhex(
        "010101000102030405060708090a0b0c0d0e0f202122232425262728292a2b2c2d2e2f30313233"
        "3435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a"
        "5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f713f"
        "b3000204c0a80114b04306fd000000000000000000000000000001b0435c0db0a2"
    )
    text = (
        "p2pinvite:AEAQCAABAIBQIBIGA4EASCQLBQGQ4DZAEERCGJBFEYTSQKJKFMWC2LRPGAYTEMZUGU3D"
        "OOBZHI5TYPJ6H5AECQSDIRCUMR2IJFFEWTCNJZHVAUKSKNKFKVSXLBMVUW24LVPF6YDBMJRWIZLGM5"
        "UGS2TLNRWW433QOFZHG5DVOZ3XQ6L2PN6H27T7OE73GAACATAKQAIUWBBQN7IAAAAAAAAAAAAAAAAA"
        "AAAAAANQINOA3MFC"
    )
    assert code.to_binary() == binary
    assert code.encode() == text
    assert LinkCode.parse(text) == code
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the documented CRC-32 variant
    v2 = dataclasses.replace(code, hints=(("192.168.1.20", 45123),),
                             mailbox="ws://192.0.2.1:4000/v1")
    assert v2.to_binary() == bytes.fromhex(
        "020101000102030405060708090a0b0c0d0e0f202122232425262728292a2b2c2d2e2f30313233"
        "3435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a"
        "5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f713f"
        "b3000104c0a80114b043011677733a2f2f3139322e302e322e313a343030302f7631ff29ed92")
    assert v2.encode() == (
        "p2pinvite:AIAQCAABAIBQIBIGA4EASCQLBQGQ4DZAEERCGJBFEYTSQKJKFMWC2LRPGAYTEMZUGU3D"
        "OOBZHI5TYPJ6H5AECQSDIRCUMR2IJFFEWTCNJZHVAUKSKNKFKVSXLBMVUW24LVPF6YDBMJRWIZLGM5"
        "UGS2TLNRWW433QOFZHG5DVOZ3XQ6L2PN6H27T7OE73GAABATAKQAIUWBBQCFTXOM5C6LZRHEZC4MBO"
        "GIXDCORUGAYDAL3WGH7ST3MS")
    assert ShortCode("4242", "9071234").encode() == "4242-9071-2340"


def test_link_code_repr_hides_the_secret() -> None:
    code = typical_code()
    r = repr(code)
    assert "secret" not in r
    assert code.secret.hex() not in r
    assert repr(code.secret) not in r
    assert code.encode()[len(LINK_PREFIX):] not in r


def test_for_invitation_copies_the_record() -> None:
    inv = Invitation(
        id=b"\x01" * 16, kind=InvitationKind.DEVICE, target=b"\x02" * 32, role=None,
        auth=AuthMethod.NONE, secret=b"\x03" * 32, created_at=100.0, expires_at=200.9,
        created_by=b"\x04" * 32,
    )
    code = LinkCode.for_invitation(inv, host_device_key=b"\x05" * 32,
                                   hints=(("127.0.0.1", 9),))
    assert (code.invitation_id, code.secret, code.target, code.kind, code.auth) == (
        inv.id, inv.secret, inv.target, inv.kind, inv.auth)
    assert code.expires_at == 200  # floored: the guest errs towards "expired"
    assert code.host_device_key == b"\x05" * 32


# -- link codes: every single-character change is detected -------------------


def _assert_every_substitution_detected(text: str) -> int:
    checked = 0
    for i, ch in enumerate(text):
        pool = B32 if i >= len(LINK_PREFIX) else B32 + string.ascii_lowercase + ":"
        for alt in pool:
            if alt.upper() == ch.upper():
                continue  # same character, other case: not a change
            changed = text[:i] + alt + text[i + 1:]
            with pytest.raises(CodeError, match="not a valid p2pinvite code"):
                LinkCode.parse(changed)
            checked += 1
    return checked


@pytest.mark.parametrize("hints", [
    (),
    (("192.168.1.20", 45123), ("10.0.0.7", 45123)),
    (("2001:db8::1", 65535),) * MAX_HINTS,
])
def test_every_single_substitution_is_detected_exhaustively(
    hints: tuple[tuple[str, int], ...],
) -> None:
    text = typical_code(hints=hints).encode()
    checked = _assert_every_substitution_detected(text)
    body = len(text) - len(LINK_PREFIX)
    assert checked >= body * 31  # every other base32 symbol at every body position


@given(link_codes, st.data())
@settings(max_examples=300)
def test_random_single_substitution_is_detected(code: LinkCode, data: st.DataObject) -> None:
    text = code.encode()
    i = data.draw(st.integers(len(LINK_PREFIX), len(text) - 1))
    alt = data.draw(st.sampled_from([c for c in B32 if c != text[i]]))
    if data.draw(st.booleans()):
        alt = alt.lower()
    with pytest.raises(CodeError):
        LinkCode.parse(text[:i] + alt + text[i + 1:])


@given(link_codes, st.data())
@settings(max_examples=200)
def test_deleted_or_inserted_character_is_detected(code: LinkCode, data: st.DataObject) -> None:
    # Not a burst of the same length, so this rests on the CRC's 2**-32 miss
    # rate plus the structural length checks; it must still never pass here.
    text = code.encode()
    i = data.draw(st.integers(len(LINK_PREFIX), len(text) - 1))
    with pytest.raises(CodeError):
        LinkCode.parse(text[:i] + text[i + 1:])
    ins = data.draw(st.sampled_from(B32))
    with pytest.raises(CodeError):
        LinkCode.parse(text[:i] + ins + text[i:])


def test_noncanonical_trailing_bits_are_refused() -> None:
    text = typical_code().encode()  # 138 bytes: the last character has 1 unused bit
    last = B32.index(text[-1])
    assert last & 1 == 0
    with pytest.raises(CodeError, match="canonical"):
        LinkCode.parse(text[:-1] + B32[last | 1])


# -- link codes: malformed content with a correct checksum ------------------


@pytest.mark.parametrize(("payload", "why"), [
    (fixed(version=3) + b"\x00", "unsupported version 3"),
    (fixed(version=2) + b"\x00", "a version 2 code names a mailbox"),
    (fixed(version=2) + b"\x00\x02\x05ws://", "a version 2 code names a mailbox"),
    (fixed(version=2) + b"\x00\x01\x09ws://a", "truncated mailbox URL"),
    (fixed(version=2) + b"\x00\x01\x08http://a", "starts with ws://"),
    (fixed(version=2) + b"\x00\x01\x06ws://\xff", "not ASCII"),
    (fixed(version=2) + b"\x00\x01\x06ws://a\x00", "trailing bytes"),
    (fixed(version=1) + b"\x00\x01\x06ws://a", "trailing bytes"),
    (fixed(version=0) + b"\x00", "unsupported version 0"),
    (fixed(kind=2) + b"\x00", "unknown invitation kind"),
    (fixed(auth=2) + b"\x00", "auth method"),  # short: no link for short pairings
    (fixed(auth=9) + b"\x00", "auth method"),
    (fixed() + b"\x09" + b"\x04\x7f\x00\x00\x01\x00\x01" * 9, "more than 8"),
    (fixed() + b"\x01\x04\x7f\x00\x00\x01\x00\x00", "port 0"),
    (fixed() + b"\x01\x05\x7f\x00\x00\x01\x00\x01", "unknown address family"),
    (fixed() + b"\x01\x06\x7f\x00\x00\x01\x00\x01", "truncated"),
    (fixed() + b"\x02\x04\x7f\x00\x00\x01\x00\x01", "truncated"),
    (fixed() + b"\x00\x00", "trailing bytes"),
    (fixed()[:-1], "wrong length"),
])
def test_checksummed_but_malformed_content_is_refused(payload: bytes, why: str) -> None:
    with pytest.raises(CodeError, match=why):
        LinkCode.parse(raw_code(payload))


def test_a_well_formed_raw_code_parses() -> None:
    code = LinkCode.parse(raw_code(fixed() + b"\x01\x04\x7f\x00\x00\x01\x00\x50"))
    assert code.hints == (("127.0.0.1", 80),)
    assert code.secret == b"s" * 32
    assert code.auth is AuthMethod.PIN


@pytest.mark.parametrize("text", [
    "",
    "p2pinvite:",
    "p2pinvite",
    "http://example.com",
    "p2pinvite:AAAA=",
    "p2pinvite:A",  # impossible base32 length
    "p2pinvite:AB CD",
    "p2pinvite:" + "A" * 2000,
    "x" * 5000,
    "p2pinvite:" + "1" * 40,  # 0, 1, 8, 9 are not base32
    "p2pinvite :AEAQ",
])
def test_garbage_link_codes_raise_code_error(text: str) -> None:
    with pytest.raises(CodeError, match="not a valid p2pinvite code"):
        LinkCode.parse(text)


def test_non_ascii_lookalikes_are_refused() -> None:
    # U+017F LATIN SMALL LETTER LONG S upper-cases to ASCII "S", so without
    # the ASCII check an altered code would decode to the original.
    assert "\u017f".upper() == "S"
    text = typical_code().encode()
    while "S" not in text[len(LINK_PREFIX):]:
        text = typical_code().encode()
    i = text.index("S", len(LINK_PREFIX))
    with pytest.raises(CodeError, match="non-ASCII"):
        LinkCode.parse(text[:i] + "\u017f" + text[i + 1:])
    assert "p2pinv\u0131te:".upper() == "P2PINVITE:"  # dotless i
    with pytest.raises(CodeError, match="non-ASCII"):
        LinkCode.parse("p2pinv\u0131te:" + text[len(LINK_PREFIX):])


@given(st.text(max_size=600))
@settings(max_examples=300)
def test_arbitrary_text_raises_only_code_error(text: str) -> None:
    with pytest.raises(CodeError):
        LinkCode.parse(text)
    with pytest.raises(CodeError):
        LinkCode.parse(LINK_PREFIX + text)


@given(st.text(alphabet=B32 + B32.lower(), max_size=500))
@settings(max_examples=300)
def test_arbitrary_base32_bodies_raise_only_code_error(body: str) -> None:
    with pytest.raises(CodeError):
        LinkCode.parse(LINK_PREFIX + body)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_checksummed_payloads_decode_or_raise_code_error(payload: bytes) -> None:
    data = payload + zlib.crc32(payload).to_bytes(4, "big")
    try:
        code = LinkCode.from_binary(data)
    except CodeError:
        return
    assert code.to_binary() == data  # anything accepted is canonical


@pytest.mark.parametrize("kwargs", [
    {"invitation_id": b"x" * 15},
    {"secret": b"x" * 31},
    {"target": b"x" * 33},
    {"host_device_key": "k" * 32},
    {"auth": AuthMethod.SHORT},
    {"expires_at": 2**32},
    {"expires_at": -1},
    {"expires_at": 1.5},
    {"hints": (("127.0.0.1", 0),)},
    {"hints": (("127.0.0.1", 65536),)},
    {"hints": (("localhost", 80),)},
    {"hints": (("fe80::1%eth0", 80),)},
    {"hints": (("127.0.0.1", 80),) * (MAX_HINTS + 1)},
])
def test_link_code_constructor_validates(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "kind": InvitationKind.SPACE, "invitation_id": b"i" * 16, "secret": b"s" * 32,
        "target": b"t" * 32, "host_device_key": b"h" * 32, "auth": AuthMethod.NONE,
        "expires_at": 1, "hints": (),
    }
    base.update(kwargs)
    with pytest.raises(CodeError):
        LinkCode(**base)  # type: ignore[arg-type]


# -- Damm check digit ----------------------------------------------------------


def test_damm_detects_all_single_errors_and_adjacent_transpositions() -> None:
    # Exhaustive over every 4-digit payload: the properties are per position
    # pair of the quasigroup, so this covers every case the table can show.
    for n in range(10_000):
        payload = f"{n:04d}"
        word = payload + damm_check_digit(payload)
        assert damm_valid(word)
        for i in range(len(word)):
            for d in "0123456789":
                if d != word[i]:
                    assert not damm_valid(word[:i] + d + word[i + 1:])
            if i + 1 < len(word) and word[i] != word[i + 1]:
                swapped = word[:i] + word[i + 1] + word[i] + word[i + 2:]
                assert not damm_valid(swapped)


def test_luhn_would_have_missed_09_90() -> None:
    # Why not Luhn: the reason stated in codes.damm_check_digit, checked.
    def luhn_sum(s: str) -> int:
        total = 0
        for i, ch in enumerate(reversed(s)):
            v = int(ch) * (2 if i % 2 else 1)
            total += v - 9 if v > 9 else v
        return total % 10

    assert luhn_sum("090") == luhn_sum("900")
    assert damm_check_digit("09") != damm_check_digit("90")


# -- trivial-code rule --------------------------------------------------------


@pytest.mark.parametrize("s", [
    "0000000", "9999999", "1234567", "7654321", "8901234", "3210987", "1357913",
    "0246802", "1212121", "9090909", "1231231", "9079079", "000000", "123456", "654321",
    "121212", "123123", "135791",
])
def test_trivial_patterns_are_trivial(s: str) -> None:
    assert is_trivial_digits(s)


@pytest.mark.parametrize("s", ["1234568", "9071234", "5550123", "3141592", "271828", "112358"])
def test_ordinary_digits_are_not_trivial(s: str) -> None:
    assert not is_trivial_digits(s)


def _constructed_trivial(n: int) -> set[str]:
    out = set()
    for start in range(10):
        for step in range(10):
            out.add("".join(str((start + step * i) % 10) for i in range(n)))
    for p in (2, 3):
        for k in range(10**p):
            unit = f"{k:0{p}d}"
            out.add((unit * n)[:n])
    return out


@pytest.mark.parametrize("n", [6, 7])
def test_trivial_rule_is_exactly_progressions_and_short_periods(n: int) -> None:
    trivial = _constructed_trivial(n)
    assert len(trivial) <= 1200  # the documented bound
    assert all(is_trivial_digits(s) for s in trivial)
    rng = random.Random(n)
    sample = {f"{rng.randrange(10**n):0{n}d}" for _ in range(20_000)}
    for s in sample - trivial:
        assert not is_trivial_digits(s), s


# -- short codes -----------------------------------------------------------------


@given(short_codes)
def test_short_code_round_trips(code: ShortCode) -> None:
    text = code.encode()
    assert len(text) == 14
    assert text[4] == "-"
    assert text[9] == "-"
    assert ShortCode.parse(text) == code
    plain = text.replace("-", "")
    assert ShortCode.parse(plain) == code
    assert ShortCode.parse(f" {plain[:4]} {plain[4:8]} {plain[8:]} ") == code
    assert plain[:4] == code.discriminator
    assert plain[4:11] == code.secret
    assert code.password == code.secret.encode()


@given(short_codes)
def test_every_short_code_digit_substitution_is_detected(code: ShortCode) -> None:
    plain = code.encode().replace("-", "")
    for i in range(12):
        for d in "0123456789":
            if d != plain[i]:
                with pytest.raises(CodeError, match="not a valid p2pinvite code"):
                    ShortCode.parse(plain[:i] + d + plain[i + 1:])


@given(short_codes)
def test_every_short_code_adjacent_transposition_is_detected(code: ShortCode) -> None:
    plain = code.encode().replace("-", "")
    for i in range(11):
        if plain[i] != plain[i + 1]:
            with pytest.raises(CodeError):
                ShortCode.parse(plain[:i] + plain[i + 1] + plain[i] + plain[i + 2:])


def test_short_code_generation_is_valid_and_never_trivial() -> None:
    seen = set()
    for _ in range(300):
        code = ShortCode.generate()
        assert not is_trivial_digits(code.secret)
        assert ShortCode.parse(code.encode()) == code
        seen.add(code.secret)
    assert len(seen) > 290  # a CSPRNG over 10^7 values does not repeat much
    assert ShortCode.generate("0042").discriminator == "0042"


def test_trivial_short_code_is_refused_at_parse_even_with_a_valid_check_digit() -> None:
    payload = "4242" + "1234567"
    text = payload + damm_check_digit(payload)
    with pytest.raises(CodeError, match="trivial"):
        ShortCode.parse(text)
    with pytest.raises(CodeError, match="trivial"):
        ShortCode("4242", "1111111")


@pytest.mark.parametrize("text", [
    "", "1234-5678-901", "1234-5678-90123", "abcd-efgh-ijkl", "1234_5678_9012",
    "١٢٣٤٥٦٧٨٩٠١٢", "1" * 100, "12345678901x",
])
def test_garbage_short_codes_raise_code_error(text: str) -> None:
    with pytest.raises(CodeError):
        ShortCode.parse(text)


@given(st.text(max_size=80))
def test_arbitrary_text_short_code_raises_only_code_error(text: str) -> None:
    try:
        code = ShortCode.parse(text)
    except CodeError:
        return
    assert code.encode().replace("-", "") == "".join(text.split()).replace("-", "")


def test_short_code_repr_hides_the_secret() -> None:
    code = ShortCode("4242", "9071234")
    assert "9071234" not in repr(code)
    assert "4242" in repr(code)


# -- PINs ------------------------------------------------------------------------


def test_generated_pins_are_six_nontrivial_digits() -> None:
    pins = [generate_pin() for _ in range(300)]
    for pin in pins:
        assert len(pin) == 6
        assert set(pin) <= set("0123456789")
        assert not is_trivial_digits(pin)
        assert parse_pin(pin) == pin
    assert len(set(pins)) > 280


def test_parse_pin_normalises_and_refuses() -> None:
    assert parse_pin(" 907 123 ") == "907123"
    assert parse_pin("907-123") == "907123"
    for bad in ["123456", "000000", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "9" * 100]:
        with pytest.raises(CodeError, match="not a valid PIN"):
            parse_pin(bad)
