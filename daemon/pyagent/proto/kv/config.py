"""``[kv]``: the sharded key-value store's settings, with defaults for a LAN."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pyagent.proto.kv.placement import REPLICAS_DEFAULT, SHARDS_DEFAULT


@dataclass(frozen=True, slots=True)
class Config:
    # Fixed when a mesh is created: every peer of a mesh must use the same count.
    shards: int = SHARDS_DEFAULT
    replicas: int = REPLICAS_DEFAULT
    # One Raft tick. Elections start after election_ticks to 2 x election_ticks of silence.
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    # How often a leader compares its group's replicas with the placement, and adds missing ones.
    placement_interval_ms: int = 500
    # A leader hands leadership to the placement's preferred peer at most this often per group.
    leader_balance_interval_ms: int = 10_000
    # Entries kept in a group's log after they are applied, before the log is compacted.
    compact_after_entries: int = 10_000
    # How long a request waits for a leader to be elected or found before it fails as unavailable.
    request_timeout_ms: int = 5_000
    # A request forwarded toward a shard's leader that gets no answer in this time is routed again
    # (the peer may have died or lost leadership meanwhile).
    forward_timeout_ms: int = 1_000
    # A ReadIndex that got no answer (raft-rs drops them silently without a leader) is asked again.
    read_index_retry_ms: int = 500
    # Requests parked per node while a shard has no known leader, and reads waiting per shard.
    parked_requests_max: int = 100_000

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Config:
        """The config a ``[kv]`` table describes; ``ValueError`` naming the first bad key."""
        known = {f.name: f for f in fields(cls)}
        for key, value in table.items():
            if key not in known:
                raise ValueError(f"unknown key {key!r} in [kv]; valid keys: {', '.join(known)}")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"[kv] {key} must be a positive integer, got {value!r}")
        config = cls(**table)
        if config.shards > 1 << 16:
            raise ValueError(f"[kv] shards must be at most 65536, got {config.shards}")
        if config.heartbeat_ticks >= config.election_ticks:
            raise ValueError("[kv] heartbeat_ticks must be below election_ticks")
        return config
