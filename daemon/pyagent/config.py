"""The daemon's TOML configuration: where it lives, its schema, and validation with one-line errors.

Every value has a default, so an empty file (or none at all) is a working configuration. Unknown keys are
errors rather than warnings: a misspelt key silently ignored is how a private mesh ends up public.

Besides the core's own sections, a table may be named after a component or a plugin (``[hello]``). The
core does not know their schemas: it keeps them raw in ``Config.components``, and each component reads
its own through ``NodeContext.config(name)`` and checks it. Which names exist is known only once the
plugins are loaded, so ``check_component_tables`` refuses a table no component or plugin claims then.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from pyagent.errors import ConfigError

HOME_ENV = "PYAGENT_HOME"
CONFIG_FILE = "config.toml"
IDENTITY_FILE = "identity.key"
CONTROL_SOCKET = "control.sock"

DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4001"
# Where `pyagent daemon --metrics` serves /metrics: loopback, the port Prometheus lists for OpenTelemetry
# exporters (no other pyagent port uses it).
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"

# A component's config table is named after it (as are its timers and storage namespace), so component
# names are plain bare TOML keys. Plugin names follow the same pattern (``pluginhost.PLUGIN_NAME_PATTERN``).
COMPONENT_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")


def resolve_home(flag: str | None) -> Path:
    """``--home`` beats ``$PYAGENT_HOME`` beats the per-user data directory."""
    if flag:
        return Path(flag).expanduser().resolve()
    if env := os.environ.get(HOME_ENV):
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir("pyagent"))


@dataclass(slots=True)
class NodeSection:
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    # What this node advertises instead of its listen addresses (kubo's Addresses.Announce): the
    # address others reach it at behind a NAT or a port forward. Empty: the listen addresses, with
    # 0.0.0.0 and :: expanded into the interfaces' addresses.
    announce: list[str] = field(default_factory=list)
    # Never advertised: exact addresses, or ranges such as /ip4/10.0.0.0/ipcidr/8.
    no_announce: list[str] = field(default_factory=list)
    bootstrap: list[str] = field(default_factory=list)
    # A bootstrap list file (see bootstrap/example.txt); relative paths are relative to the home.
    bootstrap_file: str = ""
    # Gossiped in this node's membership metadata. Empty hardware_tags means detect them at start.
    hardware_tags: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)


@dataclass(slots=True)
class MeshSection:
    # Path to a libp2p swarm.key; empty means a public mesh. Relative paths are relative to the home.
    swarm_key_file: str = ""
    # Peer ids allowed to connect; empty means anyone (who holds the key, in a private mesh).
    allow_list: list[str] = field(default_factory=list)


@dataclass(slots=True)
class MembershipSection:
    """``preset`` picks the LAN timings (memberlist's, tuned for faster detection; docs/membership.md) or
    memberlist's WAN ones; any ``membership.Config`` field overrides the preset."""

    preset: str = "lan"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class HostSection:
    dial_timeout_ms: int = 5_000
    upgrade_timeout_ms: int = 5_000
    open_stream_timeout_ms: int = 5_000
    connections_max: int = 256
    # Membership's small frames as sealed UDP datagrams on the listen port (so open it for udp as well as
    # tcp); off, or where udp does not get through, they take the tcp streams (docs/meshes.md).
    datagrams: bool = True
    # Flood limits (docs/running-a-peer.md); the defaults are pyagent.node.host_config.FloodLimits'.
    pending_handshakes_max: int = 64
    pending_handshakes_per_ip_max: int = 8
    connections_per_ip_max: int = 32
    connections_per_ip_per_s: int = 2
    connections_per_ip_burst: int = 32
    stream_opens_per_peer_per_s: int = 32
    stream_opens_per_peer_burst: int = 64


@dataclass(slots=True)
class LogSection:
    level: str = "info"
    # "text" for people, "json" for log shippers.
    format: str = "text"


@dataclass(slots=True)
class MetricsSection:
    # HOST:PORT serving Prometheus metrics at /metrics; empty: off. `pyagent daemon --metrics` turns it on.
    listen: str = ""


@dataclass(slots=True)
class PluginsSection:
    # Never imported. PYAGENT_PLUGINS_DISABLED=a,b and `pyagent --no-plugins` add to it.
    disabled: list[str] = field(default_factory=list)
    # The daemon refuses to start unless each of these loads; any other plugin that fails to load is
    # skipped with a warning (and shown as failed by `pyagent plugins`).
    required: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    host: HostSection = field(default_factory=HostSection)
    membership: MembershipSection = field(default_factory=MembershipSection)
    log: LogSection = field(default_factory=LogSection)
    plugins: PluginsSection = field(default_factory=PluginsSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    # Every other top-level table, by name, as TOML parsed it: a component's or a plugin's own settings,
    # handed to it by ``NodeContext.config(name)`` (``composition.build_core(config=...)``).
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where this config came from, for error messages about it.
    source: str = CONFIG_FILE


# The core's own sections, each a typed dataclass field of ``Config``.
CORE_SECTIONS = ("node", "mesh", "host", "membership", "log", "plugins", "metrics")


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def load(home: Path) -> Config:
    path = home / CONFIG_FILE
    if not path.exists():
        return Config(source=str(path))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid TOML ({exc}); fix the syntax or re-create it with `pyagent init`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return parse(raw, source=str(path))


def parse(raw: dict[str, Any], source: str) -> Config:
    config = Config(source=source)
    sections = {name: getattr(config, name) for name in CORE_SECTIONS}
    for name, value in raw.items():
        if name not in sections:
            if not COMPONENT_NAME_PATTERN.fullmatch(name):
                raise ConfigError(
                    f"{source}: unknown section [{name}]; valid sections: {', '.join(sections)}, "
                    f"and one per component or plugin, named like it ({COMPONENT_NAME_PATTERN.pattern})"
                )
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: top-level key '{name}' must be a table; put settings under a section "
                    f"such as [node], or [{name}] for the component or plugin {name!r}"
                )
            config.components[name] = value
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        if name == "membership":
            _fill_membership(config.membership, value, f"{source}: [membership]")
        else:
            _fill_section(sections[name], value, f"{source}: [{name}]")
    _validate(config, source)
    return config


def check_component_tables(config: Config, names: Collection[str]) -> None:
    """Refuse a component table (``Config.components``) that no name in ``names`` claims: a typo such as
    ``[nod]`` or ``[helo]``, which would otherwise be silently ignored.

    ``names``: every component of the node and every installed plugin (disabled ones too, so that
    switching a plugin off does not make its table an error).
    """
    known = set(names)
    unknown = sorted(config.components.keys() - known)
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, [*CORE_SECTIONS, *sorted(known)], n=1)
        hint = f"did you mean [{close[0]}]? " if close else ""
        raise ConfigError(
            f"{config.source}: unknown section [{name}]; {hint}valid sections: {', '.join(CORE_SECTIONS)}, "
            f"and one per component or plugin: {', '.join(sorted(known)) or 'none'}"
        )


