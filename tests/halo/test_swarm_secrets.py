"""Swarm secrets: private files, epochs only move forward, hand-over sealed to one device."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from p2pinvite.crypto.noise import public_key
from p2pinvite.crypto.seal import seal
from p2pinvite.errors import BadTag, LocalProtocolError, StorageError
from p2pinvite.halo.keys import DeviceKeys
from p2pinvite.halo.swarm_secrets import (
    SwarmSecret,
    SwarmSecrets,
    open_handover,
    seal_for_device,
)
from p2pinvite.net.topics import Topic

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


def test_the_handover_vector_of_the_protocol_document() -> None:
    # docs/PROTOCOL.md Part 12 §2: the context is built from the documented
    # label, log key and epoch; the box opens to the secret; the secret names
    # the member topic of Part 4.
    v = json.loads((Path(__file__).parents[1] / "vectors" / "swarm-handover.json").read_text())
    h = {k: bytes.fromhex(x) for k, x in v.items() if k not in ("description", "epoch")}
    log, epoch = h["log"], v["epoch"]
    assert h["context"] == (b"p2pinvite/swarm-secret/v1\x00" + log + epoch.to_bytes(4, "big"))
    assert public_key(h["recipient_private"]) == h["recipient_public"]
    box = seal(h["recipient_public"], h["secret"], context=h["context"],
               ephemeral=h["ephemeral_private"])
    assert box == h["box"]
    opened = open_handover(h["recipient_private"], log, epoch, h["box"])
    assert opened == SwarmSecret(log, epoch, h["secret"])
    with pytest.raises(BadTag):
        open_handover(h["recipient_private"], log, epoch + 1, h["box"])
    topic = Topic.for_swarm(h["secret"])
    assert topic.id == h["topic_id"]
    assert topic.psk == h["topic_psk"]
