"""``[lora]``: the LoRA averaging protocol's settings, with defaults for a LAN mesh of tens of peers."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pyagent.errors import ConfigError

CODECS = ("f32", "fp16", "int8", "int4", "int2")
# A peer's own delta may also take "auto": per round, the most precise codec whose frame moves within a
# quarter of a step at the measured bandwidth (``bandwidth.py``; the core's ``lora_choose_codec``).
AUTO = "auto"
AGGREGATORS = ("mean", "trimmed_mean", "centered_clip", "multi_krum")


@dataclass(frozen=True, slots=True)
class Config:
    # How each step's value is encoded. ``codec`` carries a peer's own delta (step 0), with error
    # feedback; ``relay_codec`` the group means of later steps, without it (see docs/lora.md).
    # "f32" is lossless: the exact weighted mean of the delivered deltas, at 32 bits per value.
    codec: str = "int2"
    relay_codec: str = "int8"
    # With codec = "auto": the bandwidth assumed until this peer's first transfers are measured.
    bandwidth_guess_bytes_per_s: int = 12_500_000
    # Top-k: keep ``density`` of every ``chunk_size`` values (1.0 = dense). Blocks share one scale.
    density: float = 0.03
    chunk_size: int = 4096
    block_size: int = 64
    error_feedback: bool = True
    # Groups of at most this many peers; ceil(log_group_size_max(N)) steps per round.
    group_size_max: int = 8
    # A round ends by this long after it started, whatever is missing; each step gets an equal share.
    round_timeout_ms: int = 30_000
    # Unanswered reports are sent again this often (messages can be lost; transfers cannot).
    report_retry_ms: int = 200
    # Robust aggregation: norm clipping first (each value to at most ``norm_clip`` x the group's median
    # norm; 0 = off), then ``aggregator``.
    aggregator: str = "mean"
    norm_clip: float = 0.0
    # The share of a group's rows assumed poisoned. trimmed_mean drops that share of the values at each end
    # of every coordinate; multi_krum drops f = floor(trim_fraction x n) whole rows.
    trim_fraction: float = 0.2
    # centered_clip: radius as a multiple of the median distance to the start point, and iterations.
    clip_radius: float = 1.0
    clip_iterations: int = 3
    # Bounds: values per delta, bytes per received blob, rounds kept for late or early frames.
    numel_max: int = 1 << 26
    blob_bytes_max: int = 64 << 20
    rounds_kept: int = 4

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Config:
        """The config a ``[lora]`` table describes; ``ConfigError`` naming the first bad key."""
        known = {f.name: f for f in fields(cls)}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"unknown key {key!r} in [lora]; valid keys: {', '.join(known)}")
            expected = type(getattr(cls(), key))
            if not _has_type(value, expected):
                raise ConfigError(f"[lora] {key} must be a {expected.__name__}, got {value!r}")
        config = cls(**table)
        config._check()
        return config

    def _check(self) -> None:
        for key, allowed in (("codec", (*CODECS, AUTO)), ("relay_codec", CODECS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"[lora] {key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}"
                )
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(
                f"[lora] aggregator must be one of {', '.join(AGGREGATORS)}, got {self.aggregator!r}"
            )
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f"[lora] density must be in (0, 1], got {self.density}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"[lora] trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.block_size % 8 or not 8 <= self.block_size <= 65_536:
            raise ConfigError(f"[lora] block_size must be a multiple of 8 in 8..65536, got {self.block_size}")
        if not 8 <= self.chunk_size <= 65_536:
            raise ConfigError(f"[lora] chunk_size must be in 8..65536, got {self.chunk_size}")
        if self.group_size_max < 2:
            raise ConfigError(f"[lora] group_size_max must be at least 2, got {self.group_size_max}")
        if self.norm_clip < 0 or self.clip_radius <= 0:
            raise ConfigError("[lora] norm_clip must be >= 0 and clip_radius > 0")
        for key in (
            "chunk_size",
            "round_timeout_ms",
            "report_retry_ms",
            "clip_iterations",
            "numel_max",
            "blob_bytes_max",
            "rounds_kept",
            "bandwidth_guess_bytes_per_s",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"[lora] {key} must be a positive integer, got {getattr(self, key)}")

    @property
    def k_per_chunk(self) -> int:
        """Values top-k keeps per chunk; 0 when dense."""
        if self.density >= 1.0:
            return 0
        return max(1, round(self.density * self.chunk_size))


def _has_type(value: object, expected: type) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, expected) and not isinstance(value, bool)
