"""CPace as a protocol: agreement, failures, misuse, secrecy, and fuzzing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pinvite.crypto.cpace import (
    MAX_AD,
    MAX_CI,
    MAX_PASSWORD,
    MAX_SID,
    CPace,
    CPaceRole,
    calculate_generator,
    decode_message,
    lv_cat,
)
from p2pinvite.crypto.elligator import A, P, encode_u_coordinate, is_square, map_to_curve_elligator2
from p2pinvite.errors import (
    DecodeError,
    FrameTooLarge,
    HandshakeError,
    InvalidKey,
    InvalidPoint,
    LocalProtocolError,
    P2PInviteError,
)

PIN = b"493027"
SID = bytes(range(64))
CI = lv_cat(b"A" * 32, b"B" * 32)

IR = (CPaceRole.INITIATOR, CPaceRole.RESPONDER)
SY = (CPaceRole.SYMMETRIC, CPaceRole.SYMMETRIC)


def pair(
    roles: tuple[CPaceRole, CPaceRole] = IR,
    pw_a: bytes = PIN,
    pw_b: bytes = PIN,
    *,
    ci_b: bytes = CI,
    sid_b: bytes = SID,
) -> tuple[CPace, CPace]:
    a = CPace(pw_a, role=roles[0], sid=SID, ci=CI, ad=b"guest")
    b = CPace(pw_b, role=roles[1], sid=sid_b, ci=ci_b, ad=b"host")
    return a, b


def run(a: CPace, b: CPace) -> tuple[bytes, bytes]:
    msg_a, msg_b = a.message(), b.message()
    return a.receive(msg_b), b.receive(msg_a)


# --------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------


@pytest.mark.parametrize("roles", [IR, SY], ids=["initiator-responder", "symmetric"])
def test_same_password_agrees_and_confirms(roles: tuple[CPaceRole, CPaceRole]) -> None:
    a, b = pair(roles)
    isk_a, isk_b = run(a, b)
    assert isk_a == isk_b
    assert len(isk_a) == 64
    assert a.sid_output() == b.sid_output()
    b.verify_confirmation_tag(a.confirmation_tag())
    a.verify_confirmation_tag(b.confirmation_tag())
    assert a.isk == b.isk == isk_a  # still readable once confirmed


def test_responder_may_receive_before_sending() -> None:
    a, b = pair()
    isk_b = b.receive(a.message())
    assert a.receive(b.message()) == isk_b


def test_runs_are_fresh() -> None:
    a1, b1 = pair()
    a2, b2 = pair()
    assert a1.message() != a2.message()
    assert run(a1, b1)[0] != run(a2, b2)[0]


def test_tags_differ_per_side() -> None:
    a, b = pair()
    run(a, b)
    assert a.confirmation_tag() != b.confirmation_tag()
    assert len(a.confirmation_tag()) == 64


# --------------------------------------------------------------------------
# Wrong password and mismatched inputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("roles", [IR, SY], ids=["initiator-responder", "symmetric"])
def test_wrong_password_fails_confirmation_both_ways(roles: tuple[CPaceRole, CPaceRole]) -> None:
    a, b = pair(roles, pw_b=b"493028")
    isk_a, isk_b = run(a, b)
    assert isk_a != isk_b
    tag_a, tag_b = a.confirmation_tag(), b.confirmation_tag()
    with pytest.raises(HandshakeError):
        b.verify_confirmation_tag(tag_a)
    with pytest.raises(HandshakeError):
        a.verify_confirmation_tag(tag_b)
    # A failed run forgets its key: nobody can use it by ignoring the error.
    for party in (a, b):
        with pytest.raises(LocalProtocolError):
            _ = party.isk
        with pytest.raises(LocalProtocolError):
            party.confirmation_tag()


@pytest.mark.parametrize(
    "kwargs",
    [{"ci_b": CI + b"x"}, {"sid_b": SID[:-1] + b"\xff"}],
    ids=["channel-identifier", "session-id"],
)
def test_mismatched_public_inputs_do_not_agree(kwargs: dict[str, bytes]) -> None:
    a, b = pair(**kwargs)  # type: ignore[arg-type]
    isk_a, isk_b = run(a, b)
    assert isk_a != isk_b
    with pytest.raises(HandshakeError):
        b.verify_confirmation_tag(a.confirmation_tag())


def test_mismatched_mode_does_not_agree() -> None:
    a, b = pair((CPaceRole.INITIATOR, CPaceRole.SYMMETRIC))
    isk_a, isk_b = run(a, b)
    assert isk_a != isk_b


def test_same_role_on_both_sides_does_not_agree() -> None:
    a, b = pair((CPaceRole.INITIATOR, CPaceRole.INITIATOR))
    isk_a, isk_b = run(a, b)
    assert isk_a != isk_b


def test_generator_depends_on_every_input() -> None:
    g = calculate_generator(PIN, CI, SID)
    assert len(g) == 32
    assert calculate_generator(b"493028", CI, SID) != g
    assert calculate_generator(PIN, CI + b"x", SID) != g
    assert calculate_generator(PIN, CI, SID + b"x") != g
    assert calculate_generator(PIN, CI, SID) == g


# --------------------------------------------------------------------------
# Tampering
# --------------------------------------------------------------------------


def test_every_single_byte_flip_is_caught() -> None:
    refused = confirmed_wrong = 0
    for i in range(len(pair()[0].message())):
        a = CPace(PIN, role=CPaceRole.INITIATOR, sid=SID, ci=CI, ad=b"guest")
        b = CPace(PIN, role=CPaceRole.RESPONDER, sid=SID, ci=CI, ad=b"host")
        tampered = bytearray(a.message())
        tampered[i] ^= 0x01
        try:
            b.receive(bytes(tampered))
        except (DecodeError, InvalidPoint):
            refused += 1
            continue
        # Parsed and accepted: it still must not confirm against the real sender.
        a.receive(b.message())
        tag_a, tag_b = a.confirmation_tag(), b.confirmation_tag()
        with pytest.raises(HandshakeError):
            b.verify_confirmation_tag(tag_a)
        with pytest.raises(HandshakeError):
            a.verify_confirmation_tag(tag_b)
        confirmed_wrong += 1
    assert refused > 0
    assert confirmed_wrong > 0


def test_tampered_associated_data_fails_confirmation() -> None:
    a, b = pair()
    msg_a = a.message()
    y, _ad = decode_message(msg_a)
    b.receive(lv_cat(y, b"admin"))  # an attacker rewrote ADa in transit
    a.receive(b.message())
    assert b.peer_ad == b"admin"
    with pytest.raises(HandshakeError):
        b.verify_confirmation_tag(a.confirmation_tag())


def test_tampered_tag_is_refused() -> None:
    a, b = pair()
    run(a, b)
    tag = bytearray(a.confirmation_tag())
    tag[7] ^= 0x80
    with pytest.raises(HandshakeError):
        b.verify_confirmation_tag(bytes(tag))


@pytest.mark.parametrize("tag", [b"", b"\x00" * 63, b"\x00" * 65])
def test_wrong_length_tag_is_refused(tag: bytes) -> None:
    a, b = pair()
    run(a, b)
    with pytest.raises(HandshakeError):
        b.verify_confirmation_tag(tag)


def test_reflected_message_is_refused() -> None:
    a, _ = pair(SY)
    with pytest.raises(InvalidPoint):
        a.receive(a.message())


def test_non_canonical_share_is_refused() -> None:
    a, b = pair()
    y, ad = decode_message(b.message())
    # Same point, non-canonical encoding: u + p (X25519 would reduce it).
    forged = (int.from_bytes(y, "little") + P).to_bytes(32, "little")
    with pytest.raises(InvalidPoint):
        a.receive(lv_cat(forged, ad))


# --------------------------------------------------------------------------
# Malformed messages
# --------------------------------------------------------------------------

GOOD_Y = bytes([9]) + bytes(31)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes.fromhex("ffffff"),  # the draft's Inv_MSG1..4 (earlier revisions)
        bytes.fromhex("ffff03"),
        bytes.fromhex("00ffff03"),
        bytes.fromhex("00ffffff"),
        b"\x20" + GOOD_Y,  # no AD length
        b"\x20" + GOOD_Y + b"\x03AD",  # AD shorter than announced
        b"\x20" + GOOD_Y + b"\x00\x00",  # trailing byte
        b"\x1f" + GOOD_Y[:31] + b"\x00",  # 31-byte share
        b"\x21" + GOOD_Y + b"\x00" + b"\x00",  # 33-byte share
        b"\xa0\x00" + GOOD_Y + b"\x00",  # non-minimal LEB128 for 32
        b"\x20" + GOOD_Y + b"\x80\x00",  # non-minimal LEB128 for 0
        b"\x20" + GOOD_Y + b"\x81\x80\x80\x80\x01",  # length prefix too long
        b"\x20" + GOOD_Y + b"\x81\x08" + bytes(10),  # announces MAX_AD + 1 bytes of AD
    ],
)
def test_malformed_messages_raise_decode_error(data: bytes) -> None:
    a, _ = pair()
    with pytest.raises(DecodeError):
        a.receive(data)
    with pytest.raises(LocalProtocolError):
        a.receive(data)  # the run is over


def test_oversized_message_is_frame_too_large() -> None:
    a, _ = pair()
    with pytest.raises(FrameTooLarge):
        a.receive(b"\x20" + GOOD_Y + bytes(5000))


def test_largest_allowed_ad_is_accepted() -> None:
    a = CPace(PIN, role=CPaceRole.INITIATOR, sid=SID, ci=CI, ad=b"x" * MAX_AD)
    b = CPace(PIN, role=CPaceRole.RESPONDER, sid=SID, ci=CI)
    assert b.receive(a.message()) == a.receive(b.message())
    assert b.peer_ad == b"x" * MAX_AD


# --------------------------------------------------------------------------
# API misuse (LocalProtocolError)
# --------------------------------------------------------------------------


def test_results_need_the_peer_message_first() -> None:
    a, _ = pair()
    with pytest.raises(LocalProtocolError):
        _ = a.isk
    with pytest.raises(LocalProtocolError):
        _ = a.peer_ad
    with pytest.raises(LocalProtocolError):
        a.confirmation_tag()
    with pytest.raises(LocalProtocolError):
        a.verify_confirmation_tag(bytes(64))
    with pytest.raises(LocalProtocolError):
        a.sid_output()


def test_receive_twice_and_verify_twice_are_refused() -> None:
    a, b = pair()
    run(a, b)
    with pytest.raises(LocalProtocolError):
        a.receive(b.message())
    tag_b = b.confirmation_tag()
    a.verify_confirmation_tag(tag_b)
    with pytest.raises(LocalProtocolError):
        a.verify_confirmation_tag(tag_b)


def test_failed_run_refuses_message() -> None:
    a, _ = pair()
    with pytest.raises(DecodeError):
        a.receive(b"")
    with pytest.raises(LocalProtocolError):
        a.message()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"password": b""},
        {"password": b"x" * (MAX_PASSWORD + 1)},
        {"password": "493027"},
        {"ci": b"x" * (MAX_CI + 1)},
        {"sid": b"x" * (MAX_SID + 1)},
        {"ad": b"x" * (MAX_AD + 1)},
        {"sid": "not bytes"},
        {"role": "initiator"},
    ],
    ids=["empty-pw", "long-pw", "str-pw", "long-ci", "long-sid", "long-ad", "str-sid", "str-role"],
)
def test_bad_local_inputs(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"password": PIN, "role": CPaceRole.INITIATOR, "sid": SID}
    args.update(kwargs)
    with pytest.raises(LocalProtocolError):
        CPace(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("scalar", [b"", bytes(31), bytes(33)])
def test_bad_scalar_is_invalid_key(scalar: bytes) -> None:
    with pytest.raises(InvalidKey):
        CPace(PIN, role=CPaceRole.INITIATOR, sid=SID, scalar=scalar)


def test_non_bytes_peer_message_and_tag_are_local_errors() -> None:
    a, b = pair()
    with pytest.raises(LocalProtocolError):
        a.receive(bytearray(b.message()))  # type: ignore[arg-type]
    a.receive(b.message())
    with pytest.raises(LocalProtocolError):
        a.verify_confirmation_tag("tag")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# The password never leaks into reprs or error text
# --------------------------------------------------------------------------

SECRET = b"correct-horse-493027"


def _assert_no_secret(text: str) -> None:
    assert SECRET.decode() not in text
    assert SECRET.hex() not in text
    assert repr(SECRET) not in text


def test_password_not_in_repr_or_state() -> None:
    a = CPace(SECRET, role=CPaceRole.INITIATOR, sid=SID, ci=CI)
    _assert_no_secret(repr(a))
    _assert_no_secret(str(a))
    assert not hasattr(a, "__dict__")
    for slot in CPace.__slots__:
        value = getattr(a, slot)
        assert value != SECRET
        assert value != calculate_generator(SECRET, CI, SID)  # g is as secret


def test_password_not_in_any_error() -> None:
    errors: list[BaseException] = []
    attempts: list[Callable[[], object]] = [
        lambda: CPace(SECRET, role="x", sid=SID),  # type: ignore[arg-type]
        lambda: CPace(SECRET, role=CPaceRole.INITIATOR, sid=SID, scalar=b"1"),
        lambda: CPace(SECRET * 100, role=CPaceRole.INITIATOR, sid=SID),
        lambda: CPace(SECRET, role=CPaceRole.INITIATOR, sid=SID).receive(b"\x00"),
        lambda: CPace(SECRET, role=CPaceRole.INITIATOR, sid=SID).receive(lv_cat(bytes(32), b"")),
        lambda: CPace(SECRET, role=CPaceRole.INITIATOR, sid=SID).isk,
    ]
    for attempt in attempts:
        try:
            attempt()
        except P2PInviteError as exc:
            errors.append(exc)
    a, b = pair(pw_a=SECRET)
    run(a, b)
    try:
        a.verify_confirmation_tag(bytes(64))
    except HandshakeError as exc:
        errors.append(exc)
    assert len(errors) == len(attempts) + 1
    for err in errors:
        _assert_no_secret(str(err))
        _assert_no_secret(repr(err))
        _assert_no_secret(repr(err.args))


# --------------------------------------------------------------------------
# Fuzzing the receive path
# --------------------------------------------------------------------------

_structured = st.builds(
    lambda y, ad: lv_cat(y, ad),
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=40),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(peer_message=st.one_of(st.binary(max_size=80), _structured))
def test_random_peer_messages_give_typed_errors_or_a_useless_key(peer_message: bytes) -> None:
    me = CPace(PIN, role=CPaceRole.RESPONDER, sid=SID, ci=CI, ad=b"host")
    honest = CPace(PIN, role=CPaceRole.INITIATOR, sid=SID, ci=CI, ad=b"guest")
    try:
        isk = me.receive(peer_message)
    except P2PInviteError:
        return
    # Accepted: the key is not the one the real initiator gets, and a forged
    # run cannot pass confirmation against it.
    assert len(isk) == 64
    assert honest.receive(me.message()) != isk
    with pytest.raises(HandshakeError):
        me.verify_confirmation_tag(honest.confirmation_tag())


# --------------------------------------------------------------------------
# Elligator 2
# --------------------------------------------------------------------------


def _draft_reference_map(r: int) -> int:
    # The draft's appendix A.5 formulation (epsilon = Legendre symbol), as a
    # second, independently written statement of the same map.
    v = (-A * pow(1 + 2 * r * r, P - 2, P)) % P
    eps = pow((v * v * v + A * v * v + v) % P, (P - 1) // 2, P)
    eps = -1 if eps == P - 1 else eps
    return (eps * v - (1 - eps) * A * pow(2, P - 2, P)) % P


def _assert_on_curve(u: int, v: int) -> None:
    assert 0 <= u < P
    assert 0 <= v < P
    assert (v * v - (u * u * u + A * u * u + u)) % P == 0


@settings(max_examples=60, deadline=None)
@given(r=st.integers(min_value=0, max_value=2**255 - 1))
def test_elligator2_output_is_on_the_curve(r: int) -> None:
    u, v = map_to_curve_elligator2(r)
    _assert_on_curve(u, v)
    assert u == _draft_reference_map(r)
    assert map_to_curve_elligator2(r + P) == (u, v)  # works on field elements


def test_elligator2_both_branches_and_signs() -> None:
    seen: set[tuple[bool, int]] = set()
    r = 1
    while len(seen) < 2 and r < 1000:
        u, v = map_to_curve_elligator2(r)
        _assert_on_curve(u, v)
        x1 = (-A * pow(1 + 2 * r * r, P - 2, P)) % P
        first_branch = is_square(x1**3 + A * x1 * x1 + x1)
        assert u == (x1 if first_branch else (-x1 - A) % P)
        # RFC 9380: sgn0(y) == 1 on the x1 branch, 0 on the x2 branch.
        assert v % 2 == (1 if first_branch else 0)
        seen.add((first_branch, v % 2))
        r += 1
    assert len(seen) == 2


def test_generator_is_usable_with_x25519() -> None:
    g = calculate_generator(PIN, CI, SID)
    assert int.from_bytes(g, "little") < P
    u = int.from_bytes(g, "little")
    assert is_square(u**3 + A * u * u + u)  # on the curve, not the twist
    assert encode_u_coordinate(u) == g
