"""halo.keys: device keys on disk, the static key binding and its proof."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite import fsutil
from p2pinvite.errors import CryptoError, HandshakeError, KeyFileError
from p2pinvite.halo import keys as keys_mod
from p2pinvite.halo.keys import (
    BINDING_CONTEXT,
    KEY_FILE_SIZE,
    DeviceKeys,
    SigningKey,
    load_or_create_device_keys,
    verify_binding_proof,
    verify_ed25519,
    verify_static_binding,
)
from p2pinvite.wire import pack, unpack

from .strategies import corruptions


def _key_file(home: Path) -> Path:
    return home / "keys" / "device.key"


def test_first_use_creates_private_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    keys = load_or_create_device_keys(home)
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "keys").stat().st_mode & 0o777 == 0o700
    f = _key_file(home)
    assert f.stat().st_mode & 0o777 == 0o600
    assert f.stat().st_size == KEY_FILE_SIZE
    assert sorted(p.name for p in (home / "keys").iterdir()) == ["device.key"]
    assert len(keys.device_public) == len(keys.static_public) == 32


def test_reload_returns_the_same_keys(tmp_path: Path) -> None:
    first = load_or_create_device_keys(tmp_path)
    again = load_or_create_device_keys(tmp_path)
    assert again == first
    assert again.static_binding == first.static_binding
    assert DeviceKeys.load(tmp_path).device_public == first.device_public


def test_save_is_atomic_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = fsutil.atomic_write

    def spy(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        calls.append(path)
        real(path, data, mode=mode)

    monkeypatch.setattr(keys_mod, "atomic_write", spy)
    DeviceKeys.generate().save(tmp_path)
    assert calls == [_key_file(tmp_path)]
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["device.key"]  # no temp left


def test_group_readable_key_file_refused(tmp_path: Path) -> None:
    keys = load_or_create_device_keys(tmp_path)
    os.chmod(_key_file(tmp_path), 0o640)
    with pytest.raises(KeyFileError, match="0600") as info:
        load_or_create_device_keys(tmp_path)
    assert keys.device_seed.hex() not in str(info.value)


def test_open_keys_directory_refused(tmp_path: Path) -> None:
    load_or_create_device_keys(tmp_path)
    os.chmod(tmp_path / "keys", 0o755)
    with pytest.raises(KeyFileError, match="0700"):
        DeviceKeys.load(tmp_path)


def test_missing_key_file_on_load(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        DeviceKeys.load(tmp_path)


@pytest.mark.parametrize("size", [0, 1, KEY_FILE_SIZE - 1, KEY_FILE_SIZE + 1])
def test_wrong_length_refused(tmp_path: Path, size: int) -> None:
    load_or_create_device_keys(tmp_path)
    _key_file(tmp_path).write_bytes(b"\x00" * size)
    with pytest.raises(KeyFileError, match=r"expected 144 bytes|larger"):
        load_or_create_device_keys(tmp_path)


def test_bad_magic_refused(tmp_path: Path) -> None:
    keys = load_or_create_device_keys(tmp_path)
    data = bytearray(keys.to_file_bytes())
    data[0] ^= 1
    _key_file(tmp_path).write_bytes(bytes(data))
    with pytest.raises(KeyFileError, match="magic"):
        DeviceKeys.load(tmp_path)


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(16, KEY_FILE_SIZE - 1), bit=st.integers(0, 7))
def test_any_flipped_key_bit_is_detected(offset: int, bit: int) -> None:
    # Includes the bits X25519 clamping ignores: stored clamped, their flips show.
    keys = DeviceKeys.from_private(b"\x01" * 32, b"\x02" * 32)
    data = bytearray(keys.to_file_bytes())
    data[offset] ^= 1 << bit
    with pytest.raises(KeyFileError, match=r"do not match|clamped") as info:
        DeviceKeys.from_file_bytes(bytes(data))
    assert (b"\x01" * 32).hex() not in str(info.value)


def test_secrets_not_in_repr() -> None:
    keys = DeviceKeys.generate()
    text = repr(keys)
    assert keys.device_seed.hex() not in text
    assert repr(keys.device_seed) not in text
    assert repr(keys.static_private) not in text
    assert "static_private" not in text
    assert "device_seed" not in text
    sk = SigningKey.generate()
    assert repr(sk) == f"SigningKey(public_key={sk.public_key!r})"


def test_static_binding_verifies_and_refuses_other_keys() -> None:
    keys = DeviceKeys.generate()
    verify_static_binding(keys.device_public, keys.static_public, keys.static_binding)
    other = DeviceKeys.generate()
    with pytest.raises(HandshakeError):
        verify_static_binding(other.device_public, keys.static_public, keys.static_binding)
    with pytest.raises(HandshakeError):
        verify_static_binding(keys.device_public, other.static_public, keys.static_binding)
    # The signature is over the domain-separated message, not the bare key.
    assert verify_ed25519(
        keys.device_public, keys.static_binding, BINDING_CONTEXT + keys.static_public
    )
    assert not verify_ed25519(keys.device_public, keys.static_binding, keys.static_public)


def test_binding_proof_round_trip() -> None:
    keys = DeviceKeys.generate()
    proof = keys.binding_proof()
    assert unpack(proof) == {
        "device_key": keys.device_public,
        "static_key": keys.static_public,
        "sig": keys.static_binding,
    }
    assert verify_binding_proof(proof, keys.static_public) == keys.device_public


def test_binding_proof_for_another_static_key_refused() -> None:
    keys, other = DeviceKeys.generate(), DeviceKeys.generate()
    with pytest.raises(HandshakeError, match="another static key"):
        verify_binding_proof(keys.binding_proof(), other.static_public)


def test_binding_proof_with_swapped_device_key_refused() -> None:
    keys, other = DeviceKeys.generate(), DeviceKeys.generate()
    forged = pack(
        {"device_key": other.device_public, "static_key": keys.static_public,
         "sig": keys.static_binding}
    )
    with pytest.raises(HandshakeError, match="not bound"):
        verify_binding_proof(forged, keys.static_public)


@pytest.mark.parametrize(
    "proof",
    [
        b"",
        b"\xc1",
        pack([1, 2, 3]),
        pack({"device_key": b"x" * 31, "static_key": b"y" * 32, "sig": b"z" * 64}),
        pack({"device_key": b"x" * 32, "static_key": b"y" * 32, "sig": b"z" * 64, "e": 1}),
        b"\x00" * 300,
    ],
)
def test_malformed_binding_proofs_refused(proof: bytes) -> None:
    with pytest.raises(HandshakeError):
        verify_binding_proof(proof, b"y" * 32)


_FIXED = DeviceKeys.from_private(b"\x05" * 32, b"\x06" * 32)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_corrupted_binding_proofs_refused(data: st.DataObject) -> None:
    bad = data.draw(corruptions(_FIXED.binding_proof()))
    with pytest.raises(CryptoError):
        verify_binding_proof(bad, _FIXED.static_public)


def test_signing_key_signs_verifiably() -> None:
    sk = SigningKey.from_seed(b"\x07" * 32)
    assert SigningKey.from_seed(b"\x07" * 32).public_key == sk.public_key
    sig = sk.sign(b"msg")
    assert verify_ed25519(sk.public_key, sig, b"msg")
    assert not verify_ed25519(sk.public_key, sig, b"msh")
    assert not verify_ed25519(b"short", sig, b"msg")


@pytest.mark.parametrize(("byte", "bit"), [(0, 0), (0, 1), (0, 2), (31, 6), (31, 7)])
def test_flips_of_clamped_static_bits_are_detected(byte: int, bit: int) -> None:
    # X25519 ignores these bits, so only the canonical (clamped) storage reveals a flip.
    data = bytearray(DeviceKeys.from_private(b"\x01" * 32, b"\x02" * 32).to_file_bytes())
    data[48 + byte] ^= 1 << bit
    with pytest.raises(KeyFileError, match="clamped"):
        DeviceKeys.from_file_bytes(bytes(data))
