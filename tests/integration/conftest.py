"""Fixtures that run real ``pyagent daemon`` processes on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from pyagent.localmesh import LocalPeer, start_mesh, stop_all
from pyagent.testing.netns import NetnsUnavailable, Network, check_available, network

DAEMONKIT = Path(__file__).resolve().parents[1] / "daemonkit"


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
