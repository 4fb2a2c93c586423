"""Real daemon processes on 127.0.0.1, driven through the CLI as an operator would."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from pyagent.localmesh import LocalPeer, connect_all, converged, init_home, member_states, wait_until
from pyagent.testing.cli import run_cli


def tcp_port(addr: str) -> int:
    return int(addr.split("/tcp/")[1].split("/")[0])


@pytest.mark.parametrize("count", [2, 3])
def test_daemons_connect_ping_and_list_each_other(mesh: Callable[..., list[LocalPeer]], count: int) -> None:
    peers = mesh(count)
    for index, peer in enumerate(peers):
        for other in peers[:index]:
            result = run_cli(peer.home, "connect", other.addr)
            assert result.returncode == 0, result.stderr
            assert other.peer_id in result.stdout
    for peer in peers:
        listed = run_cli(peer.home, "peers", "--json")
        assert listed.returncode == 0, listed.stderr
        assert {p["peer"] for p in json.loads(listed.stdout)} == {o.peer_id for o in peers} - {peer.peer_id}
        other = next(o for o in peers if o is not peer)
        pinged = run_cli(peer.home, "ping", other.peer_id, "-c", "2", "-i", "0.1")
        assert pinged.returncode == 0, pinged.stderr
        assert pinged.stdout.count(f"pong from {other.peer_id}") == 2
    table = run_cli(peers[0].home, "peers")
    assert "RTT" in table.stdout and " ms" in table.stdout  # the pings above recorded round-trip times


def test_identity_persists_across_restart(mesh: Callable[..., list[LocalPeer]]) -> None:
    (peer,) = mesh(1)
    before = run_cli(peer.home, "id", "--json")
    assert peer.stop() == 0
    peer.start()
    peer.wait_ready()
    after = run_cli(peer.home, "id", "--json")
    assert json.loads(before.stdout)["peer_id"] == json.loads(after.stdout)["peer_id"] == peer.peer_id


def test_clean_shutdown_leaves_no_listener(mesh: Callable[..., list[LocalPeer]]) -> None:
    first, second = mesh(2)
    connect_all([first, second])
    wait_until(lambda: converged([first, second]), 30, "the two daemons see each other alive")
    port = tcp_port(first.addr)
    assert first.stop() == 0
    assert "daemon stopped" in first.log_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not (first.home / "control.sock").exists()
    offline = run_cli(first.home, "id")
    assert offline.returncode == 0 and "not running" in offline.stdout
    # The first lingered so that its leave would spread; the second, alone once it has heard, has no one
    # left to tell and stops at once.
    assert re.search(r"left the mesh told=1 linger_s=1\.0\b", first.log_text()), first.log_text()
    wait_until(lambda: member_states(second).get(first.peer_id) == "left", 10, "the first's leave heard")
    assert second.stop() == 0
    assert re.search(r"left the mesh told=0 linger_s=0\.0\b", second.log_text()), second.log_text()


def test_id_without_a_daemon_shows_the_identity_and_what_the_config_announces(tmp_path: Path) -> None:
    home = tmp_path / "home"
    peer_id = init_home(home, listen="/ip4/0.0.0.0/tcp/4001")
    result = run_cli(home, "id", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["peer_id"] == peer_id and info["running"] is False
    assert info["addrs"], "a machine with an interface up has something to announce"
    assert not any("/0.0.0.0/" in addr for addr in info["addrs"])
    assert all(addr.endswith(f"/tcp/4001/p2p/{peer_id}") for addr in info["addrs"])
    (home / "config.toml").write_text('[node]\nannounce = ["/ip4/203.0.113.7/tcp/4001"]\n')
    announced = json.loads(run_cli(home, "id", "--json").stdout)["addrs"]
    assert announced == [f"/ip4/203.0.113.7/tcp/4001/p2p/{peer_id}"]
    no_home = run_cli(tmp_path / "nothing", "id")
    assert no_home.returncode == 2 and "pyagent init" in no_home.stderr


def test_cli_without_a_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    init_home(tmp_path / "home")
    result = run_cli(tmp_path / "home", "peers")
    assert result.returncode == 1
    assert "pyagent daemon" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["connect", "not-a-multiaddr"], "is not a multiaddr"),
        (["ping", "x", "-c", "0"], "--count must be at least 1"),
        (["nosuchcommand"], "invalid choice"),
        (["demo", "--peers", "1"], "--peers must be at least 2"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_bad_config_stops_the_daemon_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    (home / "config.toml").write_text("[node]\nlisten_on = []\n")
    result = run_cli(home, "daemon")
    assert result.returncode == 2
    assert "unknown key 'listen_on'" in result.stderr and "Traceback" not in result.stderr


def test_init_twice_refuses_to_replace_the_identity(tmp_path: Path) -> None:
    assert run_cli(tmp_path / "h", "init").returncode == 0
    again = run_cli(tmp_path / "h", "init")
    assert again.returncode == 2 and "already initialized" in again.stderr


def test_second_daemon_on_the_same_home_is_refused(mesh: Callable[..., list[LocalPeer]]) -> None:
    (peer,) = mesh(1)
    result = run_cli(peer.home, "daemon", timeout_s=30)
    assert result.returncode == 2 and "already running" in result.stderr
