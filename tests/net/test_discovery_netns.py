"""mDNS discovery over real multicast, inside network namespaces created here.

Every peer is a subprocess started with ``ip netns exec`` (tests/net/ns_peer.py),
so no multicast ever reaches a real interface. Skipped (with the reason) when
not root.
"""

from __future__ import annotations

import base64
import os

import pytest
import trio

from p2pinvite.net.discovery import InterfaceNotFound, resolve_interfaces
from p2pinvite.net.topics import Topic, encode_discovery_key

from .netns import Namespace, loopback_namespace, ns_peer, veth_namespaces

netns = pytest.mark.netns


def _secret_spec() -> tuple[bytes, dict[str, str]]:
    secret = os.urandom(32)
    return secret, {"secret": secret.hex()}


async def _start(peer, ns: Namespace, *, mdns: list[str] | None = None) -> dict:  # type: ignore[no-untyped-def]
    await peer.send({"cmd": "start", "listen": [ns.addr, 0], "mdns": mdns or [ns.iface]})
    return await peer.expect("ready")


# -- interface selection (no multicast sent) --------------------------------


def test_resolve_interfaces_names_and_addresses() -> None:
    assert resolve_interfaces(["lo"]) == ["127.0.0.1"]
    assert resolve_interfaces(["127.0.0.1", "lo"]) == ["127.0.0.1"]
    with pytest.raises(InterfaceNotFound):
        resolve_interfaces(["no-such-if0"])
    with pytest.raises(InterfaceNotFound):
        resolve_interfaces(["192.0.2.77"])  # TEST-NET-1: not on this host
    with pytest.raises(InterfaceNotFound):
        resolve_interfaces([])


# -- real multicast ----------------------------------------------------------


@netns
async def test_veth_find_connect_then_leave() -> None:
    with veth_namespaces() as (a, b):
        await _veth_find_connect_then_leave(a, b)


async def _veth_find_connect_then_leave(a: Namespace, b: Namespace) -> None:
    _, spec = _secret_spec()
    with trio.fail_after(40):
        async with ns_peer(a) as host, ns_peer(b) as guest:
            ready = await _start(host, a)
            await _start(guest, b, mdns=[b.addr])  # an address works as well as a name
            host_addr = ready["addresses"][0]
            await host.send({"cmd": "join", "topic": spec, "name": "t"})
            await host.expect("joined")

            # The guest knows nothing but the topic: mDNS finds the host, Noise admits it.
            await guest.send({"cmd": "connect", "topic": spec, "mdns": True, "timeout": 10})
            got = await guest.expect("connected")
            assert got["payload"] == "peer"
            assert got["peer"] == host_addr
            assert got["remote"] == ready["pub"]
            conn = await host.expect("conn")
            assert conn["hash"] == got["hash"]

            await guest.send({"cmd": "browse", "topic": spec, "mdns": [b.iface],
                              "first": True, "seconds": 5})
            found = await guest.expect("found")
            assert found["addresses"] == [host_addr]
            await guest.expect("browse_done")

            await host.send({"cmd": "leave", "topic": spec})
            await host.expect("left")
            closed = await host.expect("conn_closed")
            assert closed["hash"] == got["hash"]

            # A fresh browser (empty cache) no longer finds it.
            await guest.send({"cmd": "browse", "topic": spec, "mdns": [b.iface], "seconds": 1.5})
            await guest.expect("browse_done")
            assert guest.drain("found") == []


@netns
async def test_loopback_swarms_meet_only_on_their_topics() -> None:
    with loopback_namespace() as ns:
        await _loopback_swarms_meet_only_on_their_topics(ns)


