"""Three daemons on three namespaced hosts, each with the default config (listen /ip4/0.0.0.0/tcp/4001)
and nothing else but a bootstrap address: the mesh forms, every member holds every other at its real
address, and a ping by peer id between any two works (issue 15: with 0.0.0.0 gossiped, each dialed
itself). A fourth daemon on the first host listens on loopback only: its neighbour on that host holds it
at its loopback address, and no other host is ever told that address."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import permutations
from pathlib import Path

import pytest

from pyagent.config import DEFAULT_LISTEN
from pyagent.localmesh import (
    LocalPeer,
    Placement,
    converged,
    init_home,
    logs_on_failure,
    start_mesh,
    stop_all,
    wait_until,
)
from pyagent.testing.netns import Network

pytestmark = pytest.mark.netns

HOST_COUNT = 3
LOOPBACK_ONLY = "/ip4/127.0.0.1/tcp/4002"
# The last byte of the port-forward's public address on the test subnet (hosts are .1, .2, ...).
PUBLIC_INDEX = 100
CONVERGE_TIMEOUT_S = 30.0
SUSPICION_WATCH_S = 10.0


@pytest.fixture
def net(netns: Callable[[int], Network]) -> Network:
    return netns(HOST_COUNT)


@pytest.fixture
def daemons(tmp_path: Path, net: Network) -> Iterator[list[LocalPeer]]:
    placements = [Placement(DEFAULT_LISTEN, tuple(host.command([]))) for host in net.hosts]
    placements.append(Placement(LOOPBACK_ONLY, tuple(net.hosts[0].command([]))))
    peers = start_mesh(tmp_path, len(placements), placements=placements)
    try:
        yield peers
    finally:
        stop_all(peers)


def real_addr(net: Network, index: int, peer: LocalPeer) -> str:
    return f"/ip4/{net.hosts[index].address}/tcp/4001/p2p/{peer.peer_id}"


@pytest.mark.timeout(120)
def test_default_config_meshes_across_hosts_at_real_addresses(net: Network, daemons: list[LocalPeer]) -> None:
    *peers, loopback_only = daemons
    with logs_on_failure(daemons):
        for index, peer in enumerate(peers):
            # What `pyagent id` shows, and what the others bootstrapped from, is the veth address.
            assert peer.call("id")["addrs"] == [real_addr(net, index, peer)]
        wait_until(lambda: converged(daemons), CONVERGE_TIMEOUT_S, "the mesh over three hosts")
        for viewer in daemons:
            listed = {m["peer"]: m["addrs"] for m in viewer.call("members")}
            for index, peer in enumerate(peers):
                assert listed[peer.peer_id] == [real_addr(net, index, peer)], viewer.name
        loopback_addr = f"{LOOPBACK_ONLY}/p2p/{loopback_only.peer_id}"
        assert loopback_only.call("id")["addrs"] == [loopback_addr]
        held = [{m["peer"]: m["addrs"] for m in p.call("members")}[loopback_only.peer_id] for p in peers]
        assert held == [[loopback_addr], [], []], "loopback reaches the same host's daemon, and only it"
        # Membership's frames travel as datagrams between hosts: each host proved its UDP path to the
        # two others (set up over the libp2p connection, then echoed).
        wait_until(
            lambda: all(p.call("stats")["datagram_paths_proven"] >= HOST_COUNT - 1 for p in peers),
            CONVERGE_TIMEOUT_S,
            "datagram paths between the hosts",
        )
        for pinger, target in permutations(range(HOST_COUNT), 2):
            # The CLI in the pinger's namespace, by peer id: it dials what gossip says, if not connected.
            command = net.hosts[pinger].command(
                [sys.executable, "-m", "pyagent.cli", "--home", str(peers[pinger].home), "ping"]
            )
            done = subprocess.run(
                [*command, peers[target].peer_id], capture_output=True, text=True, timeout=30
            )
            assert done.returncode == 0, done.stderr
            assert f"pong from {peers[target].peer_id}" in done.stdout


@pytest.mark.timeout(120)
def test_an_address_two_peers_observe_behind_a_port_forward_is_announced(
    tmp_path: Path, net: Network
) -> None:
    if shutil.which("nft") is None:
        pytest.skip("nftables is not installed (apt-get install -y nftables)")
    behind, *outside = net.hosts
    public = net.port_forward(behind, PUBLIC_INDEX, 4001)
    # The forwarded daemon listens on its own address only, so the public one can come from nothing but
    # what its peers observe; the other two dial it through the forward.
    placements = [Placement(f"/ip4/{behind.address}/tcp/4001", tuple(behind.command([])))]
    placements += [Placement(DEFAULT_LISTEN, tuple(host.command([]))) for host in outside]
    first = start_mesh(tmp_path, 1, placements=placements[:1])[0]
    forwarded = f"/ip4/{public}/tcp/4001/p2p/{first.peer_id}"
    others = [
        LocalPeer(
            f"outside-{index}",
            tmp_path / f"outside-{index}",
            ["--bootstrap", forwarded],
            list(p.command_prefix),
        )
        for index, p in enumerate(placements[1:], start=1)
    ]
    peers = [first, *others]
    try:
        for peer, placement in zip(others, placements[1:], strict=True):
            init_home(peer.home, listen=placement.listen)
            peer.start()
        for peer in others:
            peer.wait_ready()
        with logs_on_failure(peers):
            assert first.call("id")["addrs"] == [real_addr(net, 0, first)]
            wait_until(
                lambda: forwarded in first.call("id")["addrs"], CONVERGE_TIMEOUT_S, "the observed address"
            )
            # Gossiped at the next re-announcement: every member then holds both addresses.
            both = [real_addr(net, 0, first), forwarded]
            wait_until(
                lambda: all(sorted(members_addrs(p)[first.peer_id]) == sorted(both) for p in peers),
                CONVERGE_TIMEOUT_S,
                "the observed address gossiped to every member",
            )
    finally:
        stop_all(peers)


def members_addrs(peer: LocalPeer) -> dict[str, list[str]]:
    return {m["peer"]: m["addrs"] for m in peer.call("members")}


@pytest.mark.timeout(120)
def test_a_host_whose_firewall_drops_udp_stays_in_the_mesh_over_tcp(tmp_path: Path, net: Network) -> None:
    """Membership prefers datagrams, but a path is used only once an echo proved it: a host whose
    firewall lets 4001/tcp in and drops 4001/udp is never suspected, and its frames take the streams."""
    if shutil.which("nft") is None:
        pytest.skip("nftables is not installed (apt-get install -y nftables)")
    walled = net.hosts[-1]
    net.drop_udp(walled, 4001)
    placements = [Placement(DEFAULT_LISTEN, tuple(host.command([]))) for host in net.hosts]
    peers = start_mesh(tmp_path, len(placements), placements=placements)
    try:
        with logs_on_failure(peers):
            wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "the mesh with one host walled off udp")
            wait_until(
                lambda: all(p.call("stats")["datagram_paths_failed"] >= 1 for p in peers),
                CONVERGE_TIMEOUT_S,
                "every host giving up its udp path to or from the walled host",
            )
            open_hosts = peers[:-1]
            assert all(p.call("stats")["datagram_paths_proven"] >= 1 for p in open_hosts)
            assert peers[-1].call("stats")["datagram_paths_proven"] == 0
            # Several probe rounds of every member to every other: nobody is ever held anything but alive.
            deadline = time.monotonic() + SUSPICION_WATCH_S
            while time.monotonic() < deadline:
                for viewer in peers:
                    states = {m["peer"]: m["state"] for m in viewer.call("members")}
                    assert set(states.values()) == {"alive"}, (viewer.name, states)
                time.sleep(0.2)
    finally:
        stop_all(peers)
