"""A 3|2 partition of real daemons on real (namespaced) hosts: each side declares the other dead, then heals.

Five ``pyagent daemon`` processes run in five network namespaces joined by a bridge; the partition moves two
hosts' veths to a second bridge, as a failed switch would. The test process drives every daemon through its
control socket (a unix socket in its home, reachable from the root namespace).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyagent.localmesh import (
    LocalPeer,
    converged,
    logs_on_failure,
    member_states,
    start_mesh,
    stop_all,
    wait_until,
)
from pyagent.proto import membership
from pyagent.testing.netns import Network

pytestmark = pytest.mark.netns

HOST_COUNT = 5
MAJORITY_COUNT = 3
LISTEN_PORT = 4001
# Every member is healthy here, so the documented bound holds; the factor covers a loaded 2-core machine
# (five daemons plus the test share it), where a probe round can run late.
BOUND_SLACK = 1.5
CONVERGE_TIMEOUT_S = 30.0
POLL_S = 0.2


@dataclass
class SideTimes:
    """Seconds from the partition until every member of a side saw every member of the other side so."""

    suspect_s: float | None = None
    dead_s: float | None = None


def dead_everywhere_timeout_s() -> float:
    return BOUND_SLACK * membership.LAN.dead_everywhere_bound_ms(HOST_COUNT) / 1000


def suspicion_timeout_s() -> float:
    return membership.LAN.suspicion_max_ms(HOST_COUNT) / 1000


def heal_timeout_s() -> float:
    # The first reconnect ping after the heal refutes and triggers a push-pull; gossip does the rest.
    # Leave room for a few reconnect rounds and one push-pull period as the anti-entropy fallback.
    config = membership.LAN
    return BOUND_SLACK * (3 * config.reconnect_interval_ms + config.push_pull_interval_ms) / 1000


@pytest.fixture
def net(netns: Callable[[int], Network]) -> Network:
    return netns(HOST_COUNT)


@pytest.fixture
def daemons(tmp_path: Path, net: Network) -> Iterator[list[LocalPeer]]:
    """One daemon per namespaced host; node-1 starts the mesh, the others bootstrap from it."""
    peers = start_mesh(tmp_path, len(net.hosts), placements=net.placements(LISTEN_PORT))
    try:
        yield peers
    finally:
        stop_all(peers)


View = dict[str, str]


@dataclass(frozen=True)
class Lapse:
    what: str
    # A suspicion is refuted within a probe round or two (SWIM at work on a loaded machine); a death is not.
    dead: bool


def holds(views: Sequence[View], subjects: Sequence[LocalPeer], states: set[str]) -> bool:
    """Every view holds every subject in one of ``states``."""
    return all(view.get(p.peer_id) in states for view in views for p in subjects)


def wait_partition_seen(
    sides: Sequence[Sequence[LocalPeer]], timeout_s: float
) -> tuple[list[SideTimes], list[Lapse]]:
    """Poll both sides until each holds the other dead. Returns each side's times and every moment a side
    held one of its own members not alive: a false accusation across a working link."""
    started = time.monotonic()
    times = [SideTimes() for _ in sides]
    own_side_lapses: list[Lapse] = []
    while not all(t.dead_s is not None for t in times):
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            raise TimeoutError(f"the sides did not hold each other dead within {timeout_s:.0f} s: {times}")
        for index, (side, side_times) in enumerate(zip(sides, times, strict=True)):
            views = [member_states(p) for p in side]
            other = [p for s in sides if s is not side for p in s]
            if side_times.suspect_s is None and holds(views, other, {"suspect", "dead"}):
                side_times.suspect_s = elapsed
            if side_times.dead_s is None and holds(views, other, {"dead"}):
                side_times.dead_s = elapsed
            if not holds(views, side, {"alive"}):
                dead = not holds(views, side, {"alive", "suspect"})
                own_side_lapses.append(Lapse(f"side {index} at {elapsed:.1f} s: {views}", dead))
        time.sleep(POLL_S)
    return times, own_side_lapses


def incarnations(peer: LocalPeer) -> dict[str, int]:
    return {m["peer"]: m["incarnation"] for m in peer.call("members")}


# Above the sum of this test's own deadlines (plus daemon start-up and shutdown), so that one of them, which
# says what did not happen, fires first and the daemons and namespaces are always cleaned up.
TEST_TIMEOUT_S = int(
    CONVERGE_TIMEOUT_S + dead_everywhere_timeout_s() + suspicion_timeout_s() + heal_timeout_s() + 60
)


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_partition_3_2_is_detected_on_both_sides_and_heals(net: Network, daemons: list[LocalPeer]) -> None:
    peers = daemons
    with logs_on_failure(peers):
        converge_s = wait_until(lambda: converged(peers), CONVERGE_TIMEOUT_S, "the first convergence")
        print(f"\n{HOST_COUNT} namespaced daemons converged in {converge_s:.1f} s")
        before = incarnations(peers[0])

        sides = [peers[:MAJORITY_COUNT], peers[MAJORITY_COUNT:]]
        net.partition([net.hosts[:MAJORITY_COUNT], net.hosts[MAJORITY_COUNT:]])
        timeout_s = dead_everywhere_timeout_s()
        times, lapses = wait_partition_seen(sides, timeout_s)
        for label, side_times in zip(("3-side", "2-side"), times, strict=True):
            print(
                f"{label} saw the other side suspect after {side_times.suspect_s:.1f} s "
                f"and dead after {side_times.dead_s:.1f} s (bound {timeout_s:.0f} s)"
            )
        if lapses:
            print("own members not alive within a side:", *(lapse.what for lapse in lapses), sep="\n  ")
        deaths = [lapse.what for lapse in lapses if lapse.dead]
        assert not deaths, f"a side declared its own members dead across a working link: {deaths}"
        # A suspicion still open at this moment ends, refuted, within the longest suspicion timeout.
        wait_until(
            lambda: all(holds([member_states(p) for p in side], side, {"alive"}) for side in sides),
            suspicion_timeout_s(),
            "each side holding all of its own members alive",
        )

        net.heal()
        heal_s = wait_until(lambda: converged(peers), heal_timeout_s(), "reconvergence after the heal")
        print(f"healed: all {HOST_COUNT} alive everywhere {heal_s:.1f} s after the heal")

        # Each member was declared dead by the other side, so it had to outbid that with a new incarnation,
        # and everyone learns it. "All alive everywhere" can come first: a member that never held X dead
        # holds it alive at its old incarnation until the refutation's gossip reaches it.
        def all_grown() -> bool:
            views = [incarnations(peer) for peer in peers]
            return all(view[peer_id] > old for view in views for peer_id, old in before.items())

        spread_s = wait_until(all_grown, heal_timeout_s(), "every refutation known everywhere")
        print(f"every member's refutation known everywhere {spread_s:.1f} s after reconvergence")
