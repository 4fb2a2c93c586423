"""Flood limits on real sockets: a connection flood from one address is throttled while another address
still gets in (a real daemon), a peer's stream flood is reset over its rate, and py-libp2p's inbound
connection slots are given back when connections close (in-process hosts)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from libp2p import generate_new_ed25519_identity
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from pyagent.config import CONFIG_FILE
from pyagent.localmesh import LocalPeer, init_home, stop_all
from pyagent.node import limits
from pyagent.node.host import Host, HostConfig
from pyagent.node.host_config import FloodLimits
from pyagent.proto.events import Event
from pyagent.testing.cli import run_cli

FLOODER = "127.0.0.1"
BYSTANDER = "127.0.0.2"
PENDING_PER_IP = 4
FLOOD_CONNECTIONS = 40
MULTISTREAM = b"\x13/multistream/1.0.0\n"
NOISE_PROPOSAL = b"\x07/noise\n"


def _loopback_alias_works() -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((BYSTANDER, 0))
        return True
    except OSError:
        return False


def _connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def _flood_connection(port: int) -> socket.socket | None:
    """A silent connection from FLOODER, or None if the daemon reset it before ``connect()`` returned: a
    refusal past the per-address limit is immediate, and can beat connect()'s own check of the socket."""
    try:
        return _connect_from(FLOODER, port)
    except ConnectionResetError:
        return None


def _closed_by_peer(sock: socket.socket, wait_s: float) -> bool:
    sock.settimeout(wait_s)
    try:
        return sock.recv(64) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _daemon_with(home: Path, **host_settings: int) -> LocalPeer:
    init_home(home)
    config = home / CONFIG_FILE
    text = config.read_text()
    for key, value in host_settings.items():
        lines = [line for line in text.splitlines() if line.startswith(f"{key} = ")]
        assert len(lines) == 1, key
        text = text.replace(lines[0], f"{key} = {value}")
    config.write_text(text)
    peer = LocalPeer("flooded", home)
    peer.start()
    peer.wait_ready()
    return peer


