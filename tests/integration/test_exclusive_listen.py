"""A daemon never shares its listening port (issue 15): py-libp2p's own listener set SO_REUSEPORT, so a
second daemon bound the same port and the kernel split the first one's incoming connections with it.
Now the second daemon stops at start, naming the reason, and the first keeps every connection."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyagent import localmesh
from pyagent.localmesh import LocalPeer, Placement
from pyagent.testing.cli import run_cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def first_two(tmp_path: Path) -> Iterator[list[LocalPeer]]:
    """Two daemons in one mesh; the first on a port the test knows."""
    placements = [Placement(f"/ip4/127.0.0.1/tcp/{free_port()}"), Placement()]
    peers = localmesh.start_mesh(tmp_path, 2, placements=placements)
    try:
        yield peers
    finally:
        localmesh.stop_all(peers)


@pytest.mark.parametrize("ip", ["127.0.0.1", "0.0.0.0"])
def test_a_second_daemon_on_a_taken_port_stops_at_start_and_the_first_keeps_its_connections(
    tmp_path: Path, first_two: list[LocalPeer], ip: str
) -> None:
    first, other = first_two
    with localmesh.logs_on_failure(first_two):
        localmesh.wait_until(lambda: localmesh.converged(first_two), 30.0, "the two-daemon mesh")
        port = first.addr.split("/")[4]
        home = tmp_path / "second"
        localmesh.init_home(home, listen=f"/ip4/{ip}/tcp/{port}")
        second = run_cli(home, "daemon")
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"cannot listen on /ip4/{ip}/tcp/{port}: address already in use" in lines[0]

        # The first daemon kept its connection, answers on it, and its mesh is whole.
        assert other.peer_id in {p["peer"] for p in first.call("peers")}
        assert other.call("ping", peer=first.peer_id)["peer_id"] == first.peer_id
        assert first.call("ping", peer=other.peer_id)["peer_id"] == other.peer_id
        assert localmesh.converged(first_two)
