"""Fixtures that run real ``pyagent daemon`` processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyagent.localmesh import LocalPeer, start_mesh, stop_all


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
