"""Durability through a real daemon: ``kill -9`` in the middle of a write storm loses no acknowledged batch.

The test-only ``journal`` component (tests/daemonkit) answers an append only once its synced batch is
durable. Many clients append at once; the daemon is killed with SIGKILL while they do; after a restart
every acknowledged batch is there, and every batch there is whole (all of its records or none).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pyagent.controlclient import ControlClient, ControlError, DaemonNotRunning
from pyagent.localmesh import LocalPeer

pytestmark = pytest.mark.usefixtures("daemonkit")

WRITERS = 16
STORM_S = 3.0


def test_kill_9_mid_storm_keeps_every_acknowledged_batch_whole(mesh: Callable[..., list[LocalPeer]]) -> None:
    (node,) = mesh(1)
    acknowledged: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        client = ControlClient(node.home, timeout_s=10)
        while not stop.is_set():
            try:
                acknowledged.append(client.call("daemonkit.append", size=256))
            except (ControlError, DaemonNotRunning, OSError):
                return  # the daemon is gone: what it acknowledged is what counts

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    time.sleep(STORM_S)
    node.kill()
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acknowledged) > 100, "the storm was too small to mean anything"

    node.start()
    node.wait_ready()
    state = node.call("daemonkit.read")
    found = {int(sequence): count for sequence, count in state["found"].items()}
    lost = sorted(set(acknowledged) - found.keys())
    torn = {sequence: count for sequence, count in found.items() if count != state["records_per_batch"]}
    print(f"\n{len(acknowledged)} batches acknowledged before kill -9; {len(found)} on disk after restart")
    assert lost == [] and torn == {}
    # Nothing that was written is written over: new appends continue after the survivors.
    assert node.call("daemonkit.append") == max(found) + 1
