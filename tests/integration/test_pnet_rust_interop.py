"""Interop proof: a rust-libp2p peer (its own spec pnet) dials our PnetTCP host and pings it.

Slow: the first run builds ``interop/rust-peer`` (rust-libp2p, a few minutes). The build goes to
``$CARGO_TARGET_DIR`` (default ``~/.cache/pyagent/interop-target``) so later runs are quick.
"""

import os
import pathlib
import subprocess
import time

import pytest
import trio
from test_pnet import listen_address, running_host

from pyagent._core import key_fingerprint, parse_swarm_key
from pyagent.node.pnet import generate_swarm_key

pytestmark = pytest.mark.slow

PEER_DIR = pathlib.Path(__file__).resolve().parents[2] / "interop" / "rust-peer"
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def rust_peer() -> pathlib.Path:
    target_dir = pathlib.Path(
        os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache" / "pyagent" / "interop-target")
    )
    subprocess.run(
        ["cargo", "build", "--quiet", "--manifest-path", str(PEER_DIR / "Cargo.toml")],
        check=True,
        timeout=BUILD_TIMEOUT_S,
        env={**os.environ, "CARGO_TARGET_DIR": str(target_dir)},
    )
    return target_dir / "debug" / "pyagent-interop-rust-peer"


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
