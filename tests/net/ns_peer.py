"""A scriptable peer for namespace tests and the discovery benchmark.

Run inside a namespace (``ip netns exec NS python tests/net/ns_peer.py``).
Reads JSON commands, one per line, on stdin; writes JSON events, one per
line, on stdout. Times are ``time.monotonic()`` (CLOCK_MONOTONIC is shared by
all processes of the host, so the benchmark can compare them).

Commands (``cmd``) and their answers (``ev``):

* ``start`` {listen, mdns, key?} -> ``ready`` {addresses, pub}
* ``join`` {topic, name, advertise, discover} -> ``joined`` {t0, t1};
  each connection then reports ``conn`` / ``conn_closed`` {name, hash, remote}
* ``leave`` {topic} -> ``left``
* ``connect`` {topic, hints, mdns, timeout} -> ``connected`` {hash, remote,
  payload} or ``connect_failed`` {error}
* ``browse`` {topic, mdns, seconds, first} -> ``found`` {addresses, t} ...,
  then ``browse_done`` {t0}; a fresh discovery instance (empty cache)
* ``capture_txt`` {mdns, seconds} -> ``txt`` {records}: a plain zeroconf
  browser's view of every ``_p2pinvite._tcp`` instance
* ``state`` -> ``state`` {conns: {name: [[hash, remote], ...]}}
* ``threads`` -> ``threads`` {names}
* ``stop`` -> ``stopped`` (manager closed); ``quit`` exits.

Topics are given as ``{"secret": hex}``, ``{"disc": str}`` or ``{"swarm": hex}``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from p2pinvite.crypto.noise import generate_private_key
from p2pinvite.net.discovery import SERVICE_TYPE, PeerFound, open_discovery
from p2pinvite.net.manager import NetworkManager, open_network_manager
from p2pinvite.net.secure import SecureStream
from p2pinvite.net.topics import Topic


def topic_of(spec: dict[str, str]) -> Topic:
    if "secret" in spec:
        return Topic.from_secret(bytes.fromhex(spec["secret"]))
    if "disc" in spec:
        return Topic.for_discriminator(spec["disc"])
    return Topic.for_swarm(bytes.fromhex(spec["swarm"]))


def emit(ev: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": ev, **fields}) + "\n")
    sys.stdout.flush()


def capture_txt(interfaces: list[str], seconds: float) -> list[dict[str, Any]]:
    """What a plain zeroconf browser sees (blocking; run in a thread)."""
    from zeroconf import IPVersion, ServiceBrowser, Zeroconf

    names: set[str] = set()
    zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[
            lambda zeroconf, service_type, name, state_change: names.add(name)])
        time.sleep(seconds)
        browser.cancel()
        out = []
        for name in sorted(names):
            info = zc.get_service_info(SERVICE_TYPE, name, 2000)
            if info is not None:
                out.append({"name": name, "text": (info.text or b"").hex(),
                            "props": {k.decode(): (v or b"").decode("latin-1")
                                      for k, v in info.properties.items()}})
        return out
    finally:
        zc.close()


class Peer:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.manager: NetworkManager | None = None
        self.stop_manager = trio.Event()
        self.manager_done = trio.Event()
        self.conns: dict[str, dict[str, str]] = {}
        self.held: list[SecureStream] = []

    async def run_manager(self, msg: dict[str, Any]) -> None:
        key = bytes.fromhex(msg["key"]) if msg.get("key") else generate_private_key()
        try:
            async with open_network_manager(
                static_key=key, payload=b"peer", listen=tuple(msg.get("listen", ("127.0.0.1", 0))),
                mdns_interfaces=msg.get("mdns"), handshake_timeout=5.0,
            ) as manager:
                self.manager = manager
                emit("ready", addresses=manager.addresses, pub=manager.public_key.hex())
                await self.stop_manager.wait()
                for s in self.held:
                    await s.aclose()
        finally:
            self.manager = None
            self.manager_done.set()

    def handler_for(self, name: str) -> Any:
        async def handler(stream: SecureStream) -> None:
            h, remote = stream.handshake_hash.hex(), stream.remote_static.hex()
            self.conns.setdefault(name, {})[h] = remote
            emit("conn", name=name, hash=h, remote=remote)
            try:
                while True:
                    data = await stream.receive_message()
                    await stream.send_message(data)
            finally:
                self.conns[name].pop(h, None)
                emit("conn_closed", name=name, hash=h, remote=remote)
        return handler

    async def browse(self, msg: dict[str, Any]) -> None:
        topic = topic_of(msg["topic"])
        async with open_discovery(msg["mdns"]) as disc:
            t0 = time.monotonic()
            with trio.move_on_after(msg.get("seconds", 5.0)):
                async with disc.browse(topic) as events:
                    async for event in events:
                        if isinstance(event, PeerFound):
                            emit("found", addresses=event.addresses, t=time.monotonic(),
                                 instance=event.instance)
                            if msg.get("first"):
                                break
        emit("browse_done", t0=t0)

    async def command(self, msg: dict[str, Any]) -> None:
        cmd = msg["cmd"]
        m = self.manager
        if cmd == "start":
            self.nursery.start_soon(self.run_manager, msg)
        elif cmd == "join":
            assert m is not None
            t0 = time.monotonic()
            await m.join(topic_of(msg["topic"]), self.handler_for(msg.get("name", "")),
                         advertise=msg.get("advertise", True), discover=msg.get("discover", False))
            emit("joined", t0=t0, t1=time.monotonic())
        elif cmd == "leave":
            assert m is not None
            await m.leave(topic_of(msg["topic"]))
            emit("left")
        elif cmd == "connect":
            assert m is not None
            try:
                s = await m.connect(topic_of(msg["topic"]),
                                    hints=[tuple(h) for h in msg.get("hints", [])],
                                    mdns=msg.get("mdns", True), timeout=msg.get("timeout", 5.0))
            except Exception as exc:
                emit("connect_failed", error=f"{type(exc).__name__}: {exc}")
            else:
                self.held.append(s)
                emit("connected", hash=s.handshake_hash.hex(), remote=s.remote_static.hex(),
                     payload=s.remote_payload.decode(), peer=list(s.transport.socket.getpeername()))
        elif cmd == "browse":
            self.nursery.start_soon(self.browse, msg)
        elif cmd == "capture_txt":
            records = await trio.to_thread.run_sync(capture_txt, msg["mdns"], msg["seconds"])
            emit("txt", records=records)
        elif cmd == "state":
            emit("state", conns={k: sorted([h, r] for h, r in v.items())
                                 for k, v in self.conns.items()})
        elif cmd == "threads":
            emit("threads", names=sorted(t.name for t in threading.enumerate()))
        elif cmd == "stop":
            self.stop_manager.set()
            await self.manager_done.wait()
            emit("stopped")
        else:
            emit("error", error=f"unknown command {cmd!r}")


async def main() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with trio.open_nursery() as nursery:
        peer = Peer(nursery)
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg["cmd"] == "quit":
                    nursery.cancel_scope.cancel()
                    return
                try:
                    await peer.command(msg)
                except Exception as exc:
                    emit("error", error=f"{type(exc).__name__}: {exc}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