def _fill_section(section: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(section)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where} unknown key '{key}'; valid keys: {', '.join(known)}")
        default = getattr(section, key)
        if isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{where} '{key}' must be a list of strings")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where} '{key}' must be true or false, got {value!r}")
        elif not isinstance(value, type(default)) or isinstance(value, bool):
            raise ConfigError(f"{where} '{key}' must be a {type(default).__name__}, got {value!r}")
        setattr(section, key, value)


def _fill_membership(section: MembershipSection, values: dict[str, Any], where: str) -> None:
    from pyagent.proto import membership

    defaults = {f.name: getattr(membership.LAN, f.name) for f in fields(membership.LAN)}
    for key, value in values.items():
        if key == "preset":
            if value not in MEMBERSHIP_PRESETS:
                raise ConfigError(f"{where} 'preset' must be one of {', '.join(MEMBERSHIP_PRESETS)}")
            section.preset = value
        elif key not in defaults:
            raise ConfigError(f"{where} unknown key '{key}'; valid keys: preset, {', '.join(defaults)}")
        elif type(value) is not type(defaults[key]):
            raise ConfigError(f"{where} '{key}' must be a {type(defaults[key]).__name__}, got {value!r}")
        else:
            section.overrides[key] = value
    try:
        membership_config(section)
    except ValueError as exc:
        raise ConfigError(f"{where} {exc}") from None


