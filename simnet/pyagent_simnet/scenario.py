"""Scenario files: TOML in, a validated ``Scenario`` out, or one ``ConfigError`` line naming key and file.

``SCHEMA`` below holds simnet's own tables (the mesh, network, disk, transfers, churn, generic checks);
every other table belongs to a kit (``kits.py``): ``[membership]`` and ``[membership.checks]`` are
checked by the membership kit, ``[ping]`` by the ping kit, and so on. ``--set`` overrides are typed by
the same schemas, so ``--set network.loss=0.05`` becomes a float and ``--set peers=x`` fails the same way
a bad file does.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyagent.errors import ConfigError
from pyagent_simnet import kits, latency
from pyagent_simnet.schema import Field, at_least, fill, nonneg, one_of, positive, probability, typed

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

# Table name -> key -> Field. The empty name is the top level.
SCHEMA: dict[str, dict[str, Field]] = {
    "": {
        "name": Field(str, "unnamed"),
        "description": Field(str, ""),
        "peers": Field(int, 10, at_least(1)),
        "duration_s": Field(float, 30.0, positive),
        "seed": Field(int, 0, nonneg),
        # Kits, by the names they are registered under (entry-point group pyagent_simnet.kits).
        "components": Field(list, ["ping"]),
        "connections": Field(str, "on-first-send", one_of("on-first-send", "none")),
        "join_spread_s": Field(float, 0.0, nonneg),
        # "join": every peer starts on its own (and joins through seeds, for membership: a join storm at
        # 1,000 peers); "formed": the first `peers` start as one mesh that has already converged, as a
        # long-running one would be (each kit decides what that means for its components).
        "start": Field(str, "join", one_of("join", "formed")),
        "sample_interval_s": Field(float, 1.0, positive),
        "extra_components": Field(list, []),
        # Load the installed `pyagent` plugins and add their pyagent_add_components to every node.
        "plugins": Field(bool, False),
        "trace": Field(bool, False),
    },
    "network": {
        "latency": Field(dict, {"kind": "lognormal", "median_ms": 0.3, "sigma": 0.3}),
        "loss": Field(float, 0.0, probability),
        "duplicate": Field(float, 0.0, probability),
        "corrupt": Field(float, 0.0, probability),
        "bandwidth_bps": Field(int, 0, nonneg),
        "egress_queue_bytes_max": Field(int, 4 << 20, at_least(1)),
        "regions": Field(list, []),
        "region_weights": Field(list, []),
        "region_latency_ms": Field(list, []),
        "disconnect_detect_ms": Field(float, 50.0, nonneg),
        # Frames a clog may hold, and frames a paused peer may queue.
        "held_messages_max": Field(int, 1_000_000, at_least(1)),
    },
    "disk": {
        # How long an fsync takes; batches written while one runs are made durable by the next one.
        "sync_latency": Field(dict, {"kind": "lognormal", "median_ms": 1.0, "sigma": 0.5}),
        # Unsynced (sync = false) batches reach the disk this long after they were written, as the OS's
        # writeback would put them there, unless a sync takes them first.
        "writeback_ms": Field(float, 5_000.0, positive),
    },
    "transfers": {
        # The hash list's chunk size: every chunk is hashed, and the digest is the hash of the hashes.
        "chunk_bytes": Field(int, 64 * 1024, at_least(1)),
        # Flow control: chunks a transfer may have unacknowledged on its link.
        "window_chunks": Field(int, 8, at_least(1)),
        # Each directed link's bandwidth for transfers; a link's transfers queue behind each other.
        "bandwidth_bps": Field(int, 1_000_000_000, at_least(1)),
        # A transfer whose link is cut (partition, clog) this long fails, on both sides.
        "stall_timeout_ms": Field(float, 10_000.0, positive),
        # Probability that a chunk arrives damaged (its hash no longer matches): the transfer fails.
        "corrupt": Field(float, 0.0, probability),
        "in_flight_max": Field(int, 100_000, at_least(1)),
    },
    "churn": {
        "join_rate_per_s": Field(float, 0.0, nonneg),
        "leave_rate_per_s": Field(float, 0.0, nonneg),
        "start_s": Field(float, 0.0, nonneg),
        "stop_s": Field(float, 0.0, nonneg),
        "leave": Field(str, "crash", one_of("crash", "crash-wipe", "graceful")),
        "peers_max": Field(int, 100_000, at_least(1)),
    },
    "checks": {
        "liveness": Field(bool, True),
        "liveness_bound_s": Field(float, 30.0, positive),
    },
}
# Per-component config tables handed to components through ``NodeContext.config(name)``, as the daemon's
# config file does: [config.<component>] (free-form; the component checks its own table).
CONFIG = "config"
FAULTS = "faults"

FAULT_ACTIONS: dict[str, dict[str, Field]] = {
    "partition": {
        "sides": Field(list, []),
        "split": Field(float, 0.5, probability),
        "one_way": Field(bool, False),
    },
    "heal": {},
    "clog": {"peers": Field(list, []), "count": Field(int, 0, nonneg), "links": Field(list, [])},
    "unclog": {},
    "crash": {"peers": Field(list, []), "count": Field(int, 0, nonneg)},
    "crash-wipe": {"peers": Field(list, []), "count": Field(int, 0, nonneg)},
    "restart": {"peers": Field(list, []), "count": Field(int, 0, nonneg)},
    "leave": {"peers": Field(list, []), "count": Field(int, 0, nonneg)},
    "pause": {"peers": Field(list, []), "count": Field(int, 0, nonneg)},
    "resume": {"peers": Field(list, []), "count": Field(int, 0, nonneg)},
    "gray": {
        "peers": Field(list, []),
        "count": Field(int, 0, nonneg),
        "delay_ms": Field(float, 100.0, nonneg),
    },
    "ungray": {},
    "set": {"key": Field(str, ""), "value": Field(float, 0.0, nonneg)},
}
# Parameters that a `set` fault may change while the simulation runs.
SETTABLE_AT_RUNTIME = ("loss", "duplicate", "corrupt", "bandwidth_bps", "transfer_bandwidth_bps")


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario: every table filled with its defaults. ``source`` names the file for errors."""

    source: str
    top: dict[str, Any]
    network: dict[str, Any]
    disk: dict[str, Any]
    transfers: dict[str, Any]
    churn: dict[str, Any]
    checks: dict[str, Any]
    config: dict[str, dict[str, Any]]
    # Kit name -> its checked table ([name] with [name.checks] under "checks"), for every kit in
    # `components` and every other installed kit whose table the file gives.
    kits: dict[str, dict[str, Any]]
    faults: tuple[dict[str, Any], ...]
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.top["name"])

    def kit(self, name: str) -> dict[str, Any]:
        """Kit ``name``'s checked table."""
        return self.kits[name]


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
    installed = set(kits.names())
    own = set(SCHEMA) | {CONFIG, FAULTS}
    kit_tables = {key for key in data if key not in SCHEMA[""] and key not in own and key in installed}
    tables: dict[str, dict[str, Any]] = {}
    for table, fields in SCHEMA.items():
        given = data if table == "" else data.get(table, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: {table}: must be a table")
        skip = frozenset(own | kit_tables) if table == "" else frozenset()
        tables[table] = fill(given, fields, table, source, skip=skip)
    config = data.get(CONFIG, {})
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise ConfigError(f"{source}: {CONFIG}: must hold one table per component ([config.<component>])")
    faults = data.get(FAULTS, [])
    if not isinstance(faults, list):
        raise ConfigError(f"{source}: faults: must be an array of tables ([[faults]])")
    checked_faults = tuple(_check_fault(f, i, source) for i, f in enumerate(faults))
    checked_kits = _check_kits(tables[""]["components"], data, kit_tables, source)
    _check_cross(tables, source)
    return Scenario(
        source,
        tables[""],
        tables["network"],
        tables["disk"],
        tables["transfers"],
        tables["churn"],
        tables["checks"],
        copy.deepcopy(config),
        checked_kits,
        checked_faults,
        tuple(overrides),
    )


def _check_kits(
    components: list[Any], data: Mapping[str, Any], kit_tables: set[str], source: str
) -> dict[str, dict[str, Any]]:
    if not all(isinstance(name, str) for name in components):
        raise ConfigError(f"{source}: components: must be a list of kit names")
    if len(set(components)) != len(components):
        raise ConfigError(f"{source}: components: a kit is named twice")
    checked: dict[str, dict[str, Any]] = {}
    for name in [*components, *sorted(kit_tables - set(components))]:
        kit = kits.get(name, source)
        given = data.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: {name}: must be a table")
        checked[name] = kit.table(given, source)
    return checked


def _check_fault(fault: Any, index: int, source: str) -> dict[str, Any]:
    where = f"faults[{index}]"
    if not isinstance(fault, dict):
        raise ConfigError(f"{source}: {where}: must be a table")
    action = fault.get("action")
    if action not in FAULT_ACTIONS:
        raise ConfigError(
            f"{source}: {where}.action: unknown fault action {action!r} (one of {', '.join(FAULT_ACTIONS)})"
        )
    fields = {"at_s": Field(float, 0.0, nonneg), "action": Field(str, action), **FAULT_ACTIONS[action]}
    out = fill(fault, fields, where, source)
    if action == "set" and out["key"] not in SETTABLE_AT_RUNTIME:
        raise ConfigError(
            f"{source}: {where}.key: cannot change {out['key']!r} at runtime "
            f"(one of {', '.join(SETTABLE_AT_RUNTIME)})"
        )
    return out


def _check_cross(tables: dict[str, dict[str, Any]], source: str) -> None:
    """Constraints that span keys: the start mode, the region matrix, the distributions."""
    top, network = tables[""], tables["network"]
    if top["start"] == "formed" and top["join_spread_s"]:
        raise ConfigError(
            f'{source}: join_spread_s: a mesh with start = "formed" starts all at once; set it to 0'
        )
    latency.build(network["latency"], f"{source}: network.latency")
    latency.build(tables["disk"]["sync_latency"], f"{source}: disk.sync_latency")
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
    if key == FAULTS:
        # The fault schedule is an array of tables; it is replaced whole: --set 'faults=[]'.
        data[FAULTS] = _parse_value(text, Field(list, []), key, source)
        return
    head, _, rest = key.partition(".")
    field: Field | None
    if head == FAULTS:
        _apply_fault_override(data, key, rest, text, source)
        return
    if not rest:
        field = SCHEMA[""].get(key)
        if field is None:
            raise ConfigError(f"{source}: --set {key}: unknown key")
        data[key] = _parse_value(text, field, key, source)
        return
    if head in SCHEMA and head:
        field = SCHEMA[head].get(rest)
        if field is None:
            raise ConfigError(f"{source}: --set {key}: unknown key")
        path = [head, rest]
    elif head == CONFIG:
        field, path = None, key.split(".")  # config.<component>.<key>: free-form
        if len(path) != 3:
            raise ConfigError(f"{source}: --set {key}: expected config.<component>.<key>")
    elif head in kits.names():
        field = kits.get(head, source).field(rest)
        path = key.split(".")
    else:
        raise ConfigError(f"{source}: --set {key}: unknown key (no table or kit {head!r})")
    value = _parse_value(text, field, key, source)
    target = data
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: --set {key}: {part} is not a table")
    target[path[-1]] = value


def _apply_fault_override(data: dict[str, Any], key: str, rest: str, text: str, source: str) -> None:
    """``faults.<index>.<key>=value``: one setting of one ``[[faults]]`` table (counted from 0, in file
    order), typed by that fault's action, so a sweep can vary it: ``--grid faults.0.split=0.5,0.7``."""
    index_text, _, name = rest.partition(".")
    if not name or "." in name:
        raise ConfigError(f"{source}: --set {key}: expected faults.<index>.<key>, e.g. faults.0.at_s")
    faults = data.get(FAULTS, [])
    if not isinstance(faults, list):
        raise ConfigError(f"{source}: faults: must be an array of tables ([[faults]])")
    count = f"the scenario has {len(faults)} fault{'s' * (len(faults) != 1)}" + (
        f": 0..{len(faults) - 1}" if faults else ""
    )
    if not index_text.isdigit():
        raise ConfigError(f"{source}: --set {key}: the fault index must be a number ({count})")
    index = int(index_text)
    if index >= len(faults):
        raise ConfigError(f"{source}: --set {key}: no fault {index} ({count})")
    fault = faults[index]
    if not isinstance(fault, dict):
        raise ConfigError(f"{source}: faults[{index}]: must be a table")
    action = name if name == "action" else fault.get("action")
    if name == "action":
        field: Field | None = Field(str, "")
    else:
        fields = {"at_s": Field(float, 0.0, nonneg), **FAULT_ACTIONS.get(str(action), {})}
        field = fields.get(name)
        if field is None:
            raise ConfigError(
                f"{source}: --set {key}: unknown key for a {action!r} fault (one of {', '.join(fields)})"
            )
    fault[name] = _parse_value(text, field, key, source)


def _parse_value(text: str, field: Field | None, key: str, source: str) -> Any:
    if field is None or field.kind in (list, dict):
        # Free-form values and tables take TOML syntax: --set components='["ping"]'.
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
        value = field.kind(text)
    except ValueError:
        raise ConfigError(f"{source}: --set {key}: expected {field.kind.__name__}, got {text!r}") from None
    return typed(value, field, key, source)
