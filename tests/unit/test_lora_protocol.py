"""The averaging protocol end to end, on an in-memory mesh of real components (``lora_harness``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lora_harness import Mesh, peers

from pyagent.proto.lora import Config, LoraStatus
from pyagent.proto.lora.grid import step_count

LOSSLESS = Config(codec="f32", relay_codec="f32")
NUMEL = 257


def deltas_for(names: list[str], seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    rng = np.random.default_rng(seed)
    deltas = {p: rng.standard_normal(NUMEL).astype(np.float32) for p in names}
    weights = {p: float(rng.integers(1, 1000)) for p in names}
    return deltas, weights


def exact_mean(deltas: dict[str, np.ndarray], weights: dict[str, float], over: tuple[str, ...]) -> np.ndarray:
    total = sum(weights[p] for p in over)
    return sum(weights[p] * deltas[p].astype(np.float64) for p in over) / total  # type: ignore[return-value]


def run_round(
    mesh: Mesh, deltas: dict[str, np.ndarray], weights: dict[str, float], round_number: int = 1
) -> dict[str, int]:
    for peer in mesh.peers:
        assert mesh.contribute(peer, round_number, deltas[peer], weights[peer]).error is None
    return {peer: mesh.await_merged(peer, round_number) for peer in mesh.peers}


@pytest.mark.parametrize(
    ("count", "group_size_max"), [(1, 4), (2, 4), (10, 4), (16, 4), (27, 3), (50, 4), (16, 16)]
)
def test_every_peer_gets_the_exact_weighted_mean_without_waiting(count: int, group_size_max: int) -> None:
    names = peers(count)
    mesh = Mesh(names, Config(codec="f32", relay_codec="f32", group_size_max=group_size_max))
    deltas, weights = deltas_for(names, count)
    waits = run_round(mesh, deltas, weights)
    mesh.run(until_us=0)  # no timer fires: every step ends on what the peers sent each other
    expected = exact_mean(deltas, weights, tuple(names))
    results = [mesh.result(waits[p]) for p in names]
    for result in results:
        assert result.peers == tuple(names)
        assert result.weight == pytest.approx(sum(weights.values()))
        np.testing.assert_allclose(result.delta, expected, rtol=1e-5, atol=1e-6)
        assert np.array_equal(result.delta, results[0].delta)  # identical, not merely close


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(2, 14),
    group_size_max=st.integers(2, 6),
    killed=st.sets(st.integers(0, 13), max_size=5),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_with_peers_killed_mid_transfer_each_result_is_the_exact_mean_of_what_it_names(
    count: int, group_size_max: int, killed: set[int], seed: int, data: st.DataObject
) -> None:
    names = peers(count)
    victims = [names[i] for i in sorted(killed) if i < count and i != 0]
    mesh = Mesh(names, Config(codec="f32", relay_codec="f32", group_size_max=group_size_max))
    deltas, weights = deltas_for(names, seed)
    waits = run_round(mesh, deltas, weights)
    for victim in victims:
        reached = data.draw(st.sets(st.sampled_from(names)), label=f"{victim} reached")
        mesh.kill(victim, delivered_to=reached)
    mesh.run()
    survivors = [p for p in names if p not in victims]
    results = {p: mesh.result(waits[p]) for p in survivors}
    for peer, result in results.items():
        assert set(result.peers) <= set(names)
        assert result.weight == pytest.approx(sum(weights[p] for p in result.peers))
        expected = exact_mean(deltas, weights, result.peers)
        np.testing.assert_allclose(result.delta, expected, rtol=1e-5, atol=1e-6, err_msg=peer)
    if not victims:
        # No failure: every peer holds the same numbers, on any number of peers.
        assert all(np.array_equal(r.delta, results[survivors[0]].delta) for r in results.values())
        assert all(r.peers == tuple(names) for r in results.values())
    if step_count(count, group_size_max) == 1:
        # One step: every survivor is in the one group, and the group agrees on the delivered set.
        assert len({results[p].peers for p in survivors}) == 1
        assert all(p in results[survivors[0]].peers for p in survivors)
        assert not set(victims) & set(results[survivors[0]].peers) or all(
            np.array_equal(results[p].delta, results[survivors[0]].delta) for p in survivors
        )


def test_a_peer_that_dies_before_sending_anything_is_waited_for_until_the_frames_timer() -> None:
    names = peers(8)
    config = Config(codec="f32", relay_codec="f32", group_size_max=8, round_timeout_ms=10_000)
    mesh = Mesh(names, config)
    deltas, weights = deltas_for(names, 3)
    for peer in names[1:]:
        mesh.contribute(peer, 1, deltas[peer], weights[peer])
    waits = {p: mesh.await_merged(p, 1) for p in names[1:]}
    mesh.dead.add(names[0])
    mesh.run()
    for peer in names[1:]:
        result = mesh.result(waits[peer])
        assert result.peers == tuple(names[1:])
        np.testing.assert_allclose(result.delta, exact_mean(deltas, weights, tuple(names[1:])), rtol=1e-5)
    assert mesh.now_us >= 7_500_000  # they waited for its value until the frames timer


def test_int2_top_k_frames_still_leave_a_group_in_exact_agreement() -> None:
    names = peers(16)
    mesh = Mesh(names, Config(codec="int2", relay_codec="int2", density=0.1, chunk_size=64, group_size_max=4))
    deltas, weights = deltas_for(names, 5)
    waits = run_round(mesh, deltas, weights)
    mesh.run(until_us=0)
    results = [mesh.result(waits[p]) for p in names]
    assert all(np.array_equal(r.delta, results[0].delta) for r in results)
    error = np.linalg.norm(results[0].delta - exact_mean(deltas, weights, tuple(names)))
    assert error > 0  # lossy: not the exact mean, but the same numbers everywhere
    assert results[0].bytes_sent < 3 * 3 * NUMEL  # three steps, three peers each, well under a byte a value


def test_error_feedback_carries_what_a_frame_left_out_into_the_next_round() -> None:
    names = peers(2)
    config = Config(codec="int2", density=0.05, chunk_size=64, group_size_max=2, error_feedback=True)
    mesh = Mesh(names, config)
    delta = {p: np.linspace(-1, 1, NUMEL, dtype=np.float32) for p in names}
    zero = {p: np.zeros(NUMEL, dtype=np.float32) for p in names}
    weights = {p: 1.0 for p in names}
    target = delta[names[0]]
    total = np.zeros(NUMEL)
    gaps = []
    for round_number in range(1, 41):
        waits = run_round(mesh, delta if round_number == 1 else zero, weights, round_number)
        mesh.run(until_us=0)
        total += mesh.result(waits[names[0]]).delta
        gaps.append(np.linalg.norm(total - target) / np.linalg.norm(target))
    # Round 1 carries 5 % of the values; the rest follows in later rounds, a few values at a time.
    assert gaps[0] > 0.8
    assert gaps[-1] < 0.05


def test_a_tampered_blob_is_rejected_and_counted_and_the_rest_is_averaged() -> None:
    names = peers(4)
    mesh = Mesh(names, Config(codec="f32", relay_codec="f32", group_size_max=4))

    def flip_a_byte(sender: str, data: bytes) -> bytes:
        return data[:-100] + bytes([data[-100] ^ 1]) + data[-99:] if sender == names[3] else data

    mesh.tamper = flip_a_byte
    deltas, weights = deltas_for(names, 9)
    waits = run_round(mesh, deltas, weights)
    mesh.run()
    for peer in names[:3]:
        result = mesh.result(waits[peer])
        assert result.peers == tuple(names[:3])
        np.testing.assert_allclose(result.delta, exact_mean(deltas, weights, tuple(names[:3])), rtol=1e-5)
        status = mesh.replies[mesh.request(peer, LoraStatus())].value
        assert isinstance(status, dict)
        assert status["rejected"]["bad_signature"] + status["rejected"]["malformed"] == 1


@pytest.mark.parametrize(
    ("delta", "weight", "code"),
    [
        (np.zeros((2, 2), dtype=np.float32), 1.0, "invalid"),
        (np.zeros(4, dtype=np.float64), 1.0, "invalid"),
        (np.array([1.0, np.nan], dtype=np.float32), 1.0, "invalid"),
        (np.zeros(4, dtype=np.float32), 0.0, "invalid"),
        (np.zeros(4, dtype=np.float32), float("inf"), "invalid"),
    ],
)
def test_a_bad_contribution_is_refused(delta: np.ndarray, weight: float, code: str) -> None:
    mesh = Mesh(peers(1), LOSSLESS)
    reply = mesh.contribute("p000", 1, delta, weight)
    assert reply.error is not None and reply.error.code == code


def test_rounds_only_go_forward() -> None:
    mesh = Mesh(peers(1), LOSSLESS)
    delta = np.ones(4, dtype=np.float32)
    assert mesh.contribute("p000", 5, delta, 1.0).error is None
    again = mesh.contribute("p000", 5, delta, 1.0).error
    older = mesh.contribute("p000", 3, delta, 1.0).error
    assert again is not None and again.code == "invalid"
    assert older is not None and older.code == "stale_round"
    merged = mesh.result(mesh.await_merged("p000", 5))
    np.testing.assert_array_equal(merged.delta, delta)


def test_the_transform_hook_replaces_the_delta_before_it_is_sent() -> None:
    class Hooks:
        def pyagent_lora_transform_delta(self, round: int, delta: np.ndarray) -> np.ndarray:
            return np.clip(delta, -0.5, 0.5)

    names = peers(2)
    mesh = Mesh(names, LOSSLESS, hooks=Hooks())
    deltas = {p: np.full(NUMEL, 3.0, dtype=np.float32) for p in names}
    waits = run_round(mesh, deltas, {p: 1.0 for p in names})
    mesh.run()
    np.testing.assert_array_equal(mesh.result(waits[names[1]]).delta, np.full(NUMEL, 0.5, dtype=np.float32))


def test_lost_reports_are_asked_for_again_and_the_peers_still_agree() -> None:
    names = peers(20)
    mesh = Mesh(names, Config(codec="f32", relay_codec="f32", group_size_max=4), lose_every=7)
    deltas, weights = deltas_for(names, 11)
    waits = run_round(mesh, deltas, weights)
    mesh.run()
    results = [mesh.result(waits[p]) for p in names]
    assert all(r.peers == tuple(names) for r in results)
    assert all(np.array_equal(r.delta, results[0].delta) for r in results)
    np.testing.assert_allclose(results[0].delta, exact_mean(deltas, weights, tuple(names)), rtol=1e-5)


def test_values_that_arrive_before_the_peer_contributes_wait_for_its_round() -> None:
    names = peers(6)
    mesh = Mesh(names, LOSSLESS)
    deltas, weights = deltas_for(names, 12)
    early, late = names[:3], names[3:]
    for peer in early:
        mesh.contribute(peer, 1, deltas[peer], weights[peer])
    mesh.run(until_us=0)  # the early peers' values reach the late ones before these contribute
    for peer in late:
        mesh.contribute(peer, 1, deltas[peer], weights[peer])
    waits = {p: mesh.await_merged(p, 1) for p in names}
    mesh.run(until_us=0)
    expected = exact_mean(deltas, weights, tuple(names))
    for peer in names:
        result = mesh.result(waits[peer])
        assert result.peers == tuple(names)
        np.testing.assert_allclose(result.delta, expected, rtol=1e-5)
    assert all(mesh.result(waits[p]).bytes_received > 0 for p in late)


def test_a_peer_whose_delta_has_another_length_is_left_out() -> None:
    names = peers(4)
    mesh = Mesh(names, LOSSLESS)
    deltas, weights = deltas_for(names, 13)
    deltas[names[3]] = deltas[names[3]][:-1]
    waits = run_round(mesh, deltas, weights)
    mesh.run()
    for peer in names[:3]:
        assert mesh.result(waits[peer]).peers == tuple(names[:3])
        status = mesh.replies[mesh.request(peer, LoraStatus())].value
        assert isinstance(status, dict) and status["rejected"]["wrong_length"] == 1
        assert status["rounds_completed"] == 1 and status["peers_last_round"] == 3


def test_a_hook_that_returns_a_bad_delta_fails_the_contribution() -> None:
    class Hooks:
        def pyagent_lora_transform_delta(self, round: int, delta: np.ndarray) -> np.ndarray:
            return np.full(delta.size, np.nan, dtype=np.float32)

    mesh = Mesh(peers(1), LOSSLESS, hooks=Hooks())
    error = mesh.contribute("p000", 1, np.ones(4, dtype=np.float32), 1.0).error
    assert error is not None and error.code == "invalid" and "pyagent_lora_transform_delta" in error.message


def test_a_strided_delta_is_taken_as_its_values() -> None:
    names = peers(2)
    mesh = Mesh(names, LOSSLESS)
    strided = np.arange(2 * NUMEL, dtype=np.float32)[::2]
    waits = run_round(mesh, dict.fromkeys(names, strided), dict.fromkeys(names, 1.0))
    mesh.run(until_us=0)
    np.testing.assert_array_equal(mesh.result(waits[names[0]]).delta, strided)
