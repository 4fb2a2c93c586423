"""Test hosts in Linux network namespaces: one namespace per host, joined by veth pairs to bridges.

A partition is made the way a switch failure makes one: a host's veth is moved to another bridge, so the
two sides share no layer-2 segment. Nothing is routed off the machine: the namespaces have no default
route and the bridges have no uplink. Needs root (CI runs as root) and iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pyagent.localmesh import Placement

SUBNET_PREFIX = "10.213.0"
PREFIX_LEN = 24


class NetnsUnavailable(Exception):
    """This machine cannot create network namespaces; the message says why."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def check_available() -> None:
    if shutil.which("ip") is None:
        raise NetnsUnavailable("iproute2 is not installed (apt-get install -y iproute2)")
    if os.geteuid() != 0:
        raise NetnsUnavailable("creating network namespaces needs root")
    probe = f"pa-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        raise NetnsUnavailable(f"`ip netns add` failed: {exc.stderr.strip()}") from None
    _ip("netns", "del", probe)


@dataclass(frozen=True)
class TestHost:
    namespace: str
    address: str
    host_veth: str
    guest_veth: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


class Network:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.hosts: list[TestHost] = []
        self.bridges: list[str] = []

    def bridge(self, index: int) -> str:
        name = f"pa{self.tag}b{index}"
        if name not in self.bridges:
            _ip("link", "add", name, "type", "bridge")
            _ip("link", "set", name, "up")
            self.bridges.append(name)
        return name

    def add_host(self) -> TestHost:
        index = len(self.hosts) + 1
        namespace = f"pa-{self.tag}-h{index}"
        host_veth, guest_veth = f"pa{self.tag}v{index}", f"pa{self.tag}g{index}"
        _ip("netns", "add", namespace)
        _ip("link", "add", host_veth, "type", "veth", "peer", "name", guest_veth)
        _ip("link", "set", guest_veth, "netns", namespace)
        _ip("link", "set", host_veth, "master", self.bridge(0))
        _ip("link", "set", host_veth, "up")
        address = f"{SUBNET_PREFIX}.{index}"
        _ip("-n", namespace, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", guest_veth)
        _ip("-n", namespace, "link", "set", guest_veth, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        host = TestHost(namespace, address, host_veth, guest_veth)
        self.hosts.append(host)
        return host

    def placements(self, port: int) -> list[Placement]:
        """One daemon per host, listening on ``port`` at the host's address (for ``localmesh.start_mesh``)."""
        return [Placement(f"/ip4/{host.address}/tcp/{port}", tuple(host.command([]))) for host in self.hosts]

    def port_forward(self, host: TestHost, public_index: int, port: int) -> str:
        """A router's port forward in front of ``host``: connections to a second address on the bridge's
        subnet (``.public_index``), port ``port``, reach ``host``'s own address at that port, as a NAT
        rewrites them (nftables DNAT in the host's namespace). Returns the public address."""
        public = f"{SUBNET_PREFIX}.{public_index}"
        _ip("-n", host.namespace, "addr", "add", f"{public}/{PREFIX_LEN}", "dev", host.guest_veth)
        rules = (
            "add table ip nat\n"
            "add chain ip nat prerouting { type nat hook prerouting priority -100; }\n"
            f"add rule ip nat prerouting ip daddr {public} tcp dport {port} dnat to {host.address}:{port}\n"
        )
        _nft(host, rules)
        return public

    def drop_udp(self, host: TestHost, port: int) -> None:
        """A firewall on ``host`` that drops every UDP datagram to ``port`` (nftables in its namespace),
        as a cloud security group that opened the port for TCP alone."""
        rules = (
            "add table inet pa_filter\n"
            "add chain inet pa_filter input { type filter hook input priority 0; }\n"
            f"add rule inet pa_filter input udp dport {port} drop\n"
        )
        _nft(host, rules)

    def partition(self, groups: Sequence[Sequence[TestHost]]) -> None:
        """Each group gets its own bridge: hosts in different groups can no longer reach each other."""
        for index, group in enumerate(groups):
            bridge = self.bridge(index)
            for host in group:
                _ip("link", "set", host.host_veth, "master", bridge)

    def heal(self) -> None:
        self.partition([self.hosts])

    def destroy(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
            subprocess.run(["ip", "link", "del", host.host_veth], capture_output=True)
        for bridge in self.bridges:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)


@contextmanager
def network(host_count: int) -> Iterator[Network]:
    """``host_count`` hosts on one bridge; everything is removed on exit, even after a failure."""
    check_available()
    net = Network(uuid.uuid4().hex[:4])
    try:
        for _ in range(host_count):
            net.add_host()
        yield net
    finally:
        net.destroy()


def _nft(host: TestHost, rules: str) -> None:
    """Loads an nftables ruleset into ``host``'s namespace."""
    command = host.command(["nft", "-f", "-"])
    subprocess.run(command, input=rules, check=True, capture_output=True, text=True)