async def _loopback_swarms_meet_only_on_their_topics(ns: Namespace) -> None:
    _, x = _secret_spec()
    y = {"swarm": os.urandom(32).hex()}
    plan = {"p1": ["x"], "p2": ["x"], "p3": ["y"], "p4": ["x", "y"]}
    topics = {"x": x, "y": y}
    with trio.fail_after(60):
        async with (ns_peer(ns) as p1, ns_peer(ns) as p2, ns_peer(ns) as p3,
                    ns_peer(ns) as p4):
            peers = {"p1": p1, "p2": p2, "p3": p3, "p4": p4}
            pubs = {}
            for name, p in peers.items():
                pubs[name] = (await _start(p, ns))["pub"]
            for name, p in peers.items():
                for t in plan[name]:
                    await p.send({"cmd": "join", "topic": topics[t], "name": t,
                                  "discover": True})
                    await p.expect("joined")
            expected = {
                name: {t: sorted(pubs[o] for o in peers if o != name and t in plan[o])
                       for t in plan[name]}
                for name in peers
            }

            async def snapshot() -> dict[str, dict[str, list[list[str]]]]:
                out = {}
                for name, p in peers.items():
                    await p.send({"cmd": "state"})
                    out[name] = (await p.expect("state"))["conns"]
                return out

            def remotes(state: dict) -> dict:  # type: ignore[type-arg]
                return {n: {t: sorted(r for _, r in state[n].get(t, [])) for t in plan[n]}
                        for n in peers}

            state = await snapshot()
            while remotes(state) != expected:
                await trio.sleep(0.2)
                state = await snapshot()
            await trio.sleep(1.0)  # duplicates from simultaneous dials must not linger
            state = await snapshot()
            assert remotes(state) == expected
            # Each pair shares exactly one connection: the same handshake on both ends.
            for n in peers:
                for t in plan[n]:
                    for h, r in state[n].get(t, []):
                        other = next(o for o in peers if pubs[o] == r)
                        assert [h, pubs[n]] in state[other][t]


@netns
async def test_txt_on_the_wire_has_no_secret() -> None:
    with loopback_namespace() as ns:
        await _txt_on_the_wire_has_no_secret(ns)


async def _txt_on_the_wire_has_no_secret(ns: Namespace) -> None:
    secret, spec = _secret_spec()
    link = Topic.from_secret(secret)
    short = Topic.for_discriminator("4711")
    with trio.fail_after(30):
        async with ns_peer(ns) as host, ns_peer(ns) as sniffer:
            await _start(host, ns)
            await host.send({"cmd": "join", "topic": spec, "name": "link"})
            await host.expect("joined")
            await host.send({"cmd": "join", "topic": {"disc": "4711"}, "name": "short"})
            await host.expect("joined")
            await sniffer.send({"cmd": "capture_txt", "mdns": ["127.0.0.1"], "seconds": 1.0})
            records = (await sniffer.expect("txt"))["records"]

    props = sorted((sorted(r["props"].items()) for r in records), key=str)
    assert props == sorted([
        [("k", encode_discovery_key(link.id)), ("v", "1")],
        [("d", "4711"), ("v", "1")],
    ], key=str)
    assert short.psk is None
    assert link.psk is not None
    forbidden = [secret, link.psk]
    for record in records:
        raw = bytes.fromhex(record["text"])
        for value in forbidden:
            for form in (value, value.hex().encode(), base64.b32encode(value).rstrip(b"="),
                         base64.b32encode(value).rstrip(b"=").lower(), base64.b64encode(value)):
                assert form not in raw
        assert record["name"].endswith("._p2pinvite._tcp.local.")


@netns
async def test_no_zeroconf_thread_left_after_close() -> None:
    with loopback_namespace() as ns:
        await _no_zeroconf_thread_left_after_close(ns)


async def _no_zeroconf_thread_left_after_close(ns: Namespace) -> None:
    _, spec = _secret_spec()
    with trio.fail_after(30):
        async with ns_peer(ns) as peer:
            await peer.send({"cmd": "threads"})
            before = (await peer.expect("threads"))["names"]
            await _start(peer, ns)
            await peer.send({"cmd": "join", "topic": spec, "discover": True})
            await peer.expect("joined")
            await peer.send({"cmd": "browse", "topic": spec, "mdns": ["lo"], "first": True})
            await peer.expect("found")  # the manager's own advertisement, seen by a 2nd instance
            await peer.expect("browse_done")
            await peer.send({"cmd": "threads"})
            during = (await peer.expect("threads"))["names"]
            await peer.send({"cmd": "stop"})
            await peer.expect("stopped")
            await peer.send({"cmd": "threads"})
            after = (await peer.expect("threads"))["names"]
    assert len(during) > len(before)  # zeroconf's loop thread really was running
    assert after == before
