"""What a member says about itself beyond liveness: capacity, hardware, load, what it serves.

Metadata is versioned by its owner (``meta_version``) and travels in full inside alive updates, so a
node always holds the metadata that matches the version it records. Its encoded size is bounded by
``Config.metadata_bytes_max``; the decoder checks the same bound on what peers send.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from pyagent.proto.membership import limits

ExtraValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Metadata:
    protocols: tuple[str, ...] = ()
    cpu_cores: int = 0
    memory_bytes: int = 0
    disk_free_bytes: int = 0
    hardware_tags: tuple[str, ...] = ()
    # A load figure the owner chooses (for example the 1-minute load average per core). Each change is
    # a gossiped update, so owners should publish it only when it moves noticeably.
    load: float = 0.0
    plugins: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    software_version: str = ""
    # Plugin-defined keys, collected by the shell from a plugin hook.
    extra: Mapping[str, ExtraValue] = field(default_factory=dict)


EMPTY = Metadata()

_LISTS = (("p", "protocols"), ("h", "hardware_tags"), ("g", "plugins"), ("f", "features"))
_COUNTS = (("c", "cpu_cores"), ("m", "memory_bytes"), ("d", "disk_free_bytes"))
_KNOWN_KEYS = frozenset(["p", "h", "g", "f", "c", "m", "d", "l", "s", "x"])
_UINT64_MAX = (1 << 64) - 1


def encode(metadata: Metadata) -> dict[str, Any]:
    """The compact wire map; fields at their default are left out to keep updates small."""
    out: dict[str, Any] = {}
    if metadata is EMPTY:
        return out
    for key, name in _LISTS:
        value: tuple[str, ...] = getattr(metadata, name)
        if value:
            out[key] = list(value)
    for key, name in _COUNTS:
        count: int = getattr(metadata, name)
        if count:
            out[key] = count
    if metadata.load:
        out["l"] = metadata.load
    if metadata.software_version:
        out["s"] = metadata.software_version
    if metadata.extra:
        out["x"] = dict(metadata.extra)
    return out


def check_local(metadata: Metadata, bytes_max: int) -> None:
    """Validate our own metadata before it is gossiped; raises ``ValueError`` naming the field."""
    decode(encode(metadata), bytes_max, ValueError)


def decode(raw: object, bytes_max: int, error: type[Exception]) -> Metadata:
    """Strictly decode a metadata map; anything off raises ``error``."""
    if type(raw) is dict and not raw:
        # A member that publishes nothing: every field at its default. A joiner fetches one record per
        # member, so this common case skips the field-by-field walk (an empty map packs in 1 byte).
        if bytes_max < 1:
            raise error(f"metadata of 1 bytes exceeds metadata_bytes_max={bytes_max}")
        return EMPTY
    if not isinstance(raw, dict):
        raise error("metadata must be a map")
    unknown = raw.keys() - _KNOWN_KEYS
    if unknown:
        raise error(f"metadata has unknown keys {sorted(map(str, unknown))[:4]}")
    values: dict[str, Any] = {}
    for key, name in _LISTS:
        values[name] = _text_list(raw.get(key, []), name, error)
    for key, name in _COUNTS:
        count = raw.get(key, 0)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= _UINT64_MAX:
            raise error(f"metadata {name} must be an unsigned integer")
        values[name] = count
    load = raw.get("l", 0.0)
    if not isinstance(load, int | float) or isinstance(load, bool) or not 0.0 <= load < float("inf"):
        raise error("metadata load must be a finite non-negative number")
    values["load"] = float(load)
    values["software_version"] = _text(raw.get("s", ""), "software_version", error)
    values["extra"] = _extra(raw.get("x", {}), error)
    # Measured last, once the shape is known to be packable.
    size = len(msgpack.packb(raw, use_bin_type=True))
    if size > bytes_max:
        raise error(f"metadata of {size} bytes exceeds metadata_bytes_max={bytes_max}")
    return Metadata(**values)


def _text(value: object, name: str, error: type[Exception]) -> str:
    if not isinstance(value, str) or len(value) > limits.TEXT_CHARS_MAX:
        raise error(f"metadata {name} must be a string of at most {limits.TEXT_CHARS_MAX} characters")
    return value


def _text_list(value: object, name: str, error: type[Exception]) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > limits.METADATA_LIST_MAX:
        raise error(f"metadata {name} must be a list of at most {limits.METADATA_LIST_MAX} strings")
    return tuple(_text(item, name, error) for item in value)


def _extra(value: object, error: type[Exception]) -> dict[str, ExtraValue]:
    if not isinstance(value, dict) or len(value) > limits.METADATA_EXTRA_MAX:
        raise error(f"metadata extra must be a map of at most {limits.METADATA_EXTRA_MAX} entries")
    out: dict[str, ExtraValue] = {}
    for key, item in value.items():
        _text(key, "extra key", error)
        if isinstance(item, str):
            _text(item, "extra value", error)
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                raise error("metadata extra values must be finite")
        elif not isinstance(item, int | bool) or (
            not isinstance(item, bool) and not -(1 << 63) <= item <= _UINT64_MAX
        ):
            raise error("metadata extra values must be str, int, float or bool")
        out[key] = item
    return out
