"""The servers' command prefix: both run inside a network namespace, and work there.

Later end-to-end tests put the mailbox and the relay in namespaces of their
own; this one checks the mechanism: ``ip netns exec NS twist ...`` starts,
its port is read from its log, a client inside the same namespace exchanges
candidates and relays bytes through them, and stopping them leaves nothing
behind. Needs root (skipped otherwise, with the reason).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.net.netns import loopback_namespace

from .servers import ROOT, mailbox_server, relay_server

pytestmark = [pytest.mark.slow, pytest.mark.netns]

#: Runs inside the namespace: both sides of a rendezvous in one trio process.
CLIENT = """
import json, os, sys, trio
from p2pinvite.rendezvous import (PHASE, Candidates, for_invitation, open_candidates,
                                  open_mailbox, relay_connect, seal_candidates)
url, relay_port = sys.argv[1], int(sys.argv[2])
names = for_invitation(os.urandom(32))
out = {}

async def party(role):
    me, other = names.side(role), names.side(1 - role)
    mine = Candidates((("127.0.0.1", 1000 + role),), ("127.0.0.1", relay_port))
    async with open_mailbox(url, names.mailbox_id, side=me, timeout=10) as mailbox:
        await mailbox.add(PHASE, seal_candidates(names.sealing_key, mine, sender_side=me))
        msg = await mailbox.receive(timeout=10)
        theirs = open_candidates(names.sealing_key, msg.body, sender_side=other)
        await trio.sleep(0.3)
    host, port = theirs.relay
    stream = await relay_connect(host, port, names.relay_token, me, timeout=10)
    await stream.send_all(me.encode())
    out[me] = [theirs.addrs[0][1], (await stream.receive_some(100)).decode()]
    await trio.sleep(0.2)
    await stream.aclose()

async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(party, 0)
        nursery.start_soon(party, 1)

trio.run(main)
print(json.dumps(out))
"""


def test_servers_and_clients_inside_a_namespace(tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    with loopback_namespace() as ns:
        prefix = ["ip", "netns", "exec", ns.name]
        with mailbox_server(prefix=prefix, host=ns.addr,
                            workdir=tmp_path_factory.mktemp("ns-mailbox")) as mailbox, \
                relay_server(prefix=prefix, host=ns.addr,
                             workdir=tmp_path_factory.mktemp("ns-relay")) as relay:
            res = subprocess.run([*prefix, sys.executable, "-c", CLIENT, mailbox.url,
                                  str(relay.port)], capture_output=True, text=True,
                                 cwd=ROOT, timeout=60, check=False)
            assert res.returncode == 0, res.stderr[-3000:]
            assert json.loads(res.stdout) == {"p2pinvite_side_0": [1001, "p2pinvite_side_1"],
                                              "p2pinvite_side_1": [1000, "p2pinvite_side_0"]}
            assert relay.wait_usage(1)[-1]["total_bytes"] == 32
        assert mailbox.process.poll() is not None
        assert relay.process.poll() is not None
