"""Invitation records (status, encoding) and the durable invitation store."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import (
    UNIFORM_REFUSAL,
    DecodeError,
    InvitationError,
    LocalProtocolError,
    StorageError,
)
from p2pinvite.invitations.codes import ShortCode, is_trivial_digits
from p2pinvite.invitations.model import (
    DEFAULT_EXPIRY_LINK,
    DEFAULT_EXPIRY_SHORT,
    MAX_ACCEPTED_RECORDED,
    AuthMethod,
    InvalidInvitation,
    Invitation,
    InvitationKind,
    InvitationStatus,
    PeerRefusal,
    refusal_for_peer,
)
from p2pinvite.invitations.store import (
    FILE_MAGIC,
    InvitationRecordCorrupted,
    InvitationStore,
)

T0 = 1_700_000_000.0
ME = b"\x11" * 32
SPACE = b"\x22" * 32
GUEST = b"\x33" * 32
DAY = 86400.0


def record(**kw: Any) -> Invitation:
    base: dict[str, Any] = {
        "id": b"\x01" * 16, "kind": InvitationKind.SPACE, "target": SPACE, "role": "editor",
        "auth": AuthMethod.NONE, "secret": b"\x05" * 32, "created_at": T0,
        "expires_at": T0 + DAY, "created_by": ME,
    }
    base.update(kw)
    return Invitation(**base)


def open_store(tmp_path: Path, **kw: Any) -> InvitationStore:
    return InvitationStore.open(tmp_path / "invitations", **kw)


def new_space_invite(store: InvitationStore, **kw: Any) -> Invitation:
    args: dict[str, Any] = {"kind": InvitationKind.SPACE, "target": SPACE, "role": "editor",
                            "created_by": ME, "now": T0}
    args.update(kw)
    return store.create(**args)


def spend_attempt(store: InvitationStore, inv_id: bytes, now: float) -> int:
    """A wrong proof as the host handles it: checked usable, counted, flushed; attempts left."""
    store.check_usable(inv_id, now)
    left = store.count_failed_attempt(inv_id, now)
    assert store.flush(inv_id) is True
    return left


# -- status derivation ---------------------------------------------------------

REVOKED = {"revoked_at": T0 + 1, "revoked_by": ME}
USED1 = {"uses": 1, "accepted_by": ((GUEST, T0 + 1),)}


@pytest.mark.parametrize(("fields", "now", "status"), [
    ({}, T0, InvitationStatus.PENDING),
    ({}, T0 + DAY - 0.001, InvitationStatus.PENDING),
    ({}, T0 + DAY, InvitationStatus.EXPIRED),  # expires_at is the first unusable instant
    (USED1, T0 + 2, InvitationStatus.EXHAUSTED),  # single use, accepted
    ({**USED1, "max_uses": 2}, T0 + 2, InvitationStatus.ACCEPTED),
    ({**USED1, "max_uses": None}, T0 + 2, InvitationStatus.ACCEPTED),
    ({**USED1, "max_uses": 2}, T0 + DAY, InvitationStatus.EXPIRED),
    ({"max_uses": None}, T0 + DAY, InvitationStatus.EXPIRED),
    ({"failed_attempts": 2}, T0, InvitationStatus.PENDING),
    ({"failed_attempts": 3, "locked_at": T0}, T0, InvitationStatus.LOCKED),
    (REVOKED, T0 + 2, InvitationStatus.REVOKED),
    # priority: revoked > locked > exhausted > expired > accepted > pending
    ({**REVOKED, "failed_attempts": 3, "locked_at": T0, **USED1}, T0 + 2 * DAY,
     InvitationStatus.REVOKED),
    ({"failed_attempts": 3, "locked_at": T0, **USED1}, T0 + 2 * DAY, InvitationStatus.LOCKED),
    (USED1, T0 + 2 * DAY, InvitationStatus.EXHAUSTED),
])
def test_status_is_derived_by_priority(fields: dict[str, Any], now: float,
                                       status: InvitationStatus) -> None:
    inv = record(**fields)
    assert inv.status(now) is status
    usable = status in (InvitationStatus.PENDING, InvitationStatus.ACCEPTED)
    assert inv.is_usable(now) is usable
    err = inv.refusal(now)
    assert (err is None) is usable
    if err is not None:
        assert err.reason == status.value


# -- record validation and encoding ------------------------------------------


@pytest.mark.parametrize("fields", [
    {"id": b"x" * 15},
    {"target": b"x" * 31},
    {"secret": b"x" * 33},
    {"role": "owner"},  # the owner is named by genesis, never invited
    {"role": None},
    {"role": "god"},
    {"kind": InvitationKind.DEVICE},  # with role "editor"
    {"kind": "space"},
    {"pin": "123456"},  # auth none
    {"auth": AuthMethod.PIN},  # no pin
    {"auth": AuthMethod.PIN, "pin": "12345"},
    {"auth": AuthMethod.SHORT, "short_discriminator": "1234"},
    {"auth": AuthMethod.KEY},
    {"admission_key": b"k" * 32},
    {"max_uses": 0},
    {"max_uses": True},
    {"uses": 2},
    {"failed_attempts": 4},
    {"failed_attempts": 3},  # locked without its lock time
    {"locked_at": T0},  # a lock time while attempts are left
    {"max_attempts": 0},
    {"expires_at": T0},
    {"expires_at": float("inf")},
    {"created_at": float("nan")},
    {"expires_at": 2.0**32},
    {"note": "x" * 2000},
    {"accepted_by": ((GUEST, T0),)},  # more acceptances than uses
    {"revoked_at": T0},  # without revoked_by
])
def test_invalid_records_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidInvitation):
        record(**fields)


def test_record_repr_hides_secrets() -> None:
    inv = record(auth=AuthMethod.SHORT, short_discriminator="4242", short_secret="9071234",
                 role="reader")
    pinned = record(auth=AuthMethod.PIN, pin="907123")
    for text in (repr(inv), repr(pinned)):
        assert (b"\x05" * 32).hex() not in text
        assert repr(b"\x05" * 32) not in text
        assert "9071234" not in text
        assert "907123" not in text
    assert "4242" in repr(inv)


records_st = st.builds(
    lambda auth, kind, max_uses, uses, fails, note, revoked, key: record(
        id=key[:16], secret=key, kind=kind,
        role="reader" if kind is InvitationKind.SPACE else None,
        auth=auth,
        pin="907123" if auth is AuthMethod.PIN else None,
        short_discriminator="0042" if auth is AuthMethod.SHORT else None,
        short_secret="9071234" if auth is AuthMethod.SHORT else None,
        admission_key=key if auth is AuthMethod.KEY else None,
        max_uses=max_uses, uses=min(uses, max_uses or uses),
        accepted_by=((GUEST, T0 + 5),) * min(1, uses, max_uses or uses),
        failed_attempts=fails, locked_at=T0 + 4 if fails == 3 else None, note=note,
        revoked_at=T0 + 3 if revoked else None, revoked_by=ME if revoked else None,
    ),
    st.sampled_from(list(AuthMethod)), st.sampled_from(list(InvitationKind)),
    st.one_of(st.none(), st.integers(1, 100)), st.integers(0, 100), st.integers(0, 3),
    st.text(max_size=50), st.booleans(), st.binary(min_size=32, max_size=32),
)


@given(records_st)
@settings(max_examples=100)
def test_record_encoding_round_trips(inv: Invitation) -> None:
    assert Invitation.from_bytes(inv.to_bytes()) == inv


def test_integer_times_are_normalised_to_floats() -> None:
    inv = record(created_at=int(T0), expires_at=int(T0) + 10)
    assert isinstance(inv.created_at, float)
    assert Invitation.from_bytes(inv.to_bytes()) == inv


@pytest.mark.parametrize("mutate", [
    lambda m: m.pop("note"),
    lambda m: m.update(extra=1),
    lambda m: m.update(v=1),  # the first format, without locked_at
    lambda m: m.update(kind="planet"),
    lambda m: m.update(auth="telepathy"),
    lambda m: m.update(id=b"short"),
    lambda m: m.update(uses="1"),
    lambda m: m.update(uses=True),
    lambda m: m.update(created_at="yesterday"),
    lambda m: m.update(accepted_by=[[GUEST]]),
    lambda m: m.update(accepted_by=[[b"k", T0]]),
    lambda m: m.update(accepted_by="no"),
    lambda m: m.update(role="owner"),
    lambda m: m.update(max_uses=0),
])
def test_record_decoding_is_strict(mutate: Any) -> None:
    m = record().to_map()
    mutate(m)
    with pytest.raises(DecodeError):
        Invitation.from_map(m)


@given(st.binary(max_size=400))
@settings(max_examples=200)
def test_garbage_record_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Invitation.from_bytes(data)


# -- what remote peers learn ------------------------------------------------


@pytest.mark.parametrize(("reason", "left", "expected"), [
    ("wrong_pin", 2, PeerRefusal("wrong_pin", 2)),
    ("wrong_code", 19, PeerRefusal("wrong_code", 19)),
    ("wrong_pin", 0, PeerRefusal(UNIFORM_REFUSAL)),  # the last attempt: now locked
    ("wrong_pin", None, PeerRefusal(UNIFORM_REFUSAL)),
    ("locked", None, PeerRefusal(UNIFORM_REFUSAL)),
    ("expired", None, PeerRefusal(UNIFORM_REFUSAL)),
    ("revoked", None, PeerRefusal(UNIFORM_REFUSAL)),
    ("exhausted", None, PeerRefusal(UNIFORM_REFUSAL)),
    ("reserved", None, PeerRefusal(UNIFORM_REFUSAL)),
    ("unknown", None, PeerRefusal(UNIFORM_REFUSAL)),
    ("locked", 5, PeerRefusal(UNIFORM_REFUSAL)),
])
def test_remote_peers_get_a_uniform_refusal(reason: str, left: int | None,
                                            expected: PeerRefusal) -> None:
    err = InvitationError("precise", reason=reason, attempts_left=left)
    assert refusal_for_peer(err) == expected


# -- store: create -----------------------------------------------------------------


def test_create_applies_documented_defaults(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    link = new_space_invite(store)
    assert link.expires_at == T0 + DEFAULT_EXPIRY_LINK == T0 + 7 * DAY
    assert (link.max_uses, link.uses, link.max_attempts, link.failed_attempts) == (1, 0, 3, 0)
    assert link.status(T0) is InvitationStatus.PENDING
    assert len(link.secret) == 32
    assert len(link.id) == 16
    short = new_space_invite(store, auth=AuthMethod.SHORT)
    assert short.expires_at == T0 + DEFAULT_EXPIRY_SHORT == T0 + 15 * 60
    assert short.max_attempts == 20
    assert short.short_discriminator is not None
    assert short.short_secret is not None
    assert not is_trivial_digits(short.short_secret)
    pinned = new_space_invite(store, auth=AuthMethod.PIN)
    assert pinned.pin is not None
    assert not is_trivial_digits(pinned.pin)
    device = store.create(kind=InvitationKind.DEVICE, target=ME, created_by=ME, now=T0,
                          auth=AuthMethod.KEY, admission_key=GUEST, note="laptop")
    assert (device.role, device.admission_key, device.note) == (None, GUEST, "laptop")
    assert len(store) == 4
    assert link.id != short.id


def test_create_gives_usable_short_codes_distinct_discriminators(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    invs = [new_space_invite(store, auth=AuthMethod.SHORT) for _ in range(30)]
    discs = [inv.short_discriminator for inv in invs]
    assert len(set(discs)) == 30
    assert store.find_short(invs[0].short_discriminator or "", T0) == [invs[0]]
    assert store.find_short(invs[0].short_discriminator or "", T0 + DAY) == []
    given_code = ShortCode("0042", "9071234")
    inv = new_space_invite(store, auth=AuthMethod.SHORT, short_code=given_code)
    assert (inv.short_discriminator, inv.short_secret) == ("0042", "9071234")


@pytest.mark.parametrize("kw", [
    {"max_uses": 0},
    {"max_uses": -1},
    {"expires_at": T0},
    {"expires_at": T0 - 1},
    {"expires_at": "tomorrow"},
    {"role": "owner"},
    {"role": None},
    {"kind": InvitationKind.DEVICE},  # with role "editor"
    {"pin": "907123"},  # auth none
    {"auth": AuthMethod.PIN, "pin": "123456"},  # trivial
    {"auth": AuthMethod.PIN, "pin": "12345"},
    {"short_code": ShortCode("0042", "9071234")},  # auth none
    {"auth": AuthMethod.KEY},  # no admission key
    {"admission_key": GUEST},  # auth none
    {"target": b"short"},
    {"created_by": b""},
    {"max_attempts": 0},
    {"auth": "pin"},
])
def test_create_validates_arguments(tmp_path: Path, kw: dict[str, Any]) -> None:
    store = open_store(tmp_path)
    with pytest.raises(InvalidInvitation):
        new_space_invite(store, **kw)
    assert len(store) == 0
    assert list((tmp_path / "invitations").iterdir()) == []


# -- store: durability and files --------------------------------------------------


def test_records_uses_attempts_and_revocation_survive_reopen(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    a = new_space_invite(store, max_uses=3, auth=AuthMethod.PIN, note="for Ann")
    b = new_space_invite(store)
    r = store.reserve_use(a.id, T0 + 1)
    store.commit_use(r, GUEST, T0 + 2)
    spend_attempt(store, a.id, T0 + 3)
    store.revoke(b.id, by=ME, now=T0 + 4)
    before = {inv.id: inv for inv in store.list(T0, include_all=True)}

    again = open_store(tmp_path)
    after = {inv.id: inv for inv in again.list(T0, include_all=True)}
    assert after == before
    assert again.get(a.id).uses == 1
    assert again.get(a.id).accepted_by == ((GUEST, T0 + 2),)
    assert again.get(a.id).failed_attempts == 1
    assert again.get(a.id).pin == a.pin
    assert again.get(a.id).secret == a.secret
    assert again.get(b.id).status(T0 + 5) is InvitationStatus.REVOKED
    assert again.get(b.id).revoked_by == ME


def test_file_and_directory_modes(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store)
    d = tmp_path / "invitations"
    assert d.stat().st_mode & 0o777 == 0o700
    f = d / f"{inv.id.hex()}.inv"
    assert f.stat().st_mode & 0o777 == 0o600
    assert f.read_bytes().startswith(FILE_MAGIC)
    assert sorted(p.name for p in d.iterdir()) == [f.name]


def test_a_record_readable_by_others_is_refused(tmp_path: Path) -> None:
    inv = new_space_invite(open_store(tmp_path))
    f = tmp_path / "invitations" / f"{inv.id.hex()}.inv"
    os.chmod(f, 0o644)
    with pytest.raises(StorageError, match="0600"):
        open_store(tmp_path)
    os.chmod(f, 0o600)
    os.chmod(tmp_path / "invitations", 0o755)
    with pytest.raises(StorageError, match="0700"):
        open_store(tmp_path)


def test_leftover_temporary_files_are_removed(tmp_path: Path) -> None:
    inv = new_space_invite(open_store(tmp_path))
    d = tmp_path / "invitations"
    tmp = d / f".{inv.id.hex()}.inv.4242.tmp"
    tmp.write_bytes(b"half a record")
    store = open_store(tmp_path)
    assert not tmp.exists()
    assert store.get(inv.id) == inv


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x40
    elif how == "truncate":
        del data[len(data) // 2:]
    elif how == "magic":
        data[0:8] = b"notmagic"
    elif how == "empty":
        data.clear()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate", "magic", "empty", "misnamed"])
def test_corrupt_record_is_quarantined_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str,
) -> None:
    store = open_store(tmp_path)
    bad = new_space_invite(store, auth=AuthMethod.PIN)
    good = new_space_invite(store)
    d = tmp_path / "invitations"
    path = d / f"{bad.id.hex()}.inv"
    if how == "misnamed":  # a valid record under another invitation's name
        path.unlink()
        shutil.copy(d / f"{good.id.hex()}.inv", path)
        os.chmod(path, 0o600)
    else:
        _corrupt(path, how)
    with caplog.at_level(logging.WARNING, logger="p2pinvite.invitations.store"):
        again = open_store(tmp_path)
    assert again.quarantined == (d / f"{bad.id.hex()}.inv.corrupt",)
    assert not path.exists()
    assert (d / f"{bad.id.hex()}.inv.corrupt").exists()
    assert again.get(good.id) == good
    with pytest.raises(InvitationError) as exc:
        again.get(bad.id)  # fails safe: an invitation without a record admits nobody
    assert exc.value.reason == "unknown"
    assert bad.id.hex() in caplog.text
    assert bad.pin is not None
    assert bad.pin not in caplog.text
    # The quarantined file stays put and is ignored on the next open.
    assert len(open_store(tmp_path)) == 1


def test_corrupt_record_can_refuse_to_open(tmp_path: Path) -> None:
    inv = new_space_invite(open_store(tmp_path))
    path = tmp_path / "invitations" / f"{inv.id.hex()}.inv"
    _corrupt(path, "flip")
    with pytest.raises(InvitationRecordCorrupted) as exc:
        open_store(tmp_path, quarantine_corrupt=False)
    assert exc.value.path == path
    assert str(path) in str(exc.value)
    assert path.exists()  # untouched


def test_write_failure_leaves_memory_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store)
    r = store.reserve_use(inv.id, T0)

    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    def disk_full_append(path: Path, frame: bytes, offset: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("p2pinvite.invitations.store.atomic_write", disk_full)
    monkeypatch.setattr("p2pinvite.invitations.store._append_frame", disk_full_append)
    with pytest.raises(StorageError, match="cannot write"):
        store.commit_use(r, GUEST, T0)
    with pytest.raises(StorageError):
        new_space_invite(store)
    assert store.get(inv.id).uses == 0
    assert store.reserved(inv.id) == 1  # still held: the caller releases it
    assert len(store) == 1
    monkeypatch.undo()
    assert store.commit_use(r, GUEST, T0).uses == 1


# -- store: revoke, list, check ----------------------------------------------------


def test_revoke_leaves_a_tombstone_and_is_idempotent(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store)
    first = store.revoke(inv.id, by=ME, now=T0 + 10)
    assert (first.revoked_at, first.revoked_by) == (T0 + 10, ME)
    second = store.revoke(inv.id, by=GUEST, now=T0 + 20)
    assert second == first  # the first revocation's time and author stay
    assert store.get(inv.id) == first
    with pytest.raises(InvitationError) as exc:
        store.check_usable(inv.id, T0 + 11)
    assert exc.value.reason == "revoked"
    with pytest.raises(InvitationError) as exc:
        store.revoke(b"\x00" * 16, by=ME, now=T0)
    assert exc.value.reason == "unknown"


def test_list_shows_usable_by_default_and_everything_on_request(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    pending = new_space_invite(store, now=T0)
    revoked = new_space_invite(store, now=T0 + 1)
    store.revoke(revoked.id, by=ME, now=T0 + 2)
    short_lived = new_space_invite(store, now=T0 + 3, expires_at=T0 + 100)
    multi = new_space_invite(store, now=T0 + 4, max_uses=2)
    store.commit_use(store.reserve_use(multi.id, T0 + 5), GUEST, T0 + 5)
    now = T0 + 200
    assert [i.id for i in store.list(now)] == [pending.id, multi.id]
    assert [i.status(now) for i in store.list(now)] == [InvitationStatus.PENDING,
                                                        InvitationStatus.ACCEPTED]
    everything = store.list(now, include_all=True)
    assert [i.id for i in everything] == [pending.id, revoked.id, short_lived.id, multi.id]
    assert everything[2].status(now) is InvitationStatus.EXPIRED


def test_expiry_follows_the_now_parameter(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, auth=AuthMethod.PIN)
    just_before = T0 + 7 * DAY - 1
    assert store.check_usable(inv.id, just_before) == inv
    assert spend_attempt(store, inv.id, just_before) == 2
    for op in (store.check_usable, store.reserve_use):
        with pytest.raises(InvitationError) as exc:
            op(inv.id, T0 + 7 * DAY)
        assert exc.value.reason == "expired"
    assert store.get(inv.id).status(T0 + 7 * DAY) is InvitationStatus.EXPIRED


async def test_expiry_under_the_autojump_clock(tmp_path: Path, autojump_clock: Any) -> None:
    store = open_store(tmp_path)
    inv = store.create(kind=InvitationKind.DEVICE, target=ME, created_by=ME,
                       now=trio.current_time())
    await trio.sleep(7 * DAY - 1)
    assert store.get(inv.id).is_usable(trio.current_time())
    await trio.sleep(1)
    assert store.get(inv.id).status(trio.current_time()) is InvitationStatus.EXPIRED


# -- store: attempts ---------------------------------------------------------------


def test_three_failed_attempts_lock_even_across_reopen(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, auth=AuthMethod.PIN)
    assert spend_attempt(store, inv.id, T0) == 2
    store = open_store(tmp_path)  # the guest dropped; the daemon restarted
    assert spend_attempt(store, inv.id, T0) == 1
    store = open_store(tmp_path)
    assert spend_attempt(store, inv.id, T0) == 0
    store = open_store(tmp_path)
    assert store.get(inv.id).failed_attempts == 3
    assert store.get(inv.id).status(T0) is InvitationStatus.LOCKED
    for op in (store.check_usable, store.reserve_use):
        with pytest.raises(InvitationError) as exc:
            op(inv.id, T0)
        assert exc.value.reason == "locked"


def test_a_failed_attempt_binds_at_once_and_is_durable_after_flush(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, auth=AuthMethod.PIN)
    path = tmp_path / "invitations" / f"{inv.id.hex()}.inv"
    on_disk = path.read_bytes()
    assert store.count_failed_attempt(inv.id, T0 + 1) == 2
    assert store.get(inv.id).failed_attempts == 1  # what concurrent guests see
    assert store.get(inv.id).attempts_left == 2
    assert store.is_dirty(inv.id)
    assert path.read_bytes() == on_disk  # nothing written yet
    assert open_store(tmp_path).get(inv.id).failed_attempts == 0  # a crash forgets it
    assert store.flush(inv.id) is True
    assert not store.is_dirty(inv.id)
    assert open_store(tmp_path).get(inv.id).failed_attempts == 1


def test_flush_without_a_pending_change_writes_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, auth=AuthMethod.PIN)
    path = tmp_path / "invitations" / f"{inv.id.hex()}.inv"
    on_disk = path.read_bytes()
    assert store.flush(inv.id) is False  # fresh from create
    assert path.read_bytes() == on_disk
    spend_attempt(store, inv.id, T0)
    on_disk = path.read_bytes()
    assert store.flush(inv.id) is False  # already flushed
    assert path.read_bytes() == on_disk
    assert not store.is_dirty(inv.id)


def test_the_last_failed_attempt_locks_in_memory_before_the_flush(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, auth=AuthMethod.PIN)
    # Three guesses checked and counted before any flush (their writes in flight).
    lefts = []
    for _ in range(3):
        store.check_usable(inv.id, T0)
        lefts.append(store.count_failed_attempt(inv.id, T0 + 1))
    assert lefts == [2, 1, 0]
    assert store.get(inv.id).status(T0) is InvitationStatus.LOCKED
    for op in (store.check_usable, store.reserve_use):  # a fourth guess is never checked
        with pytest.raises(InvitationError) as exc:
            op(inv.id, T0)
        assert exc.value.reason == "locked"
    with pytest.raises(InvitationError) as exc:  # nor counted: the budget is never exceeded
        store.count_failed_attempt(inv.id, T0 + 1)
    assert exc.value.reason == "locked"
    assert store.get(inv.id).failed_attempts == 3
    assert open_store(tmp_path).get(inv.id).status(T0) is InvitationStatus.PENDING
    assert store.flush(inv.id) is True  # one write holds all three counts
    assert store.flush(inv.id) is False
    reopened = open_store(tmp_path).get(inv.id)
    assert reopened.failed_attempts == 3
    assert reopened.status(T0) is InvitationStatus.LOCKED


def test_a_failed_flush_keeps_the_count_and_a_later_flush_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, auth=AuthMethod.PIN)

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("p2pinvite.invitations.store.atomic_write", disk_full)
    monkeypatch.setattr("p2pinvite.invitations.store._append_frame", disk_full)
    assert store.count_failed_attempt(inv.id, T0 + 1) == 2
    with pytest.raises(StorageError, match="cannot write"):
        store.flush(inv.id)
    assert store.get(inv.id).failed_attempts == 1  # the count still binds in memory
    assert store.is_dirty(inv.id)
    assert open_store(tmp_path).get(inv.id).failed_attempts == 0
    monkeypatch.undo()
    assert store.flush(inv.id) is True
    assert not store.is_dirty(inv.id)
    assert open_store(tmp_path).get(inv.id).failed_attempts == 1


def test_short_codes_tolerate_twenty_failures(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, auth=AuthMethod.SHORT)
    lefts = [spend_attempt(store, inv.id, T0) for _ in range(20)]
    assert lefts == list(range(19, -1, -1))
    assert store.get(inv.id).status(T0) is InvitationStatus.LOCKED
    assert open_store(tmp_path).get(inv.id).status(T0) is InvitationStatus.LOCKED


def test_unknown_ids_are_refused_everywhere(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    missing = b"\x09" * 16
    for op in (store.check_usable, store.reserve_use):
        with pytest.raises(InvitationError) as exc:
            op(missing, T0)
        assert exc.value.reason == "unknown"
    with pytest.raises(InvitationError) as exc:
        store.count_failed_attempt(missing, T0 + 1)
    assert exc.value.reason == "unknown"
    assert not store.is_dirty(missing)
    with pytest.raises(InvitationError):
        store.get(missing)
    assert missing not in store
    assert list((tmp_path / "invitations").iterdir()) == []


# -- store: uses -----------------------------------------------------------------


async def test_single_use_raced_by_twenty_guests_reserves_one(
    tmp_path: Path, autojump_clock: Any,
) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store)
    holders: list[int] = []
    refused: list[str] = []
    max_held = 0

    async def guest(n: int) -> None:
        nonlocal max_held
        await trio.sleep(n * 0.01)  # staggered arrivals while the winner is admitting
        try:
            r = store.reserve_use(inv.id, T0)
        except InvitationError as exc:
            refused.append(exc.reason)
            return
        holders.append(n)
        max_held = max(max_held, store.reserved(inv.id))
        await trio.sleep(5)  # the admission: credential, log fsync, ...
        store.commit_use(r, GUEST, T0 + 1)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(guest, n)
    assert holders == [0]
    assert max_held == 1
    assert sorted(refused) == ["reserved"] * 19
    assert store.get(inv.id).status(T0 + 2) is InvitationStatus.EXHAUSTED
    with pytest.raises(InvitationError) as exc:
        store.reserve_use(inv.id, T0 + 2)
    assert exc.value.reason == "exhausted"
    assert open_store(tmp_path).get(inv.id).uses == 1


async def test_reservations_from_worker_threads_are_atomic(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, max_uses=3)
    results: list[bool] = []

    def try_reserve() -> None:
        try:
            store.reserve_use(inv.id, T0)
        except InvitationError:
            results.append(False)
        else:
            results.append(True)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(trio.to_thread.run_sync, try_reserve)
    assert results.count(True) == 3
    assert store.reserved(inv.id) == 3


def test_release_frees_the_use_for_a_retry(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store)
    r = store.reserve_use(inv.id, T0)
    with pytest.raises(InvitationError) as exc:
        store.reserve_use(inv.id, T0)
    assert exc.value.reason == "reserved"
    store.release(r)  # the guest's connection dropped
    store.release(r)  # idempotent
    r2 = store.reserve_use(inv.id, T0)
    with pytest.raises(LocalProtocolError):
        store.commit_use(r, GUEST, T0)  # the released reservation is gone
    done = store.commit_use(r2, GUEST, T0 + 1)
    assert done.uses == 1
    assert done.status(T0 + 1) is InvitationStatus.EXHAUSTED
    store.release(r2)  # after commit: a no-op, the use stays
    assert store.get(inv.id).uses == 1
    with pytest.raises(LocalProtocolError):
        store.commit_use(r2, GUEST, T0 + 2)


def test_a_crash_releases_reservations(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store)
    store.reserve_use(inv.id, T0)
    again = open_store(tmp_path)
    assert again.reserved(inv.id) == 0
    again.commit_use(again.reserve_use(inv.id, T0), GUEST, T0)
    assert again.get(inv.id).uses == 1


def test_max_uses_five_admits_exactly_five(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, max_uses=5)
    held = []
    for _ in range(5):
        held.append(store.reserve_use(inv.id, T0))
    with pytest.raises(InvitationError) as exc:
        store.reserve_use(inv.id, T0)
    assert exc.value.reason == "reserved"
    for n, r in enumerate(held, 1):
        after = store.commit_use(r, bytes([n]) * 32, T0 + n)
        assert after.uses == n
        assert after.status(T0 + n) is (
            InvitationStatus.EXHAUSTED if n == 5 else InvitationStatus.ACCEPTED)
    with pytest.raises(InvitationError) as exc:
        store.reserve_use(inv.id, T0 + 10)
    assert exc.value.reason == "exhausted"
    reopened = open_store(tmp_path).get(inv.id)
    assert reopened.uses == 5
    assert [k for k, _ in reopened.accepted_by] == [bytes([n]) * 32 for n in range(1, 6)]


def test_unlimited_invitation_keeps_recent_acceptances(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store, max_uses=None)
    last = inv
    for n in range(MAX_ACCEPTED_RECORDED + 5):
        last = dataclasses.replace(last, uses=last.uses + 1,
                                   accepted_by=(*last.accepted_by, (GUEST, T0 + n))[
                                       -MAX_ACCEPTED_RECORDED:])
    store._write(last)  # fast-forward: 1005 real commits would be 1005 fsyncs
    after = store.commit_use(store.reserve_use(inv.id, T0), ME, T0 + 9999)
    assert after.uses == MAX_ACCEPTED_RECORDED + 6
    assert len(after.accepted_by) == MAX_ACCEPTED_RECORDED
    assert after.accepted_by[-1] == (ME, T0 + 9999)
    assert after.status(T0) is InvitationStatus.ACCEPTED
    assert open_store(tmp_path).get(inv.id) == after


def test_a_reservation_taken_before_revocation_may_commit(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = new_space_invite(store)
    r = store.reserve_use(inv.id, T0)
    store.revoke(inv.id, by=ME, now=T0 + 1)
    after = store.commit_use(r, GUEST, T0 + 2)  # the credential is already in the log
    assert after.uses == 1
    assert after.status(T0 + 2) is InvitationStatus.REVOKED
