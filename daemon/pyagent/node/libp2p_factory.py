"""Build a py-libp2p 0.8.1 host with safe settings: what `new_host()` defaults get wrong for us.

- Security: Noise only. The defaults also offer TLS, secio and plaintext, and a plaintext peer can
  claim any peer id.
- Muxer: yamux only. Transport: TCP only (py-libp2p's QUIC moves 2.7 MB/s), in the pnet wrapper or
  the plaintext one that tells a private peer apart (``pnet``).
- ``max_connections_per_peer=1``: the default 3 makes each dial wait a 250 ms happy-eyeballs timer.
- No dial retries and no auto-connector: membership decides whom to dial and when.
- Upgrade and negotiation deadlines from our config (the defaults are 10 s, and the outbound
  security handshake has none at all; `Host.connect` adds its own deadline around the dial).
- Every stream handler runs inside a guard: an exception escaping one tears down the whole host.
- Yamux gives a stream's credit back in batches of ``CREDIT_BATCH_BYTES`` read, not after every read.
  py-libp2p 0.8.1 answers most small frames with a WINDOW_UPDATE frame of its own (its
  ``PY_YAMUX_RELEASE_ON_READ=0`` still credits any slack below the window's target): a second encrypted
  TCP segment and a second trip through yamux and Noise per message, 62 % of the reads and about 45 % of
  all socket sends on 3 daemons under KV load. The batch is small against the 256 KiB window on
  purpose: py-libp2p's writer polls every 10 ms once its window is spent, so go-yamux's rule (credit at
  half a window) left bulk transfers waiting on that poll (105 -> 12 MB/s, ADR 0017).
- Yamux measures RTT once when a connection starts, then every 10 minutes rather than every 30 s. The
  RTT only tunes stream windows, and membership measures RTT itself; py-libp2p's 30 s ping-pong costs four
  TCP segments per connection side, about 36 B/s per idle member of five (bench/membership_wire.py).
- Flood limits (``limits.FloodGuards``): inbound connections are admitted per source IP before any byte
  is read, and each peer's stream opens are rate-limited before protocol negotiation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from libp2p import new_host
from libp2p.abc import INetStream, IRawConnection, ISecureConn, ITransport
from libp2p.crypto.keys import KeyPair, PrivateKey
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from multiaddr import Multiaddr

from pyagent.node.host_config import HostConfig, is_allowed
from pyagent.node.limits import FloodGuards
from pyagent.node.pnet import PlainTCP, PnetTCP

logger = logging.getLogger(__name__)

StreamHandler = Callable[[INetStream], Awaitable[None]]


class _IdleAutoConnector(AutoConnector):
    """Never started, so its periodic task and its on-disconnect trigger both stay no-ops."""

    async def start(self) -> None:
        return None


def build_libp2p_host(
    key_pair: KeyPair,
    config: HostConfig,
    on_handler_error: Callable[[], None],
    on_stream_refused: Callable[[], None],
    on_key_mismatch: Callable[[], None],
    on_peer_refused: Callable[[str], None],
    guards: FloodGuards,
    addrs_factory: Callable[[list[Multiaddr]], list[Multiaddr]],
) -> BasicHost:
    """``addrs_factory`` makes what identify tells peers from the bound addresses; py-libp2p's own
    observed-address discovery is off, as the host confirms observations itself."""
    _credit_windows_in_batches()
    _slow_yamux_rtt_pings()
    upgrade_timeout_s = config.upgrade_timeout_ms / 1000
    open_stream_timeout_s = config.open_stream_timeout_ms / 1000
    connection_config = ConnectionConfig(
        max_connections=config.connections_max,
        min_connections=0,
        low_watermark=0,
        high_watermark=config.connections_max,
        max_connections_per_peer=1,
        dial_timeout=config.dial_timeout_ms / 1000,
        inbound_upgrade_timeout=upgrade_timeout_s,
        outbound_upgrade_timeout=upgrade_timeout_s,
        inbound_stream_protocol_negotiation_timeout=open_stream_timeout_s,
        outbound_stream_protocol_negotiation_timeout=open_stream_timeout_s,
    )
    noise = _AllowListedNoise(
        key_pair, create_x25519_key_pair().private_key, config=config, on_refused=on_peer_refused
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        transports=[guards.transport(_transport(config.psk, config.upgrade_timeout_ms, on_key_mismatch))],
        connection_config=connection_config,
        negotiate_timeout=max(1, round(open_stream_timeout_s)),
        addrs_factory=addrs_factory,
        disable_identify_address_discovery=True,
    )
    assert isinstance(host, BasicHost), type(host)
    swarm = host.get_network()
    assert isinstance(swarm, Swarm), type(swarm)
    swarm.retry_config = RetryConfig(max_retries=0)
    swarm.auto_connector = _IdleAutoConnector(swarm, connection_config.auto_connect_interval)
    handler = _admitted_only(swarm.common_stream_handler, config, on_stream_refused)
    swarm.set_stream_handler(_guarded(guards.stream_handler(handler), on_handler_error))
    return host


# A sixteenth of yamux's 256 KiB window: a sender never runs dry while its reader keeps up.
CREDIT_BATCH_BYTES = 16 * 1024


async def _credit_read_bytes_in_batches(stream: YamuxStream, *, bytes_read: int = 0) -> None:
    """Replaces ``YamuxStream._auto_tune_and_send_window_update``, which py-libp2p calls after each read:
    give the peer its credit back once ``CREDIT_BATCH_BYTES`` have been read, in one update."""
    if bytes_read <= 0:
        return
    async with stream.window_lock:
        stream._pending_recv_release += bytes_read
        credit = stream._pending_recv_release
        if credit < CREDIT_BATCH_BYTES:
            return
        stream.recv_window += credit
        stream._pending_recv_release = 0
        # py-libp2p's own auto-tuning: a stream whose credit comes back fast gets its window doubled, up
        # to 16 MiB, so a bulk transfer is not held to 256 KiB in flight.
        buffered = len(stream.conn.stream_buffers.get(stream.stream_id, b""))
        credit += stream._apply_autotune_epoch(buffered)
    # Outside the lock, as py-libp2p's own caller does: an inbound WINDOW_UPDATE needs that lock too.
    await stream.send_window_update(credit, skip_lock=True)


def _credit_windows_in_batches() -> None:
    for name in ("_auto_tune_and_send_window_update", "_apply_autotune_epoch"):
        assert hasattr(YamuxStream, name), f"py-libp2p renamed YamuxStream.{name}"
    YamuxStream._auto_tune_and_send_window_update = _credit_read_bytes_in_batches  # type: ignore[method-assign,assignment]


# Read by py-libp2p's RTT loop at each turn, so setting it before any connection applies to all of them.
YAMUX_RTT_INTERVAL_S = 600


def _slow_yamux_rtt_pings() -> None:
    assert hasattr(yamux_module, "RTT_MEASURE_INTERVAL"), "py-libp2p renamed its yamux RTT interval"
    yamux_module.RTT_MEASURE_INTERVAL = YAMUX_RTT_INTERVAL_S


def _transport(psk: bytes | None, upgrade_timeout_ms: int, on_key_mismatch: Callable[[], None]) -> ITransport:
    """TCP, in the private network of ``psk`` if there is one. Even without one, the first bytes are
    checked: a private peer is then refused as a key mismatch, not as a parse error."""
    if psk is None:
        return PlainTCP(on_inbound_mismatch=on_key_mismatch)
    return PnetTCP(psk, nonce_timeout_ms=upgrade_timeout_ms, on_inbound_mismatch=on_key_mismatch)


class _AllowListedNoise(NoiseTransport):
    """Noise that refuses an inbound peer the allow-list does not name as soon as the handshake proves
    who it is. The dialer's upgrade then fails (it reports ``refused``), where a connection closed only
    after it was established looked like a peer that is not a PyAgent peer (issue 15)."""

    def __init__(
        self,
        key_pair: KeyPair,
        noise_privkey: PrivateKey,
        *,
        config: HostConfig,
        on_refused: Callable[[str], None],
    ) -> None:
        super().__init__(key_pair, noise_privkey=noise_privkey)
        self._config = config
        self._on_refused = on_refused

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        secured = await super().secure_inbound(conn)
        peer = str(secured.get_remote_peer())
        if not is_allowed(self._config, peer):
            self._on_refused(peer)
            await secured.close()
            raise HandshakeFailure(f"{peer} is not on this node's allow-list")
        return secured


def _admitted_only(
    handler: StreamHandler, config: HostConfig, on_refused: Callable[[], None]
) -> StreamHandler:
    """Resets every inbound stream of a peer that the allow-list does not name. The connection itself is
    closed as soon as it is reported, but a stream can race that; this makes sure none gets through."""
    if config.allow_list is None:
        return handler

    async def admitted_only(stream: INetStream) -> None:
        if not is_allowed(config, str(stream.muxed_conn.peer_id)):
            on_refused()
            await stream.reset()
            return
        await handler(stream)

    return admitted_only


def _guarded(handler: StreamHandler, on_handler_error: Callable[[], None]) -> StreamHandler:
    """Wraps the swarm's one entry point for inbound streams (negotiation + every protocol handler,
    py-libp2p's own identify and ping included), so that an error costs only that stream."""

    async def guarded(stream: INetStream) -> None:
        try:
            await handler(stream)
        except Exception as exc:
            on_handler_error()
            peer = stream.muxed_conn.peer_id
            logger.warning("stream handler for %s from %s failed: %r", stream.get_protocol(), peer, exc)
            await stream.reset()

    return guarded
