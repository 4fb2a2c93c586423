"""Scenario files: TOML in, a validated ``Scenario`` out, or one ``ConfigError`` line naming key and file.

The schema below is the single source of truth for keys, their types, defaults and bounds; ``--set``
overrides are typed by it too, so ``--set network.loss=0.05`` becomes a float and ``--set peers=x`` fails
the same way a bad file does.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyagent.errors import ConfigError
from pyagent_simnet import latency

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

Check = Callable[[Any], str | None]


def _at_least(bound: float) -> Check:
    return lambda v: None if v >= bound else f"must be at least {bound}, got {v}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be positive, got {v}"


def _probability(v: Any) -> str | None:
    return None if 0 <= v <= 1 else f"must be a probability in [0, 1], got {v}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"unknown value {v!r} (one of {', '.join(choices)})"


_nonneg = _at_least(0)


@dataclass(frozen=True, slots=True)
class Field:
    kind: type
    default: Any
    check: Check | None = None


# Table name -> key -> Field. The empty name is the top level. `latency` and `membership` hold free-form
# tables checked by their own builders.
SCHEMA: dict[str, dict[str, Field]] = {
    "": {
        "name": Field(str, "unnamed"),
        "description": Field(str, ""),
        "peers": Field(int, 10, _at_least(1)),
        "duration_s": Field(float, 30.0, _positive),
        "seed": Field(int, 0, _nonneg),
        "components": Field(list, ["ping"]),
        "preset": Field(str, "lan"),
        "connections": Field(str, "on-first-send", _one_of("on-first-send", "none")),
        "seeds_per_peer": Field(int, 3, _at_least(1)),
        "join_spread_s": Field(float, 0.0, _nonneg),
        # "join": every peer joins through seeds (a join storm at 1,000 peers); "formed": the first `peers`
        # start as one mesh that has already converged, as a long-running one would be.
        "start": Field(str, "join", _one_of("join", "formed")),
        "sample_interval_s": Field(float, 1.0, _positive),
        "extra_components": Field(list, []),
        # Load the installed `pyagent` plugins and add their pyagent_add_components to every node.
        "plugins": Field(bool, False),
        "trace": Field(bool, False),
    },
    "network": {
        "latency": Field(dict, {"kind": "lognormal", "median_ms": 0.3, "sigma": 0.3}),
        "loss": Field(float, 0.0, _probability),
        "duplicate": Field(float, 0.0, _probability),
        "corrupt": Field(float, 0.0, _probability),
        "bandwidth_bps": Field(int, 0, _nonneg),
        "egress_queue_bytes_max": Field(int, 4 << 20, _at_least(1)),
        "regions": Field(list, []),
        "region_weights": Field(list, []),
        "region_latency_ms": Field(list, []),
        "disconnect_detect_ms": Field(float, 50.0, _nonneg),
        # Frames a clog may hold, and frames a paused peer may queue.
        "held_messages_max": Field(int, 1_000_000, _at_least(1)),
    },
    "workload": {
        "ping_rate_per_s": Field(float, 0.0, _nonneg),
    },
    "churn": {
        "join_rate_per_s": Field(float, 0.0, _nonneg),
        "leave_rate_per_s": Field(float, 0.0, _nonneg),
        "start_s": Field(float, 0.0, _nonneg),
        "stop_s": Field(float, 0.0, _nonneg),
        "leave": Field(str, "crash", _one_of("crash", "crash-wipe", "graceful")),
        "peers_max": Field(int, 100_000, _at_least(1)),
    },
    "checks": {
        "false_positives_per_member_hour_max": Field(float, 0.0, _nonneg),
        "detection_bound_s": Field(float, 0.0, _nonneg),
        "convergence_bound_s": Field(float, 0.0, _nonneg),
        "liveness": Field(bool, True),
        "liveness_bound_s": Field(float, 30.0, _positive),
        "ping_success_min": Field(float, 0.0, _probability),
        "rtt_floor_check": Field(bool, True),
    },
    "membership": {},
}

# Keys of the top level that are tables (or the fault array), not values.
TABLES = frozenset(SCHEMA) | {"faults"}

FAULT_ACTIONS: dict[str, dict[str, Field]] = {
    "partition": {
        "sides": Field(list, []),
        "split": Field(float, 0.5, _probability),
        "one_way": Field(bool, False),
    },
    "heal": {},
    "clog": {"peers": Field(list, []), "count": Field(int, 0, _nonneg), "links": Field(list, [])},
    "unclog": {},
    "crash": {"peers": Field(list, []), "count": Field(int, 0, _nonneg)},
    "crash-wipe": {"peers": Field(list, []), "count": Field(int, 0, _nonneg)},
    "restart": {"peers": Field(list, []), "count": Field(int, 0, _nonneg)},
    "leave": {"peers": Field(list, []), "count": Field(int, 0, _nonneg)},
    "pause": {"peers": Field(list, []), "count": Field(int, 0, _nonneg)},
    "resume": {"peers": Field(list, []), "count": Field(int, 0, _nonneg)},
    "gray": {
        "peers": Field(list, []),
        "count": Field(int, 0, _nonneg),
        "delay_ms": Field(float, 100.0, _nonneg),
    },
    "ungray": {},
    "set": {"key": Field(str, ""), "value": Field(float, 0.0, _nonneg)},
}
# Network parameters that a `set` fault may change while the simulation runs.
SETTABLE_AT_RUNTIME = ("loss", "duplicate", "corrupt", "bandwidth_bps")


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario: every table filled with its defaults. ``source`` names the file for errors."""

    source: str
    top: dict[str, Any]
    network: dict[str, Any]
    workload: dict[str, Any]
    churn: dict[str, Any]
    checks: dict[str, Any]
    membership: dict[str, Any]
    faults: tuple[dict[str, Any], ...]
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.top["name"])


