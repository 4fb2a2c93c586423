"""``membership.Config``: every timing and size knob of SWIM + Lifeguard, with LAN and WAN presets.

The baselines are hashicorp/memberlist's ``DefaultLANConfig`` and ``DefaultWANConfig``. The LAN preset
probes every 700 ms instead of every second and uses memberlist's ``DefaultLocalConfig`` suspicion
multiplier (3, not 4), so that a crash in a 1,000-member mesh is known everywhere within memberlist's own
12 s minimum suspicion timeout; it lets an unconfirmed suspicion wait 12 minimums instead of 6, which takes
back most of the false positives the shorter minimum costs under heavy loss. docs/membership.md says why
each value is what it is, gives the simnet measurements behind the LAN values and derives the
detection-time bound. The formulas here (suspicion timeouts, retransmit limit, push-pull scaling) are the
ones memberlist uses, so its operators' intuition carries over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from pyagent.proto.membership import limits


@dataclass(frozen=True, slots=True)
class Config:
    # Faster than memberlist's 1 s / 500 ms / 4: detection time is the suspicion minimum plus a probe wait
    # that is exponential with a mean of one interval, and both scale with the interval (docs/membership.md).
    probe_interval_ms: int = 700
    probe_timeout_ms: int = 350
    indirect_checks: int = 3
    suspicion_mult: int = 3
    # A real crash is confirmed by other probers within the minimum; a lone accuser's suspicion is the one
    # likely wrong, so it waits long enough for the refutation (or a push-pull) to reach it.
    suspicion_max_timeout_mult: int = 12
    awareness_max: int = 8
    retransmit_mult: int = 4
    gossip_interval_ms: int = 200
    gossip_nodes: int = 3
    gossip_to_dead_ms: int = 30_000
    # Dead members are kept (and retried every reconnect interval) this long, so partitions heal.
    dead_retention_ms: int = 3_600_000
    reconnect_interval_ms: int = 2_000
    push_pull_interval_ms: int = 30_000
    members_max: int = 10_000
    metadata_bytes_max: int = 512
    addrs_bytes_max: int = 512
    piggyback_bytes_max: int = 1_400
    broadcast_queue_max: int = 4_096
    push_pull_chunk_bytes_max: int = 64 * 1024
    push_pull_chunk_entries_max: int = 512
    metadata_query_ids_max: int = 256
    indirect_relays_max: int = 256
    changes_max: int = 4_096
    join_attempts_max: int = 6
    join_backoff_initial_ms: int = 1_000
    join_backoff_max_ms: int = 30_000
    # A node that has seen no other live member for this long says so once (an ``Isolated`` notice): a
    # node started with a wrong bootstrap list, or restarted apart from its mesh, runs a mesh of its own.
    isolation_warning_ms: int = 60_000
    # Lifeguard's mechanisms, separately switchable so that simnet can measure each one: its LHA-Probe is
    # local_health with nacks, its LHA-Suspicion dynamic_suspicion; buddy_system tells a suspect directly
    # (on any probe exchanged with it) and, our extension, answers a stale accusation to whoever made it.
    dynamic_suspicion: bool = True
    local_health: bool = True
    nacks: bool = True
    buddy_system: bool = True
    # Byte counters re-encode every message; a simulator that measures bytes itself turns them off.
    count_bytes: bool = True

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"membership.Config.{spec.name} must be a bool, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"membership.Config.{spec.name} must be a positive integer, got {value!r}")
        if self.probe_timeout_ms >= self.probe_interval_ms:
            raise ValueError("membership.Config.probe_timeout_ms must be below probe_interval_ms")
        if self.suspicion_max_timeout_mult < 1 or self.suspicion_mult < 1:
            raise ValueError("membership.Config.suspicion_mult must be at least 1")
        if self.metadata_bytes_max > limits.METADATA_BYTES_MAX:
            raise ValueError(
                f"membership.Config.metadata_bytes_max must be at most {limits.METADATA_BYTES_MAX}"
            )
        if self.addrs_bytes_max > limits.ADDRS_MAX * limits.ADDR_CHARS_MAX:
            raise ValueError("membership.Config.addrs_bytes_max exceeds what the wire format can carry")
        # One alive update (our own included) must fit one piggyback, or it could never be gossiped.
        entry_bytes_max = self.addrs_bytes_max + limits.ENTRY_OVERHEAD_BYTES_MAX
        if not entry_bytes_max <= self.piggyback_bytes_max <= limits.PIGGYBACK_BYTES_MAX:
            raise ValueError(
                f"membership.Config.piggyback_bytes_max must be within [{entry_bytes_max}, "
                f"{limits.PIGGYBACK_BYTES_MAX}] (addrs + entry overhead)"
            )
        if self.push_pull_chunk_bytes_max > limits.CHUNK_BYTES_MAX:
            raise ValueError(
                f"membership.Config.push_pull_chunk_bytes_max must be at most {limits.CHUNK_BYTES_MAX}"
            )
        if self.push_pull_chunk_entries_max > limits.ENTRIES_MAX:
            raise ValueError(
                f"membership.Config.push_pull_chunk_entries_max must be at most {limits.ENTRIES_MAX}"
            )
        if self.metadata_query_ids_max > limits.QUERY_IDS_MAX:
            raise ValueError(
                f"membership.Config.metadata_query_ids_max must be at most {limits.QUERY_IDS_MAX}"
            )
        if self.join_backoff_initial_ms > self.join_backoff_max_ms:
            raise ValueError("membership.Config.join_backoff_initial_ms must not exceed join_backoff_max_ms")

    def without_lifeguard(self) -> Config:
        """Plain SWIM, the Lifeguard paper's baseline: fixed suspicion timeout, no local health scaling,
        no nacks, refutations spread by gossip alone."""
        return replace(self, dynamic_suspicion=False, local_health=False, nacks=False, buddy_system=False)

    def suspicion_min_ms(self, members: int) -> float:
        """memberlist's ``suspicionTimeout``: suspicion_mult x max(1, log10(N)) x probe interval."""
        node_scale = max(1.0, math.log10(max(1, members)))
        return self.suspicion_mult * node_scale * self.probe_interval_ms

    def suspicion_max_ms(self, members: int) -> float:
        if not self.dynamic_suspicion:
            return self.suspicion_min_ms(members)
        return self.suspicion_max_timeout_mult * self.suspicion_min_ms(members)

    def retransmit_limit(self, members: int) -> int:
        """How many times one update is sent before it is dropped (memberlist's ``retransmitLimit``)."""
        return self.retransmit_mult * math.ceil(math.log10(members + 1))

    def push_pull_period_ms(self, members: int) -> int:
        """memberlist's ``pushPullScale``: one more interval per doubling of N above 32, so the total
        anti-entropy traffic of a cluster grows as N log N instead of N squared."""
        if members <= PUSH_PULL_SCALE_THRESHOLD:
            return self.push_pull_interval_ms
        multiplier = math.ceil(math.log2(members) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
        return self.push_pull_interval_ms * multiplier

    def dead_everywhere_bound_ms(self, members: int) -> float:
        """An upper bound on the time from a crash to every healthy member marking it dead.

        Worst case, with every member healthy (health score 0): the crashed member is probed by some
        member within two of that member's round-robin rounds, (2(N-1) + 1) probe intervals, counting the
        interval the failed probe itself takes; the suspicion then runs at most its maximum; and the
        dead update reaches everyone at the latest at the next push-pull of each member (anti-entropy),
        plus one probe interval for the messages in flight. Gossip usually delivers it in well under a
        second, so real detection is far below this bound (see docs/membership.md).
        """
        probe_ms = (2 * (members - 1) + 1) * self.probe_interval_ms
        return (
            probe_ms
            + self.suspicion_max_ms(members)
            + self.push_pull_period_ms(members)
            + self.probe_interval_ms
        )


PUSH_PULL_SCALE_THRESHOLD = 32


LAN = Config()
"""memberlist's DefaultLANConfig timings, but probing every 700 ms (timeout 350 ms) with suspicion_mult 3 and
suspicion_max_timeout_mult 12."""

WAN = Config(
    probe_interval_ms=5_000,
    probe_timeout_ms=3_000,
    suspicion_mult=6,
    suspicion_max_timeout_mult=6,
    gossip_interval_ms=500,
    gossip_nodes=4,
    gossip_to_dead_ms=60_000,
    push_pull_interval_ms=60_000,
    reconnect_interval_ms=10_000,
)
"""memberlist's DefaultWANConfig timings: slower probes and longer suspicion for lossy, high-latency links."""
