"""`pyagent ping` end to end: our own ping between daemons, libp2p's standard ping with a rust-libp2p
peer (in both directions), `-n COUNT` with its summary line, and one line for a peer out of reach.

The rust-libp2p tests are in the default suite (CI): the peer's build is cached (the ``rust_peer``
fixture), so only a machine's first run pays its few minutes."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as STANDARD_PING_ID
from test_pnet import listen_address, running_host

from pyagent.localmesh import LocalPeer
from pyagent.testing.cli import run_cli

# A valid peer id (an Ed25519 key's identity multihash) with no daemon behind it.
ABSENT_PEER_ID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
SUMMARY = re.compile(
    r"^(\d+) pings, (\d+) pongs, (\d+)% lost; rtt min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms$"
)
RUST_PEER_START_TIMEOUT_S = 20
RUST_PEER_RUN_TIMEOUT_S = 30


def pongs(stdout: str, peer: str, protocol: str) -> list[str]:
    return [
        line for line in stdout.splitlines() if line.startswith(f"pong from {peer} over {protocol}: rtt ")
    ]


def summary(stdout: str) -> tuple[int, int, int, float, float, float]:
    match = SUMMARY.match(stdout.strip().splitlines()[-1])
    assert match, stdout
    sent, received, lost = (int(match[i]) for i in (1, 2, 3))
    low, mean, high = (float(match[i]) for i in (4, 5, 6))
    return sent, received, lost, low, mean, high


def test_ping_between_daemons_uses_pyagent_ping_and_sums_up(mesh: Callable[..., list[LocalPeer]]) -> None:
    a, b = mesh(2)
    result = run_cli(a.home, "ping", b.addr, "-n", "4", "--interval", "0.05")
    assert result.returncode == 0, result.stderr
    assert len(pongs(result.stdout, b.peer_id, "/pyagent/ping/1.0.0")) == 4, result.stdout
    sent, received, lost, low, mean, high = summary(result.stdout)
    assert (sent, received, lost) == (4, 4, 0)
    assert 0 < low <= mean <= high


@pytest.mark.parametrize("target", [ABSENT_PEER_ID, f"/ip4/127.0.0.1/tcp/1/p2p/{ABSENT_PEER_ID}"])
def test_unknown_or_unreachable_peer_is_one_line_once(
    mesh: Callable[..., list[LocalPeer]], target: str
) -> None:
    (a,) = mesh(1)
    result = run_cli(a.home, "ping", target, "-n", "3", "--interval", "0.05")
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ABSENT_PEER_ID in lines[0], result.stderr
    assert "pong" not in result.stdout and "Traceback" not in result.stderr


async def test_a_peer_that_speaks_neither_ping_is_one_line_once(mesh: Callable[..., list[LocalPeer]]) -> None:
    (daemon,) = mesh(1)
    async with running_host(None) as host:
        host.remove_stream_handler(TProtocol(str(STANDARD_PING_ID)))
        address = str(listen_address(host))
        result = await trio.to_thread.run_sync(lambda: run_cli(daemon.home, "ping", address, "-n", "2"))
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "speaks neither /pyagent/ping/1.0.0 nor /ipfs/ping/1.0.0" in lines[0], result
    assert result.stdout == ""


@pytest.fixture
def rust_listener(rust_peer: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A rust-libp2p peer listening in a private mesh: (the mesh's key file, the peer's multiaddr)."""
    key_file = tmp_path / "swarm.key"
    assert run_cli(None, "mesh", "new-private", "--out", str(key_file)).returncode == 0
    process = subprocess.Popen(
        [str(rust_peer), str(key_file), "--listen"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("LISTENING /ip4/127.0.0.1/tcp/"), line
        yield key_file, line.removeprefix("LISTENING ")
    finally:
        process.kill()
        process.wait(timeout=RUST_PEER_START_TIMEOUT_S)


def test_ping_a_rust_libp2p_peer_over_standard_ping(
    mesh: Callable[..., list[LocalPeer]], rust_listener: tuple[Path, str]
) -> None:
    key_file, address = rust_listener
    (daemon,) = mesh(1, str(key_file))
    rust_id = address.rsplit("/", 1)[-1]
    result = run_cli(daemon.home, "ping", address, "-n", "3", "--interval", "0.05")
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    assert len(pongs(result.stdout, rust_id, "/ipfs/ping/1.0.0")) == 3, result.stdout
    assert summary(result.stdout)[:3] == (3, 3, 0)
    assert result.stderr == ""
    # Once connected, by peer id too (identify has told the daemon what the peer speaks by then).
    again = run_cli(daemon.home, "ping", rust_id, "-n", "1")
    assert again.returncode == 0 and pongs(again.stdout, rust_id, "/ipfs/ping/1.0.0"), again


def test_a_rust_libp2p_peer_pings_a_daemon(
    mesh: Callable[..., list[LocalPeer]], rust_peer: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "swarm.key"
    assert run_cli(None, "mesh", "new-private", "--out", str(key_file)).returncode == 0
    (daemon,) = mesh(1, str(key_file))
    result = subprocess.run(
        [str(rust_peer), str(key_file), daemon.addr],
        capture_output=True,
        text=True,
        timeout=RUST_PEER_RUN_TIMEOUT_S,
    )
    assert result.stdout.startswith(f"PING_OK {daemon.peer_id} "), result
