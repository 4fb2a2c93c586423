"""Interop proof: a rust-libp2p peer (its own spec pnet) dials our PnetTCP host and pings it.

Slow: the first run builds ``interop/rust-peer`` (the ``rust_peer`` fixture in conftest.py).
"""

import os
import pathlib
import time

import pytest
import trio
from test_pnet import listen_address, running_host

from pyagent._core import key_fingerprint, parse_swarm_key
from pyagent.node.pnet import generate_swarm_key

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 30


async def run_rust_peer(binary: pathlib.Path, key_file: pathlib.Path, address: str) -> tuple[float, str, str]:
    """Run the peer once: (seconds taken, its one-line outcome, its log on stderr)."""
    started = time.perf_counter()
    result = await trio.run_process(
        [str(binary), str(key_file), address], capture_stdout=True, capture_stderr=True, check=False
    )
    return time.perf_counter() - started, result.stdout.decode().strip(), result.stderr.decode()


async def test_rust_libp2p_peer_with_our_key_pings_us(
    rust_peer: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    key_text = generate_swarm_key()
    key_file = tmp_path / "swarm.key"
    key_file.write_text(key_text)
    psk = parse_swarm_key(key_text)
    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_host(psk) as host:
            elapsed, output, log = await run_rust_peer(rust_peer, key_file, str(listen_address(host)))
    print(f"\nrust-libp2p, same key: {output} ({elapsed:.3f} s)")
    assert output.startswith("PING_OK"), output
    assert f"swarm key fingerprint {key_fingerprint(psk)}" in log


async def test_rust_libp2p_peer_with_another_key_is_refused(
    rust_peer: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    key_file = tmp_path / "swarm.key"
    key_file.write_text(generate_swarm_key())
    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_host(os.urandom(32)) as host:
            elapsed, output, _ = await run_rust_peer(rust_peer, key_file, str(listen_address(host)))
    print(f"\nrust-libp2p, another key: {output} ({elapsed:.3f} s)")
    assert output.startswith(("CONNECTION_FAILED", "CONNECTION_CLOSED")), output
    assert elapsed < 2.0
