"""Network namespaces for real-network tests (mDNS never leaves them).

Reusable by any test (and by bench/) that needs real multicast:

* :func:`loopback_namespace` -- one namespace whose ``lo`` carries multicast
  (``ip link set lo multicast on`` + a ``224.0.0.0/4`` route): every process
  in it sees every other one's mDNS, nothing else does.
* :func:`veth_namespaces` -- two namespaces joined by a veth pair
  (``10.231.N.1/24`` <-> ``10.231.N.2/24``), multicast on, with the route.
* :func:`bridge_namespaces` -- N namespaces on one bridge (``10.232.N.i/24``),
  with partitions: a node's bridge port goes down and up again.
* :func:`routed_namespaces` -- two sites (host, guest) that reach a third
  namespace (a rendezvous, which does not forward) but not each other;
  optionally a direct link between the sites too.
* :class:`NsProcess` -- a process started with ``ip netns exec`` that speaks
  JSON lines (``tests/net/ns_peer.py``).
* pytest fixtures ``netns_lo`` and ``netns_pair`` wrapping the above; they
  skip with the reason when not root or when ``ip`` is missing.

Names carry the pid and a counter, so parallel runs do not clash. Teardown
(also after a failing test) kills the processes still inside the namespace
and deletes it, which also removes its veth ends.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parents[2]
PEER_SCRIPT = ROOT / "tests" / "net" / "ns_peer.py"
_counter = itertools.count(1)


def skip_reason() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the ip(8) command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns)"
    return None


def require_netns() -> None:
    """Skip the calling test, with the reason, if namespaces are unavailable."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)


def ip(*args: str, ns: str | None = None) -> None:
    """Run ``ip [-n ns] args...``; raise with ip's message on failure."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip()}")


def _unique(prefix: str) -> str:
    # Interface names are limited to 15 characters.
    return f"{prefix}{os.getpid() % 10**7}x{next(_counter)}"[:15]


@dataclass(frozen=True)
class Namespace:
    """A network namespace created by these helpers; ``addr`` is its test address."""

    name: str
    addr: str
    iface: str

    def argv(self, *cmd: str) -> list[str]:
        """The argv that runs *cmd* inside this namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]


def _kill_all_in(ns: str) -> None:
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                         check=False)
    for pid in res.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def delete_namespace(name: str) -> None:
    """Kill what still runs in namespace *name*, then delete it (idempotent)."""
    _kill_all_in(name)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _multicast_route(ns: str, dev: str) -> None:
    ip("link", "set", "dev", dev, "multicast", "on", ns=ns)
    ip("route", "add", "224.0.0.0/4", "dev", dev, ns=ns)


@contextlib.contextmanager
def loopback_namespace() -> Iterator[Namespace]:
    """One namespace with multicast on its loopback; mDNS interface ``lo`` / 127.0.0.1."""
    require_netns()
    name = _unique("p2pl")
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", ns=name)
        _multicast_route(name, "lo")
        yield Namespace(name, "127.0.0.1", "lo")
    finally:
        delete_namespace(name)


@contextlib.contextmanager
def veth_namespaces() -> Iterator[tuple[Namespace, Namespace]]:
    """Two namespaces joined by a veth pair, with multicast between them."""
    require_netns()
    n = next(_counter)
    subnet = f"10.231.{(os.getpid() + n) % 250 + 1}"
    a, b = _unique("p2pa"), _unique("p2pb")
    va, vb = _unique("vp2a"), _unique("vp2b")
    made: list[str] = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        ip("link", "add", va, "type", "veth", "peer", "name", vb)
        ip("link", "set", va, "netns", a)
        ip("link", "set", vb, "netns", b)
        for ns, dev, host in ((a, va, 1), (b, vb, 2)):
            ip("addr", "add", f"{subnet}.{host}/24", "dev", dev, ns=ns)
            ip("link", "set", dev, "up", ns=ns)
            _multicast_route(ns, dev)
        yield Namespace(a, f"{subnet}.1", va), Namespace(b, f"{subnet}.2", vb)
    finally:
        for ns in made:
            delete_namespace(ns)
        # If moving an end failed, it is still in our namespace.
        subprocess.run(["ip", "link", "del", va], capture_output=True, check=False)


@dataclass
class Bridge:
    """Namespaces on one Ethernet bridge (a LAN), and a way to cut one off and back.

    ``nodes[i]`` is a namespace with address ``10.232.N.(i+1)``; the bridge
    lives in a namespace of its own (``switch``), so nothing touches the root
    namespace. :meth:`partition` takes nodes off the LAN (their bridge port
    goes down: no unicast, no multicast, in either direction); :meth:`heal`
    puts them back.
    """

    switch: str
    nodes: list[Namespace]
    ports: list[str]

    def partition(self, *indexes: int) -> None:
        """Cut the nodes at *indexes* off the LAN."""
        for i in indexes:
            ip("link", "set", self.ports[i], "down", ns=self.switch)

    def heal(self, *indexes: int) -> None:
        """Put the nodes at *indexes* (default: all) back on the LAN."""
        for i in indexes or range(len(self.nodes)):
            ip("link", "set", self.ports[i], "up", ns=self.switch)


