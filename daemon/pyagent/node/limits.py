"""Flood limits: what one source address may cost the daemon before anyone else is served.

A flood from one hostile address used to slow every good peer down (issue 16: ping p99 28x during a
Noise handshake flood). Three guards, each counted when it refuses (host counters, and so ``/metrics``):

- **Inbound admission** (``InboundAdmission``), in front of py-libp2p's listener: a TCP connection is
  refused, closed before a single byte is read and so before any crypto, when its source IP already has
  ``pending_handshakes_per_ip_max`` upgrades under way, or ``connections_per_ip_max`` connections
  (pending and established), or when ``pending_handshakes_max`` upgrades are under way in all, or when
  the IP opened more than ``connections_per_ip_per_s`` (burst ``connections_per_ip_burst``) lately. The
  counts are rust-libp2p's ``connection-limits`` (pending incoming, established per peer), keyed by IP
  because that is what a flood has before its handshake; the rate is go-libp2p's per-IP connection rate
  limit, since the costly part of an inbound connection, the Noise handshake, is per connection, and a
  flood that opens and drops connections one after another never has many pending at once.
- **Stream opens** (``StreamRateLimiter``): a token bucket per peer; a stream over the rate is reset
  before protocol negotiation.
- It also ends py-libp2p 0.8.1's inbound connection task when its connection closes. That task otherwise
  waits for the whole swarm to stop, holding one of the swarm's ``connections_max`` inbound slots: after
  ``connections_max`` inbound connections in the daemon's life, every new one was refused.

Everything here is synchronous bookkeeping plus a thin async guard; the clock is passed in, so the
tables are tested without sockets (tests/unit/test_limits.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import IListener, INetConn, INetStream, IRawConnection, ITransport
from libp2p.custom_types import THandler
from libp2p.io.abc import ReadWriteCloser
from multiaddr import Multiaddr

from pyagent.node.host_config import FloodLimits

logger = logging.getLogger(__name__)

# The host's counter for each kind of refusal, named after the setting that refused.
REFUSED_PENDING_TOTAL = "inbound_refused_pending_handshakes_max"
REFUSED_PENDING_PER_IP = "inbound_refused_pending_handshakes_per_ip_max"
REFUSED_CONNECTIONS_PER_IP = "inbound_refused_connections_per_ip_max"
REFUSED_RATE_PER_IP = "inbound_refused_connections_per_ip_per_s"
STREAMS_RATE_LIMITED = "streams_reset_rate_limited"
COUNTER_NAMES = (
    REFUSED_PENDING_TOTAL,
    REFUSED_PENDING_PER_IP,
    REFUSED_CONNECTIONS_PER_IP,
    REFUSED_RATE_PER_IP,
    STREAMS_RATE_LIMITED,
)

# Per-IP and per-peer tables are bounded (DESIGN: a limit on everything). An IP with nothing pending or
# established holds only a rate bucket, and the oldest of those goes first: a full bucket is the state a
# forgotten IP would start from anyway, so forgetting one only forgives a recent burst.
TRACKED_IPS_MAX = 4096
TRACKED_PEERS_MAX = 4096

Address = tuple[str, int]


class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; starts full."""

    __slots__ = ("_burst", "_rate_per_s", "_tokens", "_updated_s")

    def __init__(self, rate_per_s: int, burst: int, now_s: float) -> None:
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._tokens = float(burst)
        self._updated_s = now_s

    def take(self, now_s: float) -> bool:
        elapsed_s = max(0.0, now_s - self._updated_s)
        self._updated_s = now_s
        self._tokens = min(float(self._burst), self._tokens + elapsed_s * self._rate_per_s)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class _Source:
    __slots__ = ("bucket", "established", "pending")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.pending = 0
        self.established = 0


