"""Short-code pairing over real mDNS, host and guest in two network namespaces.

Needs root (ip netns); skipped with the reason otherwise. Multicast stays on
the veth pair between the two namespaces the test creates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.net.netns import veth_namespaces

CHILD = Path(__file__).with_name("netns_pairing_child.py")


def _line(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"child ended early: {proc.stderr.read() if proc.stderr else ''}"
    return json.loads(line)


def test_short_code_pairing_over_mdns(tmp_path: Path) -> None:
    with veth_namespaces() as (ns_host, ns_guest):
        host = subprocess.Popen(
            ns_host.argv(sys.executable, str(CHILD), "host", str(tmp_path / "host"),
                         ns_host.iface, ns_host.addr),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            code = _line(host)["code"]
            assert isinstance(code, str)
            assert len(code.replace("-", "")) == 12
            guest = subprocess.run(
                ns_guest.argv(sys.executable, str(CHILD), "guest", str(tmp_path / "guest"),
                              ns_guest.iface, ns_guest.addr, code),
                capture_output=True, text=True, timeout=90, check=False)
            assert guest.returncode == 0, guest.stderr[-2000:]
            result = json.loads(guest.stdout.strip().splitlines()[-1])
            assert result["state"] == "success", result
            assert result["states"][:2] == ["connecting", "connected"]
            host_devices = _line(host)["devices"]
            assert result["devices"] == host_devices
            assert len(host_devices) == 2
            assert host.wait(timeout=30) == 0
        finally:
            if host.poll() is None:
                host.kill()
                host.wait()