MEMBERSHIP_PRESETS = ("lan", "wan")


def membership_config(section: MembershipSection) -> Any:
    """The ``membership.Config`` this section describes (raises ``ValueError`` if inconsistent)."""
    from dataclasses import replace

    from pyagent.proto import membership

    base = membership.LAN if section.preset == "lan" else membership.WAN
    return replace(base, **section.overrides)


def flood_limits(section: HostSection, limits_type: Any) -> Any:
    """The host's ``FloodLimits`` from ``[host]`` (raises ``ValueError`` naming an inconsistent setting)."""
    return limits_type(**{f.name: getattr(section, f.name) for f in fields(limits_type)})


def _validate(config: Config, source: str) -> None:
    for f in fields(config.host):
        value = getattr(config.host, f.name)
        if not isinstance(value, bool) and value <= 0:
            raise ConfigError(f"{source}: [host] '{f.name}' must be positive")
    from pyagent.node.host_config import FloodLimits

    try:
        flood_limits(config.host, FloodLimits)
    except ValueError as exc:
        raise ConfigError(f"{source}: [host] {exc}") from None
    if config.log.level not in LOG_LEVELS:
        raise ConfigError(f"{source}: [log] 'level' must be one of {', '.join(LOG_LEVELS)}")
    if config.log.format not in LOG_FORMATS:
        raise ConfigError(f"{source}: [log] 'format' must be one of {', '.join(LOG_FORMATS)}")
    if not config.node.listen:
        raise ConfigError(f"{source}: [node] 'listen' needs at least one multiaddr")
    from pyagent import bootstraplist

    for addr in config.node.listen:
        check_listen_addr(addr, f"{source}: [node] listen")
    for addr in config.node.announce:
        check_announce_addr(addr, f"{source}: [node] announce")
    check_no_announce(config.node.no_announce, f"{source}: [node] no_announce")

    for addr in config.node.bootstrap:
        bootstraplist.check_multiaddr(addr, f"{source}: [node] bootstrap")
    for peer in config.mesh.allow_list:
        bootstraplist.check_peer_id(peer, f"{source}: [mesh] allow_list")
    if config.metrics.listen:
        parse_metrics_listen(config.metrics.listen, f"{source}: [metrics] listen")


_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})")