@pytest.mark.skipif(not _loopback_alias_works(), reason="127.0.0.2 is not routed to lo here")
def test_a_connection_flood_from_one_address_is_throttled_while_another_connects(tmp_path: Path) -> None:
    daemon = _daemon_with(tmp_path / "home", pending_handshakes_per_ip_max=PENDING_PER_IP)
    flood: list[socket.socket] = []
    try:
        port = int(Multiaddr(daemon.addr).value_for_protocol("tcp"))
        # The flood: connections that never say a word, all held open at once.
        flood = [_flood_connection(port) for _ in range(FLOOD_CONNECTIONS)]
        closed = [sock is None or _closed_by_peer(sock, 0.05) for sock in flood]
        at_once = closed.count(True)
        # Refused ones are closed at once; a second look gives slow ones a fair chance.
        closed = [
            was or (sock is not None and _closed_by_peer(sock, 0.5))
            for was, sock in zip(closed, flood, strict=True)
        ]
        held = closed.count(False)
        assert held == PENDING_PER_IP, f"{held} flood connections held, expected {PENDING_PER_IP}"

        # Meanwhile another address still gets in: its handshake is answered.
        with _connect_from(BYSTANDER, port) as bystander:
            bystander.sendall(MULTISTREAM + NOISE_PROPOSAL)
            answer = b""
            deadline = time.monotonic() + 5
            while NOISE_PROPOSAL not in answer and time.monotonic() < deadline:
                chunk = bystander.recv(64)
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(MULTISTREAM) and NOISE_PROPOSAL in answer, answer

        stats = run_cli(daemon.home, "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        refused = _find_counter(json.loads(stats.stdout), limits.REFUSED_PENDING_PER_IP)
        assert refused == FLOOD_CONNECTIONS - PENDING_PER_IP
        print(
            f"\n{FLOOD_CONNECTIONS} silent connections from {FLOODER}: {held} held for their handshake, "
            f"{refused} refused ({at_once} seen closed within 50 ms); {BYSTANDER} negotiated Noise meanwhile"
        )
    finally:
        for sock in flood:
            if sock is not None:
                sock.close()
        stop_all([daemon])


def _find_counter(stats: object, name: str) -> int:
    """The counter's value wherever `pyagent stats --json` nests it."""
    if isinstance(stats, dict):
        for key, value in stats.items():
            if key.endswith(name) and isinstance(value, int):
                return value
            found = _find_counter(value, name)
            if found >= 0:
                return found
    return -1


def test_an_inconsistent_limit_is_one_line_and_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    config = home / CONFIG_FILE
    config.write_text(
        config.read_text().replace("pending_handshakes_max = 64 ", "pending_handshakes_max = 2 ")
    )
    done = subprocess.run(
        [sys.executable, "-m", "pyagent.cli", "--home", str(home), "daemon"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pending_handshakes_per_ip_max (8) must not exceed pending_handshakes_max (2)" in lines[0]


async def _host(config: HostConfig) -> tuple[Host, trio.MemoryReceiveChannel[Event]]:
    send, receive = trio.open_memory_channel[Event](1024)
    return Host(generate_new_ed25519_identity(), config, send), receive


def _ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "listen",
    [
        "/ip4/127.0.0.1/tcp/0",
        pytest.param(
            "/ip6/::1/tcp/0", marks=pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback")
        ),
    ],
)
async def test_inbound_slots_come_back_when_connections_close(listen: str) -> None:
    """py-libp2p 0.8.1 kept each inbound connection's task, and its slot, until the swarm stopped: after
    ``connections_max`` connections in a daemon's life every new one was refused. (Over IPv6 too, whose
    addresses py-libp2p's wrappers lose: the limits track each connection by its socket.)"""
    server, _ = await _host(HostConfig(listen_addrs=[listen], connections_max=3))
    async with server.running():
        for attempt in range(8):
            client, _ = await _host(HostConfig())
            async with client.running():
                assert await client.connect(server.listen_addrs()[0]) == server.peer_id, attempt
                with trio.fail_after(5):
                    while server.peer_id not in client.connected_peers():
                        await trio.sleep(0.01)
            with trio.fail_after(5):
                while client.peer_id in server.connected_peers():
                    await trio.sleep(0.01)
        admission = server._guards.listeners.admission
        assert admission.pending_total == 0
        assert admission.counts("::1" if "/ip6/" in listen else "127.0.0.1") == (0, 0)


async def test_a_stream_flood_is_reset_over_the_rate_and_then_cut_off() -> None:
    burst = 20
    limits_config = FloodLimits(stream_opens_per_peer_per_s=1, stream_opens_per_peer_burst=burst)
    server, _ = await _host(HostConfig(flood_limits=limits_config))
    client, _ = await _host(HostConfig())
    async with server.running(), client.running():
        await client.connect(server.listen_addrs()[0])
        opened = failed = 0

        async def open_one() -> None:
            nonlocal opened, failed
            try:
                stream = await client.libp2p_host.new_stream(
                    ID.from_base58(server.peer_id), [TProtocol(str(PING_PROTOCOL_ID))]
                )
            except Exception:
                failed += 1
                return
            opened += 1
            await stream.reset()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(open_one)
        stats = server.stats()
        # py-libp2p itself opens an identify stream or two per connection, which count too.
        assert opened <= burst and failed >= 200 - burst
        # A burst of resets, then the flooder's connection is closed.
        assert burst - 2 <= stats[limits.STREAMS_RATE_LIMITED] <= burst + 10
        assert stats[limits.PEERS_DISCONNECTED_STREAM_FLOOD] >= 1
        with trio.fail_after(5):
            while client.peer_id in server.connected_peers():
                await trio.sleep(0.01)
        # A well-behaved peer is untouched.
        other, _ = await _host(HostConfig())
        async with other.running():
            await other.connect(server.listen_addrs()[0])
            assert await other.libp2p_ping(server.peer_id) < 5
