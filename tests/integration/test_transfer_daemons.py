"""Bulk transfer between two real daemons: 256 MiB, hash-verified, in bounded memory, resumed after a cut.

The test-only ``blob`` component (tests/daemonkit) sends a generated blob with a ``Transfer`` effect and
checks it on the other side chunk by chunk; neither side ever holds it whole.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pyagent._core import blake3
from pyagent.controlclient import ControlClient
from pyagent.localmesh import LocalPeer, converged, wait_until
from pyagent.node.transfer import TransferConfig, blob_digest

pytestmark = pytest.mark.usefixtures("daemonkit")

MIB = 1 << 20
BIG = 256 * MIB
# The receiver may queue the core's chunk budget, one window per transfer and its own buffers: a
# generous bound that is still far below the blob.
RSS_GROWTH_MAX = 96 * MIB
TRANSFER_TIMEOUT_S = 300.0


def load_blob_module() -> ModuleType:
    # By path, so the test process does not put the test plugin where importlib.metadata would find it.
    path = Path(__file__).resolve().parents[1] / "daemonkit" / "pyagent_daemonkit" / "blob.py"
    spec = importlib.util.spec_from_file_location("daemonkit_blob", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


def expected_digest(size: int, seed: int) -> str:
    source = load_blob_module().GeneratedSource(seed, size)
    chunk = TransferConfig().chunk_size_bytes
    hashes = b"".join(blake3(source.read(offset, chunk)) for offset in range(0, size, chunk))
    return blob_digest(hashes).hex()


def peak_rss_bytes(peer: LocalPeer) -> int:
    assert peer.process is not None
    for line in Path(f"/proc/{peer.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def send_blob(sender: LocalPeer, receiver: LocalPeer, size: int, seed: int) -> dict[str, Any]:
    client = ControlClient(sender.home, timeout_s=TRANSFER_TIMEOUT_S + 10)
    return client.call(
        "daemonkit.send_blob",
        peer=receiver.peer_id,
        addrs=[receiver.addr],
        size=size,
        seed=seed,
        timeout_s=TRANSFER_TIMEOUT_S,
    )


def received(receiver: LocalPeer, sender: LocalPeer) -> dict[str, Any]:
    status = receiver.call("daemonkit.blob_status")
    return next((entry for key, entry in status.items() if key.startswith(sender.peer_id + "/")), {})


def test_256_mib_arrive_verified_in_bounded_memory(mesh: Callable[..., list[LocalPeer]]) -> None:
    sender, receiver = mesh(2)
    wait_until(lambda: converged([sender, receiver]), 30, "a mesh of two")
    rss_before = peak_rss_bytes(receiver)
    began = time.monotonic()
    result = send_blob(sender, receiver, BIG, seed=7)
    took = time.monotonic() - began
    growth = peak_rss_bytes(receiver) - rss_before
    rate = BIG / took / 1e6
    print(f"\n256 MiB in {took:.1f} s ({rate:.1f} MB/s); receiver peak RSS grew {growth / MIB:.1f} MiB")

    want = expected_digest(BIG, seed=7)
    assert result == {"size": BIG, "digest": want, "resumed_from": []}
    got = received(receiver, sender)
    assert got["digest"] == want and got["received"] == BIG and got["gaps"] == 0 and got["resent_bytes"] == 0
    assert growth < RSS_GROWTH_MAX


def test_a_cut_transfer_resumes_from_its_last_acknowledged_chunk(
    mesh: Callable[..., list[LocalPeer]],
) -> None:
    sender, receiver = mesh(2)
    wait_until(lambda: converged([sender, receiver]), 30, "a mesh of two")
    size = 96 * MIB
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome.update(send_blob(sender, receiver, size, seed=11))

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: received(receiver, sender).get("received", 0) >= 16 * MIB, 60, "16 MiB received", 0.02)
    sender.call("daemonkit.disconnect", peer=receiver.peer_id)
    thread.join(TRANSFER_TIMEOUT_S)

    assert outcome.get("digest") == expected_digest(size, seed=11)
    resumed_from = outcome["resumed_from"]
    print(f"\ncut after >= 16 MiB; resumed from {[offset / MIB for offset in resumed_from]} MiB")
    assert resumed_from and resumed_from[0] >= 16 * MIB - TransferConfig().window_bytes
    got = received(receiver, sender)
    assert got["aborts"] >= 1 and got["received"] == size and got["digest"] == outcome["digest"]
    # It continued where it stopped: no gap, and at most one window of chunks came a second time.
    assert got["gaps"] == 0 and got["resent_bytes"] <= TransferConfig().window_bytes