def parse_metrics_listen(value: str, where: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as (host, port); a one-line ``ConfigError`` naming ``where``
    otherwise."""
    match = _HOST_PORT.fullmatch(value)
    if match is None or int(match["port"]) > 65535 or not _valid_host(match["ipv6"] or match["host"]):
        raise ConfigError(
            f"{where}: {value!r} is not HOST:PORT; write it like {DEFAULT_METRICS_LISTEN} "
            "(or [::1]:9464; port 0 picks a free one)"
        )
    return match["ipv6"] or match["host"], int(match["port"])


def _valid_host(host: str) -> bool:
    """An IP address, or a host name; something made of digits and dots must be an IPv4 address."""
    if ":" in host or re.fullmatch(r"[0-9.]+", host):
        import ipaddress

        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
    return True


def check_listen_addr(addr: str, where: str) -> None:
    """A ``ConfigError`` naming ``where`` unless ``addr`` is a multiaddr the host can listen on."""
    import multiaddr

    try:
        parsed = multiaddr.Multiaddr(addr)
    except Exception as exc:
        raise ConfigError(
            f"{where}: '{addr}' is not a multiaddr ({exc}); write it like {DEFAULT_LISTEN}"
        ) from None
    if "/p2p/" in addr or "tcp" not in [p.name for p in parsed.protocols()]:
        raise ConfigError(f"{where}: '{addr}' is not a TCP listen address; write it like {DEFAULT_LISTEN}")


def check_announce_addr(addr: str, where: str) -> None:
    """A ``ConfigError`` naming ``where`` unless others could dial ``addr``."""
    from pyagent.proto import addresses

    parsed = addresses.parse_ip_tcp(addr)
    if parsed is None or "/p2p/" in addr:
        raise ConfigError(
            f"{where}: '{addr}' is not an address to dial; write it like /ip4/203.0.113.7/tcp/4001"
        )
    if parsed.ip.is_unspecified or parsed.port == 0:
        raise ConfigError(
            f"{where}: '{addr}' cannot be dialed (unspecified IP or port 0); announce the IP and port "
            "others reach this node at, like /ip4/203.0.113.7/tcp/4001"
        )


def check_no_announce(entries: list[str], where: str) -> None:
    from pyagent.proto import addresses

    try:
        addresses.NoAnnounce.parse(entries)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def render(listen: list[str], swarm_key_file: str = "", announce: list[str] | None = None) -> str:
    """The commented config that ``pyagent init`` writes."""
    listen_toml = ", ".join(f'"{addr}"' for addr in listen)
    announce_toml = ", ".join(f'"{addr}"' for addr in announce or [])
    return f"""# PyAgent daemon configuration. Every key is optional; these are the defaults unless noted.

[node]
# Multiaddrs to listen on. Port 0 picks a free port at each start. A daemon never shares a port:
# one that is taken stops the start with "address already in use".
listen = [{listen_toml}]
# What this node tells others to dial. Empty: the listen addresses, with 0.0.0.0 and :: expanded into
# this machine's interface addresses, plus an address that two or more peers observe for it (a NAT's
# public side). Set it behind a port forward, e.g. ["/ip4/203.0.113.7/tcp/4001"] (docs/meshes.md).
announce = [{announce_toml}]
# Never advertised: exact addresses, or ranges such as "/ip4/172.17.0.0/ipcidr/16" (a container bridge).
no_announce = []
# Peers to join the mesh through at start, as multiaddrs ending in /p2p/<peer id>,
# and/or a bootstrap list file (one multiaddr per line; see bootstrap/example.txt).
bootstrap = []
bootstrap_file = ""
# Gossiped to the mesh. Empty hardware_tags: detected at start (e.g. "cpu-only").
hardware_tags = []
features = []

[mesh]
# A libp2p swarm.key (`pyagent mesh new-private`) makes this a private mesh. Empty: public mesh.
swarm_key_file = "{swarm_key_file}"
# Only these peer ids may connect (empty: anyone, or anyone holding the key of a private mesh).
allow_list = []

[membership]
# "lan" detects a crash in 3-5 s on a small mesh, under 10 s at 1,000 members; "wan" (memberlist's)
# is for high-latency links.
# Any timing can be overridden here, e.g. probe_interval_ms = 500 (see docs/membership.md).
preset = "lan"

[host]
dial_timeout_ms = 5000
upgrade_timeout_ms = 5000
open_stream_timeout_ms = 5000
connections_max = 256
# Membership's small frames travel as sealed UDP datagrams on the listen port, so open it for udp as
# well as tcp. false, or a path where udp does not get through, keeps them on tcp (docs/meshes.md).
datagrams = true
# Flood limits: what one source IP or one peer may cost (docs/running-a-peer.md). A connection over a
# limit is closed before its handshake; a stream over the rate is reset. Each refusal is counted.
pending_handshakes_max = 64         # inbound connections still in their handshakes, in all
pending_handshakes_per_ip_max = 8   # ... from one IP
connections_per_ip_max = 32         # inbound connections from one IP, pending or established
connections_per_ip_per_s = 2        # new inbound connections one IP may open a second ...
connections_per_ip_burst = 32       # ... after a burst of this many
stream_opens_per_peer_per_s = 32    # streams one peer may open to us a second ...
stream_opens_per_peer_burst = 64    # ... after a burst of this many; as many more are reset,
                                    # then its connection is closed

[log]
level = "info"     # debug, info, warning, error
format = "text"    # text or json

[metrics]
# Prometheus metrics at http://HOST:PORT/metrics (docs/running-a-peer.md); empty: off.
# `pyagent daemon --metrics` serves them at {DEFAULT_METRICS_LISTEN} for one run.
# listen = "{DEFAULT_METRICS_LISTEN}"
listen = ""

[plugins]
disabled = []      # plugin names, as `pyagent plugins` lists them, never to load
required = []      # plugins the daemon must not start without (others that fail to load are skipped)

# A component or plugin reads its own table, named after it; see its documentation. For example:
# [hello]
# hellos_max = 1024
"""
