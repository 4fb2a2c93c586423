"""The sharded, Raft-replicated key-value store (docs/adr/0011-multi-raft-kv.md)."""

from pyagent.proto.kv.component import NAME, FoundShards, RaftKv, ShardStatus
from pyagent.proto.kv.config import Config

__all__ = ["NAME", "Config", "FoundShards", "RaftKv", "ShardStatus"]
