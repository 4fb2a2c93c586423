"""The disk model: fsync latency, group commit, Persisted in write order, and a crash that loses exactly
what was not yet durable. The journal kit (tests/testkit) writes and checks; these tests pin the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pyagent.proto.storage import Put, WriteBatch
from pyagent_simnet import Sim, run_scenario
from pyagent_simnet.disk import Disk
from pyagent_simnet.sim import SimNode


def journal_sim(seed: int = 1, peers: int = 1, **journal: Any) -> Sim:
    return Sim(
        {
            "peers": peers,
            "duration_s": 3.0,
            "components": ["journal"],
            # Entry n is written at n x 100 ms; an fsync takes 5 ms; unsynced entries never reach the disk
            # on their own (no writeback within the test).
            "journal": {"interval_ms": 100, "unsynced_every": 2, **journal},
            "disk": {"sync_latency": {"kind": "constant", "ms": 5}, "writeback_ms": 1e9},
            "checks": {"liveness": False},
        },
        seed=seed,
    )


def durable_entries(node: SimNode) -> tuple[int, int] | None:
    return node.disk.durable.reader("journal").log_bounds("j")


@pytest.mark.parametrize(
    ("crash_s", "durable", "lost"),
    [
        # Entry 4 (unsynced) was written at 0.4 s and reported Persisted, but no fsync followed it.
        (0.45, (1, 3), 1),
        # Entry 5's fsync (0.5 s .. 0.505 s) is in flight: 4 and 5 are lost, a torn batch is absent.
        (0.502, (1, 3), 2),
        # That fsync completed: it took the unsynced entry 4 along, as an fsync flushes all before it.
        (0.506, (1, 5), 0),
    ],
)
def test_a_crash_loses_exactly_what_was_not_yet_durable(
    testkit: Path, crash_s: float, durable: tuple[int, int], lost: int
) -> None:
    sim = journal_sim()
    node = sim.nodes[0]
    sim.run(crash_s)
    written = node.disk.visible.reader("journal").log_bounds("j")
    assert written is not None and written[1] == durable[1] + lost
    sim.crash(node)
    assert durable_entries(node) == durable
    assert node.disk.visible.reader("journal").log_bounds("j") == durable  # readers see what survived
    assert node.disk.batches_lost == lost
    sim.restart(node)
    sim.run(crash_s + 0.15)  # one more entry: the journal resumed right after what survived
    assert node.disk.visible.reader("journal").log_bounds("j") == (1, durable[1] + 1)
    observer = sim.observers[0]
    observer.check()
    assert observer.violations == []


def test_a_wipe_loses_everything_and_the_node_starts_empty(testkit: Path) -> None:
    sim = journal_sim()
    sim.run(0.55)
    sim.crash(sim.nodes[0], wipe=True)
    assert durable_entries(sim.nodes[0]) is None and sim.nodes[0].disk.visible.is_empty()
    sim.restart(sim.nodes[0])
    sim.run(0.66)  # its first entry, written at 0.65 s and synced 5 ms later
    assert durable_entries(sim.nodes[0]) == (1, 1)


def test_the_same_seed_replays_the_same_disks_and_trace(testkit: Path) -> None:
    def run(seed: int) -> tuple[str, list[tuple[int, int] | None]]:
        sim = Sim(
            {
                "peers": 6,
                "duration_s": 20.0,
                "components": ["journal"],
                "journal": {"interval_ms": 30, "unsynced_every": 3},
                "disk": {
                    "sync_latency": {"kind": "lognormal", "median_ms": 4, "sigma": 1.0},
                    "writeback_ms": 500,
                },
                "faults": [
                    {"at_s": 3.0, "action": "crash", "count": 2},
                    {"at_s": 5.0, "action": "restart"},
                    {"at_s": 9.0, "action": "crash-wipe", "count": 1},
                    {"at_s": 11.0, "action": "restart"},
                    {"at_s": 14.0, "action": "crash", "count": 3},
                ],
            },
            seed=seed,
        )
        outcome = run_scenario(sim)
        assert outcome.exit_code == 0, outcome.problems
        assert outcome.result["disk"]["batches_lost_in_crashes"] > 0
        return outcome.result["trace_hash"], [durable_entries(node) for node in sim.nodes]

    first, second, other = run(4), run(4), run(5)
    assert first == second
    assert first[0] != other[0]


def test_writes_that_arrive_during_an_fsync_complete_with_the_next_one(testkit: Path) -> None:
    sim = Sim(
        {
            "peers": 1,
            "duration_s": 1.0,
            "components": ["journal"],
            "journal": {"interval_ms": 20},
            "disk": {"sync_latency": {"kind": "constant", "ms": 50}},
            "checks": {"liveness": False},
        },
        seed=1,
    )
    outcome = run_scenario(sim)
    assert outcome.exit_code == 0, outcome.problems
    writes, syncs = outcome.result["counters"]["writes"], outcome.result["counters"]["syncs"]
    assert writes == 50 and 19 <= syncs <= 21  # one fsync per 50 ms, however many batches it takes
    # At 1 s, the batches of the running fsync and those waiting for the next one are not persisted yet.
    assert 50 - 2 * 50 // 20 <= outcome.result["journal_entries_persisted"] < 50


def test_unsynced_batches_are_reported_after_their_predecessors_only() -> None:
    disk = Disk()
    synced, unsynced = (WriteBatch("c", (Put(b"k", b"%d" % i),), sync=i == 0, tag=i) for i in range(2))
    disk.write(synced)
    disk.start_sync()
    disk.write(unsynced)
    assert disk.reportable() == []  # it must not overtake the batch before it
    assert [b.tag for b in disk.synced()] == [0, 1]
    assert disk.durable.reader("c").get(b"k") == b"0"  # the unsynced one is reported, not durable
    assert disk.visible.reader("c").get(b"k") == b"1"
    disk.crash(wipe=False)
    assert disk.visible.reader("c").get(b"k") == b"0" and disk.batches_lost == 1


def test_the_journal_catches_a_disk_that_acknowledges_before_the_fsync(
    testkit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted storage bug: every batch treated as unsynced, so Persisted comes before durability."""
    honest = Sim._write

    def lying(self: Sim, node: SimNode, batch: WriteBatch) -> None:
        honest(self, node, dataclasses.replace(batch, sync=False))

    monkeypatch.setattr(Sim, "_write", lying)
    sim = Sim(
        {
            "peers": 4,
            "duration_s": 5.0,
            "components": ["journal"],
            "faults": [{"at_s": 2.0, "action": "crash", "count": 2}, {"at_s": 3.0, "action": "restart"}],
        },
        seed=1,
    )
    outcome = run_scenario(sim)
    assert outcome.exit_code == 1
    problems = "\n".join(outcome.problems)
    assert "was synced and Persisted" in problems
    assert "before it was durable" in problems
