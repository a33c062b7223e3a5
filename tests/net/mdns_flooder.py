"""Publish many fake ``_p2pinvite._tcp`` service instances (test_mdns_flood_netns.py).

Run INSIDE a network namespace (``ip netns exec NS python tests/net/mdns_flooder.py
ADDR COUNT [DISC]``): never on a real interface. Registers COUNT instances
with python-zeroconf on the interface of ADDR (the namespace's own), each
with a name and TXT in the project's format (``<tag>-<random>-1`` and ``v=1``
with a random ``k=<discovery key>`` or ``d=<discriminator>``, discovery.py), at ADDR and a
random closed port. With DISC, 1 in 50 of them also claims that
discriminator (decoys for a guest looking for it). Prints
``ready <count> <seconds>`` once every instance is announced, then stays up
until its standard input closes (or it is killed).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from p2pinvite.net.discovery import PROTOCOL_VERSION, SERVICE_TYPE, topic_tag
from p2pinvite.net.topics import Topic

#: Registrations in flight at once (each sends its announcements).
BATCH = 100


def fake_topic(i: int, disc: str | None) -> Topic:
    if disc is not None and i % 50 == 0:
        return Topic.for_discriminator(disc)
    if i % 2:
        return Topic.for_discriminator(f"{random.randrange(10_000):04d}")
    return Topic.from_secret(os.urandom(32))


async def main(addr: str, count: int, disc: str | None) -> None:
    began = time.monotonic()
    azc = AsyncZeroconf(interfaces=[addr], ip_version=IPVersion.V4Only)
    host = os.urandom(4).hex()
    # Named as the project names its adverts (discovery.py): each with its
    # topic's tag, so the decoys carry the real topic's tag, as an attacker
    # who saw the real advert would make them.
    topics = [fake_topic(i, disc) for i in range(count)]
    infos = [
        AsyncServiceInfo(
            SERVICE_TYPE, f"{topic_tag(t)}-flood{os.urandom(6).hex()}-1.{SERVICE_TYPE}",
            port=random.randrange(20000, 60000),  # nothing listens there
            properties={"v": str(PROTOCOL_VERSION), **t.txt}, server=f"flood{host}.local.",
            addresses=[socket.inet_aton(addr)])
        for t in topics
    ]
    for start in range(0, count, BATCH):
        waits = await asyncio.gather(*(azc.async_register_service(
            info, cooperating_responders=True) for info in infos[start:start + BATCH]))
        await asyncio.gather(*waits)
    print(f"ready {count} {time.monotonic() - began:.1f}", flush=True)
    # Up until the test closes our stdin; no goodbyes (a flooder does not say them).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await azc.zeroconf.async_wait(0)


if __name__ == "__main__":
    disc_arg = sys.argv[3] if len(sys.argv) > 3 else None
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), disc_arg))
    os._exit(0)  # skip zeroconf's goodbye packets at interpreter exit
