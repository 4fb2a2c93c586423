"""LoRA averaging on real daemons over real libp2p on 127.0.0.1, through the Python client ``Mesh``.

- Three daemons on their default config merge a round: every peer ends with the same result, built from
  all three deltas, and ``pyagent lora status`` shows it.
- One of three daemons is killed with ``kill -9`` right after it contributed, while its deltas are on
  the wire: the two survivors end the round (well before the deadline would force them to), agree, and
  hold the exact weighted mean of the deltas that were delivered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import trio

from pyagent.client import Mesh
from pyagent.localmesh import LocalPeer, start_mesh, stop_all, wait_until
from pyagent.proto.lora import PROTOCOL, MergeResult

NUMEL = 200_000
LOSSLESS = '\n[lora]\ncodec = "f32"\nrelay_codec = "f32"\nround_timeout_ms = 20000\n'


def deltas(count: int, seed: int) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(NUMEL).astype(np.float32) * (1 + index) for index in range(count)]


def weighted_mean(values: list[npt.NDArray[np.float32]], weights: list[float]) -> npt.NDArray[np.float64]:
    total = np.zeros(NUMEL)
    for value, weight in zip(values, weights, strict=True):
        total += weight * value.astype(np.float64)
    return total / sum(weights)


async def contribute(home: Path, delta: npt.NDArray[np.float32], weight: float) -> int:
    async with Mesh.open(home) as mesh:
        return await mesh.lora.contribute(delta, weight)


async def merged(home: Path, round_: int) -> MergeResult:
    async with Mesh.open(home) as mesh:
        return await mesh.lora.merged(round_)


def lora_ready(peers: list[LocalPeer]) -> bool:
    """Every daemon lists every other as alive and speaking the LoRA protocol: a round's groups are laid
    out from that list, so a peer whose metadata has not spread yet would be left out."""
    ids = {p.peer_id for p in peers}
    for peer in peers:
        speakers = {
            m["peer"] for m in peer.call("members") if m["state"] == "alive" and PROTOCOL in m["protocols"]
        }
        if not ids - {peer.peer_id} <= speakers:
            return False
    return True


def mesh_of(mesh: Callable[..., list[LocalPeer]], count: int) -> list[LocalPeer]:
    peers = mesh(count)
    wait_until(lambda: lora_ready(peers), 30, "every daemon lists every other as speaking LoRA")
    return peers


def test_three_daemons_on_defaults_merge_a_round(mesh: Callable[..., list[LocalPeer]]) -> None:
    peers = mesh_of(mesh, 3)
    values, weights = deltas(3, seed=1), [100.0, 300.0, 600.0]

    async def main() -> list[MergeResult]:
        async with trio.open_nursery() as nursery:
            for peer, value, weight in zip(peers, values, weights, strict=True):
                nursery.start_soon(contribute, peer.home, value, weight)
        results: list[MergeResult] = []
        for peer in peers:
            results.append(await merged(peer.home, 0))
        return results

    results = trio.run(main)
    for result in results:
        assert result.round == 0
        assert sorted(result.peers) == sorted(p.peer_id for p in peers), result.peers
        assert result.weight == sum(weights)
        assert result.bytes_sent > 0 and result.bytes_received > 0
        np.testing.assert_array_equal(result.delta, results[0].delta)
    # The default codec keeps 3% of the values at 2 bits: far from exact, but it must point the way the
    # exact mean does.
    exact = weighted_mean(values, weights)
    cosine = float(results[0].delta @ exact) / (np.linalg.norm(results[0].delta) * np.linalg.norm(exact))
    assert cosine > 0.1, cosine
    status = peers[0].cli("lora", "status", timeout_s=30)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^rounds completed +1$", status.stdout, re.MULTILINE), status.stdout
    assert "lora round 0 finished (complete): 3 peers" in peers[0].log_text()


def test_a_peer_killed_mid_round_leaves_the_exact_mean_of_what_was_delivered(tmp_path: Path) -> None:
    peers = start_mesh(tmp_path, 3, config_extra=LOSSLESS)
    try:
        wait_until(lambda: lora_ready(peers), 30, "every daemon lists every other as speaking LoRA")
        values, weights = deltas(3, seed=2), [1.0, 2.0, 3.0]
        victim = peers[2]

        async def main() -> tuple[list[MergeResult], float]:
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for peer, value, weight in zip(peers[:2], values[:2], weights[:2], strict=True):
                    nursery.start_soon(contribute, peer.home, value, weight)
                await contribute(victim.home, values[2], weights[2])
                victim.kill()
            results = [await merged(peer.home, 0) for peer in peers[:2]]
            return results, trio.current_time() - started

        results, elapsed_s = trio.run(main)
        by_peer = {peer.peer_id: index for index, peer in enumerate(peers)}
        survivors = {peers[0].peer_id, peers[1].peer_id}
        for result in results:
            assert survivors <= set(result.peers), result.peers
            assert result.peers == results[0].peers, "the survivors merged different sets"
            delivered = [by_peer[peer] for peer in result.peers]
            exact = weighted_mean([values[i] for i in delivered], [weights[i] for i in delivered])
            np.testing.assert_allclose(result.delta, exact, rtol=1e-5, atol=1e-5)
            assert result.weight == sum(weights[i] for i in delivered)
        print(f"round with a peer killed mid-round: {elapsed_s:.2f} s, merged {len(results[0].peers)} deltas")
        assert elapsed_s < 20, "the survivors waited for the deadline instead of dropping the dead peer"
    finally:
        stop_all(peers)


def test_the_cli_contributes_a_file_and_refuses_bad_input_in_one_line(
    mesh: Callable[..., list[LocalPeer]], tmp_path: Path
) -> None:
    (peer,) = mesh(1)
    delta = np.arange(1000, dtype=np.float32)
    np.save(tmp_path / "delta.npy", delta)
    np.save(tmp_path / "square.npy", np.zeros((4, 4), dtype=np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    refusals = {
        "missing": ["contribute", str(tmp_path / "absent.npy"), "--weight", "1"],
        "not npy": ["contribute", str(tmp_path / "junk.npy"), "--weight", "1"],
        "2-D": ["contribute", str(tmp_path / "square.npy"), "--weight", "1"],
        "zero weight": ["contribute", str(tmp_path / "delta.npy"), "--weight", "0"],
        "negative round": ["merged", "-1"],
    }
    for what, args in refusals.items():
        refused = peer.cli("lora", *args)
        assert refused.returncode == 2, (what, refused.stdout, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1, (what, refused.stderr)

    done = peer.cli("lora", "contribute", str(tmp_path / "delta.npy"), "--weight", "5")
    assert (done.returncode, done.stdout) == (0, "contributed to round 0\n"), done.stderr
    # Alone in its mesh, a peer's round is its own delta.
    result = peer.cli("lora", "merged", "0")
    assert result.returncode == 0, result.stderr
    summary, path = result.stdout.splitlines()
    assert summary.startswith("round 0: 1 peer(s), weight 5"), summary
    np.testing.assert_array_equal(np.load(path), delta)
    again = peer.cli("lora", "contribute", str(tmp_path / "delta.npy"), "--weight", "5", "--round", "0")
    assert again.returncode == 2 and "already contributed" in again.stderr, again.stderr
