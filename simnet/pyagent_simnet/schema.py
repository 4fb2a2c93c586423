"""The pieces a scenario table is checked with: typed fields with defaults and bounds.

``scenario.py`` describes simnet's own tables with them, and every kit (``kits.py``) describes its own
table the same way, so a kit's keys are checked, defaulted and typed for ``--set`` exactly like simnet's.
A problem is one ``ConfigError`` line naming the file and the dotted key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyagent.errors import ConfigError

Check = Callable[[Any], str | None]


def at_least(bound: float) -> Check:
    return lambda v: None if v >= bound else f"must be at least {bound}, got {v}"


def positive(v: Any) -> str | None:
    return None if v > 0 else f"must be positive, got {v}"


def probability(v: Any) -> str | None:
    return None if 0 <= v <= 1 else f"must be a probability in [0, 1], got {v}"


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"unknown value {v!r} (one of {', '.join(choices)})"


nonneg = at_least(0)


@dataclass(frozen=True, slots=True)
class Field:
    """One key: its type (``float`` also takes an int), its default, and an optional bound check."""

    kind: type
    default: Any
    check: Check | None = None


def fill(
    given: Mapping[str, Any],
    fields: Mapping[str, Field],
    table: str,
    source: str,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """``given`` checked against ``fields``, with every missing key set to its default. Keys in ``skip``
    are someone else's (nested tables) and left out; any other unknown key is an error."""
    out: dict[str, Any] = {}
    for key in given:
        if key not in fields and key not in skip:
            raise ConfigError(f"{source}: {dotted(table, key)}: unknown key")
    for key, field in fields.items():
        value = given.get(key, copy.deepcopy(field.default))
        out[key] = typed(value, field, dotted(table, key), source)
    return out


def typed(value: Any, field: Field, key: str, source: str) -> Any:
    if field.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, field.kind) or (field.kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key}: expected {field.kind.__name__}, got {type(value).__name__}")
    if field.check is not None:
        problem = field.check(value)
        if problem:
            raise ConfigError(f"{source}: {key}: {problem}")
    return value


def dotted(table: str, key: str) -> str:
    return f"{table}.{key}" if table else key
