"""LoRA delta averaging (issue 14, docs/lora.md "Averaging protocol"): a sans-I/O core that merges the
peers' deltas round by round in Moshpit-style groups, compressed, signed and optionally robust."""

from pyagent.errors import ConfigError
from pyagent.proto.lora.commands import (
    AwaitMerged,
    Contribute,
    LoraStatus,
    MergeResult,
    RoundFinished,
)
from pyagent.proto.lora.component import NAME, LoraAveraging, MembersView
from pyagent.proto.lora.config import Config
from pyagent.proto.lora.messages import PROTOCOL

__all__ = [
    "NAME",
    "PROTOCOL",
    "AwaitMerged",
    "Config",
    "ConfigError",
    "Contribute",
    "LoraAveraging",
    "LoraStatus",
    "MembersView",
    "MergeResult",
    "RoundFinished",
]
