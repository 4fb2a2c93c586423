"""Settings of the libp2p host wrapper. Units are in the names; every table and queue has a ``*_max``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def is_allowed(config: HostConfig, peer: str) -> bool:
    return config.allow_list is None or peer in config.allow_list


DEFAULT_LISTEN_ADDRS = ("/ip4/127.0.0.1/tcp/0",)


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """The settings, as ``[host]`` names them (docs/running-a-peer.md)."""

    pending_handshakes_max: int = 64
    pending_handshakes_per_ip_max: int = 8
    connections_per_ip_max: int = 32
    connections_per_ip_per_s: int = 2
    connections_per_ip_burst: int = 32
    stream_opens_per_peer_per_s: int = 32
    stream_opens_per_peer_burst: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            name = f.name
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.pending_handshakes_per_ip_max > self.pending_handshakes_max:
            raise ValueError(
                f"pending_handshakes_per_ip_max ({self.pending_handshakes_per_ip_max}) must not exceed "
                f"pending_handshakes_max ({self.pending_handshakes_max})"
            )
        if self.pending_handshakes_per_ip_max > self.connections_per_ip_max:
            raise ValueError(
                f"pending_handshakes_per_ip_max ({self.pending_handshakes_per_ip_max}) must not exceed "
                f"connections_per_ip_max ({self.connections_per_ip_max})"
            )


@dataclass
class HostConfig:
    listen_addrs: list[str] = field(default_factory=lambda: list(DEFAULT_LISTEN_ADDRS))
    # What to advertise instead of the listen addresses, and what never to advertise (config.NodeSection).
    announce: list[str] = field(default_factory=list)
    no_announce: list[str] = field(default_factory=list)
    dial_timeout_ms: int = 5_000
    # The whole connection upgrade (pnet + noise + yamux), inbound and outbound.
    upgrade_timeout_ms: int = 5_000
    open_stream_timeout_ms: int = 5_000
    connections_max: int = 256
    # Per (peer, protocol) outbound queue of `Host.send`.
    send_queue_frames_max: int = 1024
    # Private network pre-shared key (32 bytes); None for the public network.
    psk: bytes | None = None
    # Peer ids allowed to connect (either direction); None allows everyone.
    allow_list: frozenset[str] | None = None
    # How long PeerConnected waits for identify before it reports what is already known.
    identify_timeout_ms: int = 5_000
    # Server side of `register_request_handler`: read request + handle + write response.
    request_handler_timeout_ms: int = 5_000
    # Bytes asked of a stream per read; bounds each read's buffer, not the frame size.
    read_chunk_size_bytes: int = 64 * 1024
    # What one source address or peer may cost us (node/limits.py).
    flood_limits: FloodLimits = field(default_factory=lambda: FloodLimits())
    # Membership's small frames as sealed UDP datagrams beside each connection (node/datagrams.py).
    datagrams: bool = True

    def __post_init__(self) -> None:
        for name in (
            "dial_timeout_ms",
            "upgrade_timeout_ms",
            "open_stream_timeout_ms",
            "connections_max",
            "send_queue_frames_max",
            "identify_timeout_ms",
            "request_handler_timeout_ms",
            "read_chunk_size_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"HostConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.listen_addrs:
            raise ValueError("HostConfig.listen_addrs must not be empty")
        if self.allow_list is not None and not self.allow_list:
            raise ValueError("HostConfig.allow_list must name at least one peer (None allows everyone)")
        if self.psk is not None and len(self.psk) != 32:
            raise ValueError(f"HostConfig.psk must be 32 bytes, got {len(self.psk)}")
