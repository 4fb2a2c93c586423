"""Fixtures that run real ``pyagent daemon`` processes on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from pyagent.localmesh import LocalPeer, start_mesh, stop_all
from pyagent.testing.netns import NetnsUnavailable, Network, check_available, network

DAEMONKIT = Path(__file__).resolve().parents[1] / "daemonkit"
RUST_PEER_DIR = Path(__file__).resolve().parents[2] / "interop" / "rust-peer"
RUST_PEER_BUILD_TIMEOUT_S = 900


@pytest.fixture
def daemonkit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Daemons started after this load the test-only ``daemonkit`` plugin (tests/daemonkit)."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(DAEMONKIT), os.environ.get("PYTHONPATH")]))
    )


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Callable[..., list[LocalPeer]]]:
    """Start N daemons; every daemon started through this fixture is stopped at teardown."""
    started: list[LocalPeer] = []

    def make(count: int, swarm_key_file: str = "") -> list[LocalPeer]:
        peers = start_mesh(tmp_path / f"mesh{len(started)}", count, swarm_key_file)
        started.extend(peers)
        return peers

    yield make
    stop_all(started)


@pytest.fixture(scope="session")
def rust_peer() -> Path:
    """The rust-libp2p peer of ``interop/rust-peer``. ``./dev test`` builds it before pytest starts (the
    first build takes minutes, more than a test may), into the shared ``$CARGO_TARGET_DIR``; this only
    checks it is current, or builds it into ``~/.cache/pyagent/interop-target`` for a bare pytest."""
    target_dir = Path(
        os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "pyagent" / "interop-target")
    )
    subprocess.run(
        ["cargo", "build", "--quiet", "--manifest-path", str(RUST_PEER_DIR / "Cargo.toml")],
        check=True,
        timeout=RUST_PEER_BUILD_TIMEOUT_S,
        env={**os.environ, "CARGO_TARGET_DIR": str(target_dir)},
    )
    return target_dir / "debug" / "pyagent-interop-rust-peer"


@pytest.fixture
def netns() -> Iterator[Callable[[int], Network]]:
    """Make a network of N namespaced hosts on one bridge (skips where namespaces cannot be made);
    every one is removed at teardown."""
    try:
        check_available()
    except NetnsUnavailable as reason:
        pytest.skip(str(reason))
    with ExitStack() as stack:
        yield lambda host_count: stack.enter_context(network(host_count))