class InboundAdmission:
    """Counts inbound connections by source IP from accept to close, and refuses what is over a limit.

    An accepted connection is pending until ``upgraded`` (the swarm reports it connected) and established
    until ``closed``; one whose upgrade fails simply ``ended``. Each call is keyed by the remote
    (ip, port), which is unique among the live inbound connections of a listener."""

    def __init__(self, limits: FloodLimits, on_refused: Callable[[str], None]) -> None:
        self.limits = limits
        self._on_refused = on_refused
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        # Remote address -> whether that connection is established (else pending).
        self._connections: dict[Address, bool] = {}
        self.pending_total = 0

    def admit(self, address: Address, now_s: float) -> bool:
        ip = address[0]
        limits = self.limits
        source = self._sources.get(ip)
        if source is None:
            source = self._new_source(ip, now_s)
        else:
            self._sources.move_to_end(ip)
        refusal = None
        if address in self._connections:
            # The same (ip, port) twice at once can only be a bookkeeping bug or a second listener;
            # refusing is safe, counting it twice would not be.
            refusal = REFUSED_CONNECTIONS_PER_IP
        elif source.pending >= limits.pending_handshakes_per_ip_max:
            refusal = REFUSED_PENDING_PER_IP
        elif source.pending + source.established >= limits.connections_per_ip_max:
            refusal = REFUSED_CONNECTIONS_PER_IP
        elif self.pending_total >= limits.pending_handshakes_max:
            refusal = REFUSED_PENDING_TOTAL
        elif not source.bucket.take(now_s):
            refusal = REFUSED_RATE_PER_IP
        if refusal is not None:
            self._on_refused(refusal)
            return False
        source.pending += 1
        self.pending_total += 1
        self._connections[address] = False
        return True

    def upgraded(self, address: Address) -> None:
        """The connection finished its handshakes and was registered by the swarm."""
        if self._connections.get(address) is not False:
            return  # not one we admitted (an outbound connection), or reported already
        self._connections[address] = True
        source = self._sources[address[0]]
        source.pending -= 1
        source.established += 1
        self.pending_total -= 1

    def ended(self, address: Address) -> None:
        """The connection is gone, whatever state it reached. Idempotent."""
        established = self._connections.pop(address, None)
        if established is None:
            return
        source = self._sources[address[0]]
        if established:
            source.established -= 1
        else:
            source.pending -= 1
            self.pending_total -= 1
        assert source.pending >= 0 and source.established >= 0 and self.pending_total >= 0

    def counts(self, ip: str) -> tuple[int, int]:
        """(pending, established) inbound connections from ``ip``."""
        source = self._sources.get(ip)
        return (0, 0) if source is None else (source.pending, source.established)

    @property
    def tracked_ips(self) -> int:
        return len(self._sources)

    def _new_source(self, ip: str, now_s: float) -> _Source:
        if len(self._sources) >= TRACKED_IPS_MAX:
            idle = next(
                (key for key, s in self._sources.items() if not s.pending and not s.established), None
            )
            if idle is not None:
                del self._sources[idle]
        source = _Source(
            TokenBucket(self.limits.connections_per_ip_per_s, self.limits.connections_per_ip_burst, now_s)
        )
        self._sources[ip] = source
        return source


class StreamRateLimiter:
    """A token bucket per peer for the streams it opens to us."""

    def __init__(self, rate_per_s: int, burst: int) -> None:
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, peer: str, now_s: float) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= TRACKED_PEERS_MAX:
                self._buckets.popitem(last=False)
            bucket = self._buckets[peer] = TokenBucket(self._rate_per_s, self._burst, now_s)
        else:
            self._buckets.move_to_end(peer)
        return bucket.take(now_s)

    def forget(self, peer: str) -> None:
        """The peer disconnected; a reconnect starts with a full bucket, as a new peer would."""
        self._buckets.pop(peer, None)

    def __len__(self) -> int:
        return len(self._buckets)


