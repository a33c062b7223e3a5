"""Sealed candidates: round trips, refusals, the binding of key and side, limits."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from p2pinvite.errors import BadTag, DecodeError, FrameTooLarge, LocalProtocolError
from p2pinvite.rendezvous.candidates import (
    AD_LABEL,
    MAX_ADDRS,
    MAX_CANDIDATES,
    MAX_SEALED,
    Candidates,
    decode_candidates,
    encode_candidates,
    open_candidates,
    seal_candidates,
)
from p2pinvite.rendezvous.names import SIDES, for_invitation
from p2pinvite.wire import pack

KEY = for_invitation(bytes(range(32))).sealing_key
OTHER_KEY = for_invitation(bytes(32)).sealing_key
S0, S1 = SIDES

_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_port = st.integers(1, 65535)
_addr = st.tuples(st.one_of(_ipv4, _ipv6), _port).filter(
    lambda a: a[0] not in ("0.0.0.0", "::") and not a[0].startswith(("ff", "22", "23")))


@st.composite
def _candidates(draw: st.DrawFn) -> Candidates:
    addrs = draw(st.lists(_addr, max_size=MAX_ADDRS))
    relay = draw(st.one_of(st.none(), _addr,
                           st.tuples(st.sampled_from(["relay.example.net", "localhost",
                                                      "a-b.c", "transit.magic-wormhole.io."]),
                                     _port)))
    return Candidates(tuple(addrs), relay)


def _usable(c: Candidates) -> bool:
    try:
        encode_candidates(c)
    except LocalProtocolError:  # a multicast draw: refused, as it should be
        return False
    return True


@given(_candidates())
def test_round_trip(c: Candidates) -> None:
    if not _usable(c):
        return
    box = seal_candidates(KEY, c, sender_side=S0)
    assert len(box) <= MAX_SEALED
    got = open_candidates(KEY, box, sender_side=S0)
    assert got == Candidates(tuple((str(h), p) for h, p in c.addrs), c.relay)
    assert seal_candidates(KEY, c, sender_side=S0) != box  # a fresh nonce each time


def test_the_largest_message_fits_the_limits() -> None:
    long_name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
    addrs = tuple(("2001:db8:ffff:ffff:ffff:ffff:ffff:fffe", 65535)
                  for _ in range(MAX_ADDRS))
    c = Candidates(addrs, (long_name, 65535))
    plain = encode_candidates(c)
    assert len(plain) <= MAX_CANDIDATES
    assert open_candidates(KEY, seal_candidates(KEY, c, sender_side=S1), sender_side=S1).relay \
        == (long_name, 65535)


def test_another_side_key_or_tampering_does_not_open() -> None:
    box = seal_candidates(KEY, Candidates((("192.0.2.1", 1),)), sender_side=S0)
    with pytest.raises(BadTag):  # reflected back to its sender as if the other side wrote it
        open_candidates(KEY, box, sender_side=S1)
    with pytest.raises(BadTag):
        open_candidates(OTHER_KEY, box, sender_side=S0)
    for i in (0, 12, len(box) - 1):
        bad = bytearray(box)
        bad[i] ^= 1
        with pytest.raises(BadTag):
            open_candidates(KEY, bytes(bad), sender_side=S0)
    with pytest.raises(DecodeError):
        open_candidates(KEY, box[:27], sender_side=S0)
    with pytest.raises(FrameTooLarge):
        open_candidates(KEY, bytes(MAX_SEALED + 1), sender_side=S0)


@pytest.mark.parametrize("value", [
    {"v": 1, "addrs": [], "relay": None, "x": 1},               # unknown field
    {"v": 1, "addrs": []},                                      # missing field
    {"v": 2, "addrs": [], "relay": None},                       # version
    {"v": True, "addrs": [], "relay": None},
    {"v": 1, "addrs": [["192.0.2.1", 1]] * 9, "relay": None},   # too many
    {"v": 1, "addrs": [["192.0.2.1", 0]], "relay": None},       # port 0
    {"v": 1, "addrs": [["192.0.2.1", 65536]], "relay": None},
    {"v": 1, "addrs": [["192.0.2.1", True]], "relay": None},
    {"v": 1, "addrs": [["host.example", 1]], "relay": None},    # names only for the relay
    {"v": 1, "addrs": [["0.0.0.0", 1]], "relay": None},
    {"v": 1, "addrs": [["224.0.0.251", 5353]], "relay": None},
    {"v": 1, "addrs": [["fe80::1%eth0", 1]], "relay": None},    # a scope id
    {"v": 1, "addrs": [["192.0.2.1", 1, 2]], "relay": None},
    {"v": 1, "addrs": [[b"192.0.2.1", 1]], "relay": None},
    {"v": 1, "addrs": {}, "relay": None},
    {"v": 1, "addrs": [], "relay": ["bad host!", 1]},
    {"v": 1, "addrs": [], "relay": ["-lead.example", 1]},
    {"v": 1, "addrs": [], "relay": ["a..b", 1]},
    {"v": 1, "addrs": [], "relay": ["x" * 254, 1]},
    {"v": 1, "addrs": [], "relay": "relay.example:1"},
    {"v": 1, "addrs": [], "relay": ["relay.example", 70000]},
    [1, [], None],
])
def test_malformed_plaintexts_are_refused(value: object) -> None:
    with pytest.raises(DecodeError):
        decode_candidates(pack(value))
    # ... and sealed, they still fail after opening: authenticity is not validity.
    nonce = bytes(12)
    box = nonce + ChaCha20Poly1305(KEY).encrypt(nonce, pack(value), AD_LABEL + b"\x00" +
                                                S0.encode())
    with pytest.raises(DecodeError):
        open_candidates(KEY, box, sender_side=S0)


def test_sealing_out_of_bounds_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        encode_candidates(Candidates(tuple(("192.0.2.1", 1) for _ in range(MAX_ADDRS + 1))))
    with pytest.raises(LocalProtocolError):
        encode_candidates(Candidates((("not an ip", 1),)))
    with pytest.raises(LocalProtocolError):
        seal_candidates(b"short", Candidates(), sender_side=S0)
    with pytest.raises(LocalProtocolError):
        seal_candidates(KEY, Candidates(), sender_side="")
    with pytest.raises(LocalProtocolError):
        seal_candidates(KEY, Candidates(), sender_side=S0, nonce=b"\x00" * 11)
    with pytest.raises(LocalProtocolError):
        open_candidates(KEY, b"\x00" * 40, sender_side="é")


def test_addresses_come_back_normalised() -> None:
    c = decode_candidates(pack({"v": 1, "addrs": [["2001:DB8:0:0::1", 80]],
                                "relay": ["RELAY.Example.net", 4001]}))
    assert c.addrs == (("2001:db8::1", 80),)
    assert c.relay == ("RELAY.Example.net", 4001)  # a DNS name is kept as written
