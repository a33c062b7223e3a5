"""Swarm secrets: private files, epochs only move forward, hand-over sealed to one device."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2pinvite.errors import BadTag, LocalProtocolError, StorageError
from p2pinvite.halo.keys import DeviceKeys
from p2pinvite.halo.swarm_secrets import (
    SwarmSecret,
    SwarmSecrets,
    open_handover,
    seal_for_device,
)

LOG = bytes(range(32))


def test_created_secrets_survive_a_reopen_in_private_files(tmp_path: Path) -> None:
    store = SwarmSecrets.open(tmp_path)
    first = store.create(LOG)
    assert first.epoch == 1
    assert first.secret != bytes(32)
    with pytest.raises(LocalProtocolError):
        store.create(LOG)
    again = SwarmSecrets.open(tmp_path)
    assert again.get(LOG) == first
    assert again.all() == [first]
    path = tmp_path / "swarm" / f"{LOG.hex()}.swarm"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "swarm").stat().st_mode) == 0o700
    assert first.secret.hex() not in repr(first)


def test_only_newer_epochs_are_installed(tmp_path: Path) -> None:
    store = SwarmSecrets.open(tmp_path)
    assert store.install(SwarmSecret(LOG, 2, b"b" * 32)) is True
    assert store.install(SwarmSecret(LOG, 1, b"a" * 32)) is False  # older: ignored
    assert store.install(SwarmSecret(LOG, 2, b"b" * 32)) is False  # the same: nothing to do
    with pytest.raises(StorageError):
        store.install(SwarmSecret(LOG, 2, b"c" * 32))  # one epoch, one secret
    assert store.install(SwarmSecret(LOG, 3, b"d" * 32)) is True
    assert SwarmSecrets.open(tmp_path).get(LOG) == SwarmSecret(LOG, 3, b"d" * 32)


def test_a_file_others_can_read_or_a_damaged_one_is_refused(tmp_path: Path) -> None:
    SwarmSecrets.open(tmp_path).create(LOG)
    path = tmp_path / "swarm" / f"{LOG.hex()}.swarm"
    os.chmod(path, 0o644)
    with pytest.raises(StorageError):
        SwarmSecrets.open(tmp_path)
    os.chmod(path, 0o600)
    path.write_bytes(b"\x81\xa1v\x09")
    with pytest.raises(StorageError, match="not a swarm secret"):
        SwarmSecrets.open(tmp_path)


def test_a_handed_over_secret_opens_only_for_its_device_log_and_epoch() -> None:
    device, other = DeviceKeys.generate(), DeviceKeys.generate()
    secret = SwarmSecret(LOG, 4, os.urandom(32))
    box = seal_for_device(secret, device.static_public)
    assert open_handover(device.static_private, LOG, 4, box) == secret
    with pytest.raises(BadTag):
        open_handover(other.static_private, LOG, 4, box)
    with pytest.raises(BadTag):
        open_handover(device.static_private, LOG, 5, box)  # replayed as another epoch
    with pytest.raises(BadTag):
        open_handover(device.static_private, bytes(32), 4, box)  # or another log