class AdmittedListeners:
    """Puts ``InboundAdmission`` in front of a transport's listeners, and ends each inbound connection's
    py-libp2p task when the connection closes (see the module docstring)."""

    def __init__(self, admission: InboundAdmission) -> None:
        self.admission = admission
        self._scopes: dict[Address, trio.CancelScope] = {}

    def guard(self, handler: THandler) -> THandler:
        admission = self.admission

        async def admitted(stream: ReadWriteCloser) -> None:
            remote = stream.get_remote_address()
            if remote is None:
                await handler(stream)
                return
            address = (remote[0], remote[1])
            if not admission.admit(address, trio.current_time()):
                await _close_quietly(stream)
                return
            try:
                with trio.CancelScope() as scope:
                    self._scopes[address] = scope
                    await handler(stream)
            finally:
                if self._scopes.get(address) is scope:
                    del self._scopes[address]
                admission.ended(address)

        return admitted

    def upgraded(self, address: Address) -> None:
        self.admission.upgraded(address)

    def closed(self, address: Address) -> None:
        """The swarm reports the connection from ``address`` closed: free its count and end its task."""
        self.admission.ended(address)
        scope = self._scopes.pop(address, None)
        if scope is not None:
            scope.cancel()


async def _close_quietly(stream: ReadWriteCloser) -> None:
    try:
        await stream.close()
    except Exception as exc:  # the peer may have gone already; the refusal stands either way
        logger.debug("closing a refused connection failed: %r", exc)


class AdmittedTransport(ITransport):
    """A transport whose listeners admit through ``AdmittedListeners``; everything else is the inner
    transport's (py-libp2p's transport manager asks for optional methods with ``getattr``)."""

    def __init__(self, inner: ITransport, listeners: AdmittedListeners) -> None:
        self._inner = inner
        self._listeners = listeners

    async def dial(self, maddr: Multiaddr) -> IRawConnection:
        return await self._inner.dial(maddr)

    def create_listener(self, handler_function: THandler) -> IListener:
        return self._inner.create_listener(self._listeners.guard(handler_function))

    def can_dial(self, maddr: Multiaddr) -> bool:
        return self._inner.can_dial(maddr)

    def can_listen(self, maddr: Multiaddr) -> bool:
        return self._inner.can_listen(maddr)

    def protocols(self) -> list[str]:
        return self._inner.protocols()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class FloodGuards:
    """Everything above, wired for one host: ``transport`` wraps its transport, ``stream_handler`` its
    inbound stream entry point, and ``connected``/``disconnected`` take the swarm's connection events."""

    def __init__(self, limits: FloodLimits, count: Callable[[str], None]) -> None:
        self.limits = limits
        self._count = count
        self.listeners = AdmittedListeners(InboundAdmission(limits, count))
        self.streams = StreamRateLimiter(
            limits.stream_opens_per_peer_per_s, limits.stream_opens_per_peer_burst
        )

    def transport(self, inner: ITransport) -> ITransport:
        return AdmittedTransport(inner, self.listeners)

    def stream_handler(
        self, handler: Callable[[INetStream], Awaitable[None]]
    ) -> Callable[[INetStream], Awaitable[None]]:
        streams, count = self.streams, self._count

        async def rate_limited(stream: INetStream) -> None:
            # Before protocol negotiation: an excess stream costs a yamux frame each way, nothing more.
            if not streams.allow(str(stream.muxed_conn.peer_id), trio.current_time()):
                count(STREAMS_RATE_LIMITED)
                await stream.reset()
                return
            await handler(stream)

        return rate_limited

    def connected(self, conn: INetConn) -> None:
        address = _remote_address(conn)
        if address is not None:
            self.listeners.upgraded(address)

    def disconnected(self, conn: INetConn) -> None:
        address = _remote_address(conn)
        if address is not None:
            self.listeners.closed(address)


def _remote_address(conn: INetConn) -> Address | None:
    # Yamux has it (from the secured, then raw connection); the muxer interface does not promise it.
    get_remote_address = getattr(conn.muxed_conn, "get_remote_address", None)
    if get_remote_address is None:
        return None
    try:
        remote = get_remote_address()
    except Exception:  # a closed socket may not know any more; nothing to match then
        return None
    return None if remote is None else (remote[0], remote[1])
