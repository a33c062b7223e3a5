"""Chunked log delivery: a space log larger than one message reaches the guest in bounded
chunks (``admitted`` with a count, then ``entries``), and a host cannot make the guest
buffer without bound."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import DecodeError, FrameTooLarge, RemoteProtocolError
from p2pinvite.halo.credentials import Role, issue_space_genesis, issue_space_member
from p2pinvite.halo.keys import SigningKey
from p2pinvite.invitations import protocol as p
from p2pinvite.invitations.protocol import (
    AdmissionReceived,
    AdmittedMsg,
    EntriesMsg,
    SendMessage,
    State,
    chunk_entries,
    decode_message,
    encode_message,
)
from p2pinvite.invitations.protocol import guest as guest_machine
from p2pinvite.wire import pack

from .pairing_nodes import Node, open_node
from .test_protocol import Run, one, open_run

GRANT = p.SwarmGrant(1, bytes(range(p.SWARM_BOX)))


def _admitting_pair() -> Run:
    """A none-method run stopped where the host decides the admission."""
    r = Run(method="none")
    r.g(r.guest.connecting())
    _, (challenge,) = open_run(r, "none")
    r.guest.receive_message(challenge)
    r.host.receive_message(one(r.guest.host_verified()))
    assert r.guest.state is State.ADMITTING
    return r


def _log(n: int, size: int = 600) -> list[bytes]:
    return [i.to_bytes(4, "big") * (size // 4) for i in range(n)]


# -- sans-IO ----------------------------------------------------------------------------


def test_small_log_is_one_admitted_without_count() -> None:
    r = _admitting_pair()
    out = r.host.admit(b"cred", [b"e0", b"e1"], GRANT)
    assert [type(e.message) for e in out if isinstance(e, SendMessage)] == [AdmittedMsg]
    assert decode_message(out[0].data) == AdmittedMsg(b"cred", (b"e0", b"e1"), GRANT)
    received = r.guest.receive_message(out[0].data)
    assert received == [AdmissionReceived(b"cred", (b"e0", b"e1"), GRANT)]


def test_large_log_travels_in_bounded_chunks_and_is_reassembled() -> None:
    r = _admitting_pair()
    log = _log(5000)
    out = r.host.admit(b"cred", log, GRANT)
    assert r.host.state is State.SUCCESS
    msgs = [decode_message(e.data) for e in out]
    assert isinstance(msgs[0], AdmittedMsg)
    assert msgs[0].count == 5000
    assert all(isinstance(m, EntriesMsg) for m in msgs[1:])
    assert len(msgs) > 2
    assert all(len(e.data) <= p.MAX_CHUNK_BYTES for e in out)
    for e in out[:-1]:
        assert r.guest.receive_message(e.data) == []
        assert r.guest.state is State.ADMITTING
    received = r.guest.receive_message(out[-1].data)
    assert received == [AdmissionReceived(b"cred", tuple(log), GRANT)]
    r.guest.admission_verified()
    assert r.guest.state is State.SUCCESS


def test_chunks_respect_item_and_byte_limits() -> None:
    tiny = chunk_entries([b"x"] * (p.MAX_ENTRIES * 2 + 1))
    assert [len(c) for c in tiny] == [p.MAX_ENTRIES, p.MAX_ENTRIES, 1]
    big = chunk_entries(_log(300, p.MAX_ENTRY))
    assert sum(map(len, big)) == 300
    for i, c in enumerate(big):
        msg = AdmittedMsg(b"c" * p.MAX_CREDENTIAL, c, GRANT, 300) if i == 0 else EntriesMsg(c)
        assert len(encode_message(msg)) <= p.MAX_CHUNK_BYTES


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.one_of(st.integers(1, 2 * 1024), st.integers(p.MAX_ENTRY - 64,
                                                                     p.MAX_ENTRY)),
                      min_size=1, max_size=1500),
       epoch=st.sampled_from([1, 2**16, 2**32 - 1]))
def test_every_chunk_fits_one_message_whatever_the_entry_sizes(sizes: list[int],
                                                               epoch: int) -> None:
    # The first chunk rides in an ``admitted`` with the largest credential, the
    # swarm grant (its epoch as wide as it gets) and a count: all of it counts.
    log = [bytes(n) for n in sizes]
    chunks = chunk_entries(log)
    assert [e for c in chunks for e in c] == log
    grant = p.SwarmGrant(epoch, bytes(p.SWARM_BOX))
    first = AdmittedMsg(b"c" * p.MAX_CREDENTIAL, chunks[0], grant,
                        p.MAX_LOG_ENTRIES if len(chunks) > 1 else None)
    assert len(encode_message(first)) <= p.MAX_CHUNK_BYTES
    for c in chunks[1:]:
        assert len(encode_message(EntriesMsg(c))) <= p.MAX_CHUNK_BYTES


def test_a_full_first_chunk_leaves_room_for_the_swarm_grant() -> None:
    # A log that fills the first chunk to the byte, found when the grant was added.
    log = [bytes(256)] * 995 + [bytes(273)] + [bytes(256)] * 10
    first = chunk_entries(log)[0]
    msg = AdmittedMsg(b"c" * p.MAX_CREDENTIAL, first, p.SwarmGrant(2**32 - 1,
                      bytes(p.SWARM_BOX)), len(log))
    assert len(encode_message(msg)) <= p.MAX_CHUNK_BYTES


def test_host_refuses_to_send_an_empty_or_oversized_log() -> None:
    r = _admitting_pair()
    with pytest.raises(p.LocalProtocolError):
        r.host.admit(b"cred", [], GRANT)
    with pytest.raises(p.LocalProtocolError):
        r.host.admit(b"cred", [b"x" * (p.MAX_ENTRY + 1)], GRANT)
    assert r.host.state is State.ADMITTING


def _partial(r: Run, count: int, first: tuple[bytes, ...] = (b"e0",)) -> None:
    assert r.guest.receive_message(encode_message(AdmittedMsg(b"cred", first, GRANT, count))) == []


def test_guest_refuses_more_entries_than_announced() -> None:
    r = _admitting_pair()
    _partial(r, 3)
    with pytest.raises(RemoteProtocolError, match="more entries than"):
        r.guest.receive_message(encode_message(EntriesMsg((b"e1", b"e2", b"e3"))))
    assert r.guest.state is State.ERROR


def test_guest_refuses_entries_out_of_turn_and_refusal_after_admitted() -> None:
    r = _admitting_pair()
    with pytest.raises(RemoteProtocolError, match="unexpected 'entries'"):
        r.guest.receive_message(encode_message(EntriesMsg((b"e1",))))
    r = _admitting_pair()
    _partial(r, 3)
    with pytest.raises(RemoteProtocolError, match="unexpected 'refused'"):
        r.guest.receive_message(encode_message(p.RefusedMsg("x")))
    # The host never accepts either message.
    r = Run()
    r.host.connected(r.hs)
    with pytest.raises(RemoteProtocolError):
        r.host.receive_message(encode_message(EntriesMsg((b"e1",))))


def test_guest_caps_the_total_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest_machine, "MAX_LOG_BYTES", 2500)
    r = _admitting_pair()
    _partial(r, 10, (b"a" * 1000,))
    assert r.guest.receive_message(encode_message(EntriesMsg((b"b" * 1000,)))) == []
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        r.guest.receive_message(encode_message(EntriesMsg((b"c" * 1000,))))
    assert r.guest.state is State.ERROR


@pytest.mark.parametrize("bad", [
    {"t": "admitted", "credential": b"c", "entries": [b"e"], "count": 1},  # nothing announced
    {"t": "admitted", "credential": b"c", "entries": [b"e"], "count": 0},
    {"t": "admitted", "credential": b"c", "entries": [b"e"], "count": p.MAX_LOG_ENTRIES + 1},
    {"t": "admitted", "credential": b"c", "entries": []},
    {"t": "entries", "entries": []},
    {"t": "entries", "entries": [b"e"], "count": 3},
    {"t": "entries", "entries": ["text"]},
    {"t": "entries", "entries": [b"x" * (p.MAX_ENTRY + 1)]},
])
def test_malformed_chunk_messages(bad: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        decode_message(pack(bad))


def test_a_message_above_the_chunk_cap_is_refused_before_decoding() -> None:
    data = pack({"t": "entries", "entries": [b"x" * 8000] * 40})
    assert len(data) > p.MAX_CHUNK_BYTES
    with pytest.raises(FrameTooLarge):
        decode_message(data)


# -- end to end: a space of 5,000 members ---------------------------------------------


def _install_big_space(host: Node, members: int) -> bytes:
    """A space owned by the host's identity with *members* READERs, installed on the host."""
    ident = host.identity
    space_key = SigningKey.generate()
    space = space_key.public_key
    chain = tuple(ident.device_chain())
    genesis = issue_space_genesis(space_key, owner=ident.identity_key, name="Big")
    last = issue_space_member(space_key, issuer=space, space=space, member=ident.identity_key,
                              role=Role.OWNER, name="Alice", parents=[genesis.id])
    creds = [genesis.encode(), last.encode()]
    for i in range(members):
        member = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=32).digest()
        last = issue_space_member(
            ident.device, issuer=ident.identity_key, space=space, member=member,
            role=Role.READER, name=f"member {i}", parents=[last.id], chain=chain)
        creds.append(last.encode())
    return host.spaces.import_space(creds, expected=space)


async def test_pairing_into_a_space_of_5000_members(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest:
        space = _install_big_space(host, 5000)
        entries = host.spaces.open_space(space).raw_entries()
        assert len(pack(entries)) > 1 << 20  # would not fit one secure-stream message
        created = await host.manager.create(kind="space", space_id=space, auth="pin")
        with trio.fail_after(60):
            events = await guest.accept(created.code, pin=created.pin)
        assert events[-1].state is State.SUCCESS, events[-1]
        assert guest.spaces.list_spaces() == [space]
        assert len(guest.spaces.members(space)) == 5002  # owner, 5000 readers, Bob
        assert guest.spaces.open_space(space).raw_entries() == \
            host.spaces.open_space(space).raw_entries()
        inv = host.manager.get(created.invitation.id)
        assert (inv.uses, inv.failed_attempts) == (1, 0)
