"""Fixtures that run real ``pyagent daemon`` processes on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
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


def run_cli(home: Path | None, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real ``pyagent`` CLI as an operator would."""
    prefix = ["--home", str(home)] if home is not None else []
    return subprocess.run(
        [sys.executable, "-m", "pyagent.cli", *prefix, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