@contextlib.contextmanager
def bridge_namespaces(count: int) -> Iterator[Bridge]:
    """*count* namespaces on one bridge, multicast on (mDNS between all of them)."""
    require_netns()
    n = next(_counter)
    subnet = f"10.232.{(os.getpid() + n) % 250 + 1}"
    switch = _unique("p2ps")
    made: list[str] = []
    try:
        ip("netns", "add", switch)
        made.append(switch)
        ip("link", "add", "br0", "type", "bridge", ns=switch)
        # Snooping would drop mDNS until some host sends an IGMP join; a test LAN floods.
        ip("link", "set", "br0", "type", "bridge", "mcast_snooping", "0", ns=switch)
        ip("link", "set", "br0", "up", ns=switch)
        nodes: list[Namespace] = []
        ports: list[str] = []
        for i in range(count):
            name, dev, port = _unique("p2pn"), _unique("vp2n"), _unique("vp2p")
            ip("netns", "add", name)
            made.append(name)
            ip("link", "set", "lo", "up", ns=name)
            ip("link", "add", dev, "type", "veth", "peer", "name", port)
            ip("link", "set", dev, "netns", name)
            ip("link", "set", port, "netns", switch)
            ip("link", "set", port, "master", "br0", ns=switch)
            ip("link", "set", port, "up", ns=switch)
            ip("addr", "add", f"{subnet}.{i + 1}/24", "dev", dev, ns=name)
            ip("link", "set", dev, "up", ns=name)
            _multicast_route(name, dev)
            nodes.append(Namespace(name, f"{subnet}.{i + 1}", dev))
            ports.append(port)
        yield Bridge(switch, nodes, ports)
    finally:
        for ns in made:
            delete_namespace(ns)


@pytest.fixture
def netns_lo() -> Iterator[Namespace]:
    """A namespace with multicast loopback (skips when not root)."""
    with loopback_namespace() as ns:
        yield ns


@pytest.fixture
def netns_pair() -> Iterator[tuple[Namespace, Namespace]]:
    """Two namespaces joined by veth (skips when not root)."""
    with veth_namespaces() as pair:
        yield pair


