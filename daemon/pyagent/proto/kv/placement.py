"""Where keys and replicas live: keys hash to a fixed number of shards, and shards' replicas are placed on
live members by capacity, hardware tags and spread.

Everything here is a pure function of its inputs, so every peer that sees the same members computes the
same placement, and a later shard directory can call the same functions (or replace ``place`` with its
own table) without touching the Raft component that acts on the result.

Keys hash with blake2b, so placement is stable across processes, machines and Python versions. A key may
carry a hash tag, as Redis Cluster keys do: when it holds ``{tag}``, only ``tag`` is hashed, so the keys
``{user42}/name`` and ``{user42}/mail`` share a shard and one prefix scan sees both.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pyagent.proto.types import PeerId

SHARDS_DEFAULT = 64
REPLICAS_DEFAULT = 3
# The hardware tag prefix that names a failure domain: replicas of one shard spread over distinct
# zones before two share one.
ZONE_TAG_PREFIX = "zone:"


def hash_part(key: bytes) -> bytes:
    """The part of ``key`` that picks its shard: the first ``{tag}`` when it has a non-empty one."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def shard_of(key: bytes, shards: int) -> int:
    digest = hashlib.blake2b(hash_part(key), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def node_id_of(peer: PeerId) -> int:
    """The Raft node id of ``peer``: 64 bits of its hash, never 0 (raft-rs reserves 0 for "none").

    Two peers colliding would need 2**32 peers in one mesh for even odds; ``Candidate`` lists are checked
    for it anyway, so a collision is refused rather than silently merged."""
    digest = hashlib.blake2b(peer.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live member that can host replicas, as placement sees it."""

    peer: PeerId
    # Relative capacity: a peer with twice the weight gets about twice the replicas.
    weight: float = 1.0
    zone: str = ""


def zone_of(hardware_tags: Sequence[str]) -> str:
    for tag in hardware_tags:
        if tag.startswith(ZONE_TAG_PREFIX):
            return tag[len(ZONE_TAG_PREFIX) :]
    return ""


def capacity_weight(cpu_cores: int, memory_bytes: int) -> float:
    """A peer's weight from what it announces: cores, tempered by memory, never zero (a peer that
    announces nothing still gets its share)."""
    cores = max(cpu_cores, 1)
    memory_gib = memory_bytes / (1 << 30)
    return float(cores) if memory_gib <= 0 else math.sqrt(cores * max(memory_gib, 0.5))


def _score(shard: int, candidate: Candidate) -> float:
    """Weighted rendezvous hashing (Schindelhauer & Schomaker): each (shard, peer) pair draws a uniform
    number and the highest ``-weight / ln(u)`` wins. A peer joining or leaving moves only the shards it
    wins or held, and weights shift shares proportionally."""
    digest = hashlib.blake2b(f"{shard}/{candidate.peer}".encode(), digest_size=8).digest()
    uniform = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1): the log is finite
    return -candidate.weight / math.log(uniform)


def place(shard: int, candidates: Sequence[Candidate], replicas: int) -> list[PeerId]:
    """The ``replicas`` peers that should hold ``shard``, best first (the first is the preferred leader).

    Peers are taken in rendezvous order, except that a peer whose zone already holds a replica waits
    until every zone has one. Fewer candidates than ``replicas`` give every candidate.
    """
    ranked = sorted(candidates, key=lambda c: (-_score(shard, c), c.peer))
    chosen: list[Candidate] = []
    zones_used: set[str] = set()
    for candidate in ranked:
        if len(chosen) == replicas:
            break
        if candidate.zone and candidate.zone in zones_used:
            continue
        chosen.append(candidate)
        zones_used.add(candidate.zone)
    for candidate in ranked:
        if len(chosen) == replicas:
            break
        if candidate not in chosen:
            chosen.append(candidate)
    return [c.peer for c in chosen]
