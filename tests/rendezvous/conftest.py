"""Fixtures: the real mailbox server and transit relay (tests/rendezvous/servers.py).

Module-scoped: starting a Twisted server costs a second or two, and every test
uses mailbox names and relay tokens of its own, so tests in a module share
one of each. They listen on 127.0.0.1 only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import MailboxServer, RelayServer, mailbox_server, relay_server


@pytest.fixture(scope="module")
def mailbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailboxServer]:
    """A running mailbox server on 127.0.0.1."""
    workdir: Path = tmp_path_factory.mktemp("mailbox")
    with mailbox_server(workdir=workdir) as server:
        yield server


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayServer]:
    """A running transit relay on 127.0.0.1, with its usage log."""
    workdir: Path = tmp_path_factory.mktemp("relay")
    with relay_server(workdir=workdir) as server:
        yield server