class NsProcess:
    """A JSON-lines peer process inside a namespace (see tests/net/ns_peer.py).

    ``await send({...})`` writes one command; ``await expect("event")``
    returns the next message with that ``ev`` (others are kept in ``seen``).
    """

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []
        self._buf = b""
        self._lines: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, ns: Namespace, *args: str) -> NsProcess:
        """Run ns_peer.py in *ns* (stderr is inherited, for debugging failures)."""
        argv = ns.argv(sys.executable, str(PEER_SCRIPT), *args)
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT))
        return cls(proc)

    async def send(self, msg: dict[str, Any]) -> None:
        """Send one command."""
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(json.dumps(msg).encode() + b"\n")

    async def _next(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise EOFError(f"peer exited (rc={self.proc.poll()}) ; seen {self.seen}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        if msg.get("ev") == "error":
            raise RuntimeError(f"peer error: {msg.get('error')}")
        return msg

    async def expect(self, ev: str) -> dict[str, Any]:
        """The next message whose ``ev`` is *ev* (wrap in ``trio.fail_after``)."""
        for i, msg in enumerate(self._lines):
            if msg["ev"] == ev:
                del self._lines[i]
                return msg
        while True:
            msg = await self._next()
            self.seen.append(msg)
            if msg["ev"] == ev:
                return msg
            self._lines.append(msg)

    def drain(self, ev: str) -> list[dict[str, Any]]:
        """Take every already-received message with ``ev``."""
        out = [m for m in self._lines if m["ev"] == ev]
        self._lines = [m for m in self._lines if m["ev"] != ev]
        return out

    async def aclose(self) -> None:
        """Ask the peer to quit; kill it if it does not within 5 s."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.send({"cmd": "quit"})
        with trio.move_on_after(5):
            await self.proc.wait()
        if self.proc.poll() is None:
            self.proc.kill()
            await self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                await pipe.aclose()


@contextlib.asynccontextmanager
async def ns_peer(ns: Namespace, *args: str) -> Any:
    """Start an :class:`NsProcess` in *ns*; always stop it on exit."""
    peer = await NsProcess.start(ns, *args)
    try:
        yield peer
    finally:
        with trio.CancelScope(shield=True):
            await peer.aclose()


@dataclass(frozen=True)
class Routed:
    """Two sites that can reach a rendezvous but not each other (see :func:`routed_namespaces`).

    ``host`` and ``guest`` are the two sites, each with its address on its
    link to the rendezvous (``10.233.N.2`` and ``10.234.N.2``). ``rendezvous``
    is where the mailbox and the relay run; its ``addr`` is :attr:`service`
    (``10.235.N.1``, on its loopback), the one address both sites reach it at.
    ``direct`` is ``(host side, guest side)`` of the optional host-guest link
    (``10.236.N.1`` and ``10.236.N.2``; same namespace names, other address
    and interface), or None.
    """

    host: Namespace
    guest: Namespace
    rendezvous: Namespace
    service: str
    direct: tuple[Namespace, Namespace] | None

    @property
    def names(self) -> tuple[str, ...]:
        """The three namespace names."""
        return (self.host.name, self.guest.name, self.rendezvous.name)


def _sysctl(ns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"],
                   check=True, capture_output=True)
    got = subprocess.run(["ip", "netns", "exec", ns, "cat", path], check=True,
                         capture_output=True, text=True).stdout.strip()
    if got != value:
        raise RuntimeError(f"{key} is {got!r} in {ns}, wanted {value!r}")


@contextlib.contextmanager
def routed_namespaces(*, direct: bool = False, blackhole: bool = False) -> Iterator[Routed]:
    """Three namespaces: two sites joined only through a rendezvous that does not route.

    ::

        host 10.233.N.2 ---- 10.233.N.1  rendezvous  10.234.N.1 ---- 10.234.N.2 guest
                                  (10.235.N.1/32 on lo: the service address)
        host 10.236.N.1 -------------------------------------------- 10.236.N.2 guest
                                  (only with direct=True)

    The rendezvous namespace has ``ip_forward`` off (set and read back, since
    whether a new namespace inherits the root's value depends on a sysctl):
    it answers on its own addresses and never passes a packet from one site
    to the other. Each site has a /32 route to the service address through
    its link, because the mailbox URL and the relay address are chosen by the
    host and travel to the guest: both must reach the same address.

    Without *blackhole* a site has no route to the other one at all (a dial
    fails at once, ``ENETUNREACH``). With it, both sites get a default route
    through the rendezvous, which drops what it may not forward without an
    ICMP error: a dial hangs until its timeout, as one to a private address
    behind someone else's NAT does on the Internet.

    No multicast route anywhere: this topology is about going beyond the LAN
    (daemons run with ``--no-mdns``). Every veth is created directly inside
    its namespaces (``ip link add ... netns``), so nothing is ever added to
    the root namespace; teardown deletes the three namespaces (and so the
    links), also when the body raises.
    """
    require_netns()
    n = next(_counter)
    x = (os.getpid() + n) % 250 + 1
    host, guest, rdv = _unique("p2rh"), _unique("p2rg"), _unique("p2rr")
    service = f"10.235.{x}.1"
    made: list[str] = []
    try:
        for ns in (host, guest, rdv):
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        # The rendezvous must not forward: otherwise the two sites could talk.
        _sysctl(rdv, "net.ipv4.ip_forward", "0")
        ip("addr", "add", f"{service}/32", "dev", "lo", ns=rdv)
        sites: list[Namespace] = []
        for site, sub, tag in ((host, 233, "h"), (guest, 234, "g")):
            here, there = _unique(f"vr{tag}"), _unique(f"vr{tag}r")
            ip("link", "add", "name", here, "netns", site, "type", "veth",
               "peer", "name", there, "netns", rdv)
            ip("addr", "add", f"10.{sub}.{x}.2/24", "dev", here, ns=site)
            ip("addr", "add", f"10.{sub}.{x}.1/24", "dev", there, ns=rdv)
            ip("link", "set", here, "up", ns=site)
            ip("link", "set", there, "up", ns=rdv)
            ip("route", "add", f"{service}/32", "via", f"10.{sub}.{x}.1", ns=site)
            if blackhole:
                ip("route", "add", "default", "via", f"10.{sub}.{x}.1", ns=site)
            sites.append(Namespace(site, f"10.{sub}.{x}.2", here))
        pair: tuple[Namespace, Namespace] | None = None
        if direct:
            dh, dg = _unique("vrdh"), _unique("vrdg")
            ip("link", "add", "name", dh, "netns", host, "type", "veth",
               "peer", "name", dg, "netns", guest)
            for site, dev, i in ((host, dh, 1), (guest, dg, 2)):
                ip("addr", "add", f"10.236.{x}.{i}/24", "dev", dev, ns=site)
                ip("link", "set", dev, "up", ns=site)
            pair = (Namespace(host, f"10.236.{x}.1", dh), Namespace(guest, f"10.236.{x}.2", dg))
        yield Routed(sites[0], sites[1], Namespace(rdv, service, "lo"), service, pair)
    finally:
        for ns in made:
            delete_namespace(ns)
