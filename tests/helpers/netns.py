"""A private test network: a hub namespace with a bridge, and one namespace per node.

etcd checks a peer's client certificate against the address the connection
comes from. On loopback every connection comes from 127.0.0.1, so three
members on 127.0.1.1-3 reject each other; each member needs its own address,
which network namespaces give. All traffic stays inside the namespaces made here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence


def available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class TestNet:
    """The hub namespace holds bridge br0 at `hub_ip`; nodes hang off it by veth or tap."""

    __test__ = False  # not a pytest test class

    def __init__(self, tag: str, hub_ip: str, prefix: int) -> None:
        self.tag = f"{tag}{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.hub_ip, self.prefix = hub_ip, prefix
        self.namespaces: list[str] = []

    def __enter__(self) -> TestNet:
        try:
            self._add_ns(self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "addr", "add", f"{self.hub_ip}/{self.prefix}", "dev", "br0")
            _ip("-n", self.hub, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, index: int, address: str) -> str:
        """A namespace with eth0 at `address`, plugged into the bridge; returns its name."""
        ns = f"{self.tag}-n{index}"
        self._add_ns(ns)
        _ip("-n", self.hub, "link", "add", f"veth{index}", "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        _ip("-n", self.hub, "link", "set", f"veth{index}", "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/{self.prefix}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return ns

    def add_tap(self, name: str) -> str:
        """A tap device on the bridge, for a VM started inside the hub namespace."""
        _ip("-n", self.hub, "tuntap", "add", "dev", name, "mode", "tap")
        _ip("-n", self.hub, "link", "set", name, "master", "br0", "up")
        return name

    def command(self, ns: str, argv: Sequence[str]) -> list[str]:
        """argv run inside namespace `ns`."""
        return ["ip", "netns", "exec", ns, *argv]

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self.namespaces.clear()