def resolve(name_or_path: str) -> Path:
    """A path as given, or a shipped scenario by name: ``partition-heal`` is scenarios/partition-heal.toml."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SCENARIO_DIR / f"{name_or_path.removesuffix('.toml')}.toml"
    if shipped.exists():
        return shipped
    raise ConfigError(f"{name_or_path}: no such scenario file (shipped ones: {', '.join(shipped_names())})")


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")) if SCENARIO_DIR.is_dir() else []


def load(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    path = resolve(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(raw, str(path), overrides)


def from_dict(
    raw: Mapping[str, Any], source: str = "<dict>", overrides: list[str] | tuple[str, ...] = ()
) -> Scenario:
    data = copy.deepcopy(dict(raw))
    for item in overrides:
        _apply_override(data, item, source)
    tables: dict[str, dict[str, Any]] = {}
    for table, fields in SCHEMA.items():
        given = data if table == "" else data.get(table, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: {table}: must be a table")
        if table == "membership":
            tables[table] = dict(given)
            continue
        tables[table] = _fill(given, fields, table, source, skip=TABLES if table == "" else frozenset())
    faults = data.get("faults", [])
    if not isinstance(faults, list):
        raise ConfigError(f"{source}: faults: must be an array of tables ([[faults]])")
    checked_faults = tuple(_check_fault(f, i, source) for i, f in enumerate(faults))
    _check_cross(tables, source)
    return Scenario(
        source,
        tables[""],
        tables["network"],
        tables["workload"],
        tables["churn"],
        tables["checks"],
        tables["membership"],
        checked_faults,
        tuple(overrides),
    )


def _fill(
    given: Mapping[str, Any],
    fields: Mapping[str, Field],
    table: str,
    source: str,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in given:
        if key not in fields and key not in skip:
            raise ConfigError(f"{source}: {_dotted(table, key)}: unknown key")
    for key, field in fields.items():
        value = given.get(key, copy.deepcopy(field.default))
        out[key] = _typed(value, field, _dotted(table, key), source)
    return out


def _typed(value: Any, field: Field, key: str, source: str) -> Any:
    if field.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, field.kind) or (field.kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key}: expected {field.kind.__name__}, got {type(value).__name__}")
    if field.check is not None:
        problem = field.check(value)
        if problem:
            raise ConfigError(f"{source}: {key}: {problem}")
    return value


def _dotted(table: str, key: str) -> str:
    return f"{table}.{key}" if table else key


def _check_fault(fault: Any, index: int, source: str) -> dict[str, Any]:
    where = f"faults[{index}]"
    if not isinstance(fault, dict):
        raise ConfigError(f"{source}: {where}: must be a table")
    action = fault.get("action")
    if action not in FAULT_ACTIONS:
        raise ConfigError(
            f"{source}: {where}.action: unknown fault action {action!r} (one of {', '.join(FAULT_ACTIONS)})"
        )
    fields = {"at_s": Field(float, 0.0, _nonneg), "action": Field(str, action), **FAULT_ACTIONS[action]}
    out = _fill(fault, fields, where, source)
    if action == "set" and out["key"] not in SETTABLE_AT_RUNTIME:
        raise ConfigError(
            f"{source}: {where}.key: cannot change {out['key']!r} at runtime "
            f"(one of {', '.join(SETTABLE_AT_RUNTIME)})"
        )
    return out


def _check_cross(tables: dict[str, dict[str, Any]], source: str) -> None:
    """Constraints that span keys: component names, the region matrix, the latency table."""
    from pyagent_simnet import components  # imported late: it imports the optional membership package

    top, network = tables[""], tables["network"]
    for name in top["components"]:
        if name not in components.AVAILABLE:
            raise ConfigError(
                f"{source}: components: unknown component {name!r} "
                f"(available: {', '.join(components.available_names())})"
            )
    if top["preset"] not in components.presets():
        raise ConfigError(
            f"{source}: preset: unknown preset {top['preset']!r} (one of {', '.join(components.presets())})"
        )
    if "membership" in top["components"]:
        components.check_membership(top["preset"], tables["membership"], source)
    if top["start"] == "formed" and top["join_spread_s"]:
        raise ConfigError(
            f'{source}: join_spread_s: a mesh with start = "formed" starts all at once; set it to 0'
        )
    latency.build(network["latency"], f"{source}: network.latency")
    regions = network["regions"]
    if regions:
        matrix, weights = network["region_latency_ms"], network["region_weights"]
        square = len(matrix) == len(regions) and all(
            isinstance(row, list) and len(row) == len(regions) for row in matrix
        )
        if not square:
            raise ConfigError(
                f"{source}: network.region_latency_ms: must be a {len(regions)}x{len(regions)} matrix"
            )
        if any(not isinstance(v, int | float) or v < 0 for row in matrix for v in row):
            raise ConfigError(f"{source}: network.region_latency_ms: entries must be non-negative numbers")
        if weights and (
            len(weights) != len(regions) or any(not isinstance(w, int | float) or w < 0 for w in weights)
        ):
            raise ConfigError(f"{source}: network.region_weights: one non-negative weight per region")


def _apply_override(data: dict[str, Any], item: str, source: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected key=value")
    if key == "faults":
        # The fault schedule is an array of tables; it is replaced whole: --set 'faults=[]'.
        data["faults"] = _parse_value(text, Field(list, []), key, source)
        return
    table, _, leaf = key.rpartition(".")
    if table not in SCHEMA or (table != "membership" and leaf not in SCHEMA[table]):
        raise ConfigError(f"{source}: --set {key}: unknown key")
    field = SCHEMA[table].get(leaf)
    value = _parse_value(text, field, key, source)
    target = data if table == "" else data.setdefault(table, {})
    target[leaf] = value


def _parse_value(text: str, field: Field | None, key: str, source: str) -> Any:
    if field is None or field.kind in (list, dict):
        # Free-form tables and arrays take TOML syntax: --set components='["ping"]'.
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            if field is None:
                return text
            raise ConfigError(f"{source}: --set {key}: expected a TOML {field.kind.__name__}") from None
    if field.kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{source}: --set {key}: expected true or false, got {text!r}")
    if field.kind is str:
        return text
    try:
        return field.kind(text)
    except ValueError:
        raise ConfigError(f"{source}: --set {key}: expected {field.kind.__name__}, got {text!r}") from None
