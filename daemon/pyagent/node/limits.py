"""Flood limits: what one source address or one peer may cost the daemon before anyone else is served.

A flood from one hostile address used to slow every good peer down (issue 16: a good peer's ping p99 went
28x during a Noise handshake flood). Each guard counts what it refuses in the host's counters (and so in
``/metrics``), under the name of the setting that refused:

- **Inbound admission** (``InboundAdmission``), in our own accept loop (``AdmittingTCPListener``, which
  replaces py-libp2p's TCP listener): a connection is refused, reset before a single byte is read, with
  no task started and so before any crypto, when its source IP already has
  ``pending_handshakes_per_ip_max`` upgrades under way, or ``connections_per_ip_max`` connections
  (pending and established), or when ``pending_handshakes_max`` upgrades are under way in all, or when
  the IP opened more than ``connections_per_ip_per_s`` (burst ``connections_per_ip_burst``) lately. The
  counts are rust-libp2p's ``connection-limits`` (pending incoming, established per peer), keyed by IP
  because an IP is all a connection has before its handshake; the rate is go-libp2p's per-IP connection
  rate limit, because the costly part of a connection, the Noise handshake, is paid per connection, and a
  flood that opens and drops connections one after another never has many pending at once.
- **Stream opens** (``StreamRateLimiter``): a token bucket per peer; a stream over the rate is reset
  before protocol negotiation, and a peer that goes on opening streams after a further burst of resets
  has its connection closed (a reset still costs us a task and a frame each).
- The listener also ends each inbound connection's task when the swarm reports the connection closed.
  py-libp2p 0.8.1's task waits for the whole swarm to stop instead, holding one of the swarm's
  ``connections_max`` inbound slots: after ``connections_max`` inbound connections in a daemon's life,
  every new one was refused.

The tables are synchronous and take the clock as an argument, so they are tested without sockets
(tests/unit/test_limits.py); tests/integration/test_flood_limits.py and bench/flood.py use real ones.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import socket
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import trio
from libp2p.abc import IListener, INetConn, INetStream, IRawConnection, ITransport
from libp2p.custom_types import THandler
from libp2p.io.trio import TrioTCPStream
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCPListener
from libp2p.utils.multiaddr_utils import multiaddr_from_socket
from multiaddr import Multiaddr

from pyagent.node.host_config import FloodLimits

logger = logging.getLogger(__name__)

# The host's counter for each kind of refusal, named after the setting that refused.
REFUSED_PENDING_TOTAL = "inbound_refused_pending_handshakes_max"
REFUSED_PENDING_PER_IP = "inbound_refused_pending_handshakes_per_ip_max"
REFUSED_CONNECTIONS_PER_IP = "inbound_refused_connections_per_ip_max"
REFUSED_RATE_PER_IP = "inbound_refused_connections_per_ip_per_s"
STREAMS_RATE_LIMITED = "streams_reset_rate_limited"
PEERS_DISCONNECTED_STREAM_FLOOD = "peers_disconnected_stream_flood"
COUNTER_NAMES = (
    REFUSED_PENDING_TOTAL,
    REFUSED_PENDING_PER_IP,
    REFUSED_CONNECTIONS_PER_IP,
    REFUSED_RATE_PER_IP,
    STREAMS_RATE_LIMITED,
    PEERS_DISCONNECTED_STREAM_FLOOD,
)

# Per-IP and per-peer tables are bounded (DESIGN: a limit on everything). An IP with nothing pending or
# established holds only a rate bucket, and the oldest of those goes first: a full bucket is the state a
# forgotten IP would start from anyway, so forgetting one only forgives a recent burst.
TRACKED_IPS_MAX = 4096
TRACKED_PEERS_MAX = 4096

# What identifies one inbound connection from accept to close: the listener uses its socket object (an
# IPv6 peer's address does not survive py-libp2p's wrappers, the socket does). Tests use anything hashable.
Key = Hashable


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
    until it ``ended``, which is also how a failed upgrade ends. Each connection has its own ``key``."""

    def __init__(self, limits: FloodLimits, on_refused: Callable[[str], None]) -> None:
        self.limits = limits
        self._on_refused = on_refused
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        # Connection -> (its source IP, whether it is established rather than pending).
        self._connections: dict[Key, tuple[str, bool]] = {}
        self.pending_total = 0

    def admit(self, key: Key, ip: str, now_s: float) -> bool:
        limits = self.limits
        source = self._sources.get(ip)
        if source is None:
            source = self._new_source(ip, now_s)
        else:
            self._sources.move_to_end(ip)
        refusal = None
        assert key not in self._connections, "a connection admitted twice"
        if source.pending >= limits.pending_handshakes_per_ip_max:
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
        self._connections[key] = (ip, False)
        return True

    def upgraded(self, key: Key) -> None:
        """The connection finished its handshakes and was registered by the swarm."""
        known = self._connections.get(key)
        if known is None or known[1]:
            return  # not one we admitted (an outbound connection), or reported already
        ip = known[0]
        self._connections[key] = (ip, True)
        source = self._sources[ip]
        source.pending -= 1
        source.established += 1
        self.pending_total -= 1

    def ended(self, key: Key) -> None:
        """The connection is gone, whatever state it reached. Idempotent."""
        known = self._connections.pop(key, None)
        if known is None:
            return
        ip, established = known
        source = self._sources[ip]
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


class StreamVerdict(enum.Enum):
    OPEN = "open"
    RESET = "reset"
    # The peer kept opening streams at well over its rate: its connection is closed.
    DISCONNECT = "disconnect"


class _PeerStreams:
    __slots__ = ("opens", "refusals")

    def __init__(self, rate_per_s: int, burst: int, now_s: float) -> None:
        self.opens = TokenBucket(rate_per_s, burst, now_s)
        # Resets are budgeted too: a peer may overrun its rate by one more burst (plus the refill), no
        # more. Each reset still costs us a task and a frame; a flooder that ignores them is cut off.
        self.refusals = TokenBucket(rate_per_s, burst, now_s)


class StreamRateLimiter:
    """Token buckets per peer for the streams it opens to us. The buckets outlive the connection: a peer
    that reconnects has not earned a fresh burst (a bounded table, oldest first out)."""

    def __init__(self, rate_per_s: int, burst: int) -> None:
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._peers: OrderedDict[str, _PeerStreams] = OrderedDict()

    def allow(self, peer: str, now_s: float) -> StreamVerdict:
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= TRACKED_PEERS_MAX:
                self._peers.popitem(last=False)
            state = self._peers[peer] = _PeerStreams(self._rate_per_s, self._burst, now_s)
        else:
            self._peers.move_to_end(peer)
        if state.opens.take(now_s):
            return StreamVerdict.OPEN
        return StreamVerdict.RESET if state.refusals.take(now_s) else StreamVerdict.DISCONNECT

    def __len__(self) -> int:
        return len(self._peers)


class AdmittedListeners:
    """Creates the admitting listeners of one host and keeps the cancel scope of each admitted inbound
    connection's task, so that the task ends when the swarm reports the connection closed."""

    def __init__(self, admission: InboundAdmission) -> None:
        self.admission = admission
        self._scopes: dict[Key, trio.CancelScope] = {}
        # Why each listen address that failed could not be bound (py-libp2p's swarm keeps only a bool).
        self.listen_errors: dict[str, str] = {}

    def create(self, handler: THandler) -> AdmittingTCPListener:
        return AdmittingTCPListener(handler, self)

    def upgraded(self, key: Key) -> None:
        self.admission.upgraded(key)

    def closed(self, key: Key) -> None:
        """The swarm reports the connection closed: free its count and end its task."""
        self.admission.ended(key)
        scope = self._scopes.pop(key, None)
        if scope is not None:
            scope.cancel()

    async def serve(self, handler: THandler, conn: trio.socket.SocketType, remote: Any) -> None:
        """One admitted connection (its socket is its key), from accept until the swarm is done with it."""
        try:
            with trio.CancelScope() as scope:
                self._scopes[conn] = scope
                await handler(TrioTCPStream(trio.SocketStream(conn)))
        except Exception as exc:  # as py-libp2p's own listener: a failed connection is the peer's business
            logger.debug("inbound connection from %s failed: %r", remote, exc)
        finally:
            if self._scopes.get(conn) is scope:
                del self._scopes[conn]
            self.admission.ended(conn)
            with contextlib.suppress(OSError):
                conn.close()


# The kernel's queue of connections not yet accepted. While a flood keeps it full, the kernel drops
# further SYNs at no cost to us, and their senders retry later.
LISTEN_BACKLOG = 128
# After this many refusals in a row the accept loop pauses for ACCEPT_PAUSE_S (a backlog's worth: no
# well-behaved mix of peers is refused that often in a row).
REFUSALS_BEFORE_PAUSE = LISTEN_BACKLOG
ACCEPT_PAUSE_S = 1.0
# Accept errors that mean "out of a resource for now" (trio's serve_listeners waits on them too).
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_S = 0.1
_LINGER_ABORT = struct.pack("ii", 1, 0)


class AdmittingTCPListener(IListener):
    """A TCP listener whose accept loop is ours, so that a refused connection costs an accept and a close
    and nothing more: no task, no stream objects, no byte read. An admitted one is handed, in a task of
    its own, to the handler that py-libp2p's listener would have called (the swarm's upgrade, behind the
    private-network wrapper if any)."""

    def __init__(self, handler: THandler, listeners: AdmittedListeners) -> None:
        self._handler = handler
        self._listeners = listeners
        self._sockets: list[trio.socket.SocketType] = []
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self._closed = False
        self._lock = trio.Lock()

    async def listen(self, maddr: Multiaddr) -> None:
        try:
            names = [protocol.name for protocol in maddr.protocols()]
            ip = str(maddr.value_for_protocol("ip6" if "ip6" in names else "ip4"))
            port = int(maddr.value_for_protocol("tcp"))
        except Exception as exc:
            raise OpenConnectionError(f"cannot listen on {maddr}: {exc}") from None
        async with self._lock:
            if self._closed:
                raise OpenConnectionError(f"cannot listen on {maddr}: the listener is closed")
            sock = trio.socket.socket(trio.socket.AF_INET6 if ":" in ip else trio.socket.AF_INET)
            try:
                # SO_REUSEADDR only lets a restarted daemon bind over its old connections in TIME_WAIT.
                # Never SO_REUSEPORT: with it a second daemon binds the same port and the kernel splits
                # incoming connections between the two.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if ":" in ip:
                    # `::` alone, so that 0.0.0.0 on the same port is a listener of its own, not a clash.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind((ip, port))
                sock.listen(LISTEN_BACKLOG)
            except OSError as exc:
                sock.close()
                self._listeners.listen_errors[str(maddr)] = exc.strerror or str(exc)
                raise OpenConnectionError(f"cannot listen on {maddr}: {exc}") from exc
            if self._nursery is None:
                await self._spawn_nursery()
            assert self._nursery is not None
            self._sockets.append(sock)
            self._nursery.start_soon(self._accept_loop, sock)

    async def _spawn_nursery(self) -> None:
        # A system task, as py-libp2p's TCPListener: the listener outlives the `listen` call that starts it.
        ready = trio.Event()

        async def run() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    ready.set()
                    await trio.sleep_forever()
            finally:
                self._nursery = None
                self._stopped.set()

        trio.lowlevel.spawn_system_task(run)
        await ready.wait()

    async def _accept_loop(self, sock: trio.socket.SocketType) -> None:
        admission = self._listeners.admission
        refused_in_a_row = 0
        while True:
            if refused_in_a_row >= REFUSALS_BEFORE_PAUSE:
                # A flood: stop accepting for a moment. The kernel's queue fills and it drops further
                # SYNs itself, which costs nobody anything; their senders retry after a second or more.
                # Established peers are not affected, and an admissible newcomer waits, it is not refused.
                refused_in_a_row = 0
                await trio.sleep(ACCEPT_PAUSE_S)
            try:
                conn, remote = await sock.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                logger.warning("accept failed (%s); retrying in %.1f s", exc, _ACCEPT_RETRY_S)
                await trio.sleep(_ACCEPT_RETRY_S)
                continue
            if not admission.admit(conn, remote[0], trio.current_time()):
                _abort(conn)
                refused_in_a_row += 1
                continue
            refused_in_a_row = 0
            assert self._nursery is not None
            self._nursery.start_soon(self._listeners.serve, self._handler, conn, remote)

    def get_addrs(self) -> tuple[Multiaddr, ...]:
        return tuple(multiaddr_from_socket(sock) for sock in self._sockets)

    async def close(self) -> None:
        async with self._lock:
            already, self._closed = self._closed, True
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
        if already:
            return
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._nursery is not None or not self._stopped.is_set():
            with trio.move_on_after(5):
                await self._stopped.wait()


def _abort(conn: trio.socket.SocketType) -> None:
    """Close at once with a reset: one RST, no FIN exchange and no TIME_WAIT (on loopback a graceful
    close also ran the flooder's side of the teardown in our process)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    conn.close()


class AdmittedTransport(ITransport):
    """A TCP transport whose listeners admit through ``AdmittedListeners``; everything else is the inner
    transport's (py-libp2p's transport manager asks for optional methods with ``getattr``)."""

    def __init__(self, inner: ITransport, listeners: AdmittedListeners) -> None:
        self._inner = inner
        self._listeners = listeners

    async def dial(self, maddr: Multiaddr) -> IRawConnection:
        return await self._inner.dial(maddr)

    def create_listener(self, handler_function: THandler) -> IListener:
        # The inner transport's listener is made only for its handler: TCP's is the swarm's, the
        # private-network transport's wraps each connection in the cipher first.
        inner = self._inner.create_listener(handler_function)
        assert isinstance(inner, TCPListener), f"flood limits need a TCP listener, got {type(inner).__name__}"
        return self._listeners.create(inner.handler)

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

    def __init__(
        self, limits: FloodLimits, count: Callable[[str], None], disconnect: Callable[[str], None]
    ) -> None:
        self.limits = limits
        self._count = count
        self._disconnect = disconnect
        self.listeners = AdmittedListeners(InboundAdmission(limits, count))
        self.streams = StreamRateLimiter(
            limits.stream_opens_per_peer_per_s, limits.stream_opens_per_peer_burst
        )

    def transport(self, inner: ITransport) -> ITransport:
        return AdmittedTransport(inner, self.listeners)

    def stream_handler(
        self, handler: Callable[[INetStream], Awaitable[None]]
    ) -> Callable[[INetStream], Awaitable[None]]:
        streams, count, disconnect = self.streams, self._count, self._disconnect

        async def rate_limited(stream: INetStream) -> None:
            # Before protocol negotiation: an excess stream costs a yamux frame each way, nothing more.
            peer = str(stream.muxed_conn.peer_id)
            verdict = streams.allow(peer, trio.current_time())
            if verdict is StreamVerdict.OPEN:
                await handler(stream)
                return
            count(STREAMS_RATE_LIMITED)
            if verdict is StreamVerdict.DISCONNECT:
                count(PEERS_DISCONNECTED_STREAM_FLOOD)
                logger.warning("closing the connection of %s: it opens streams far over its rate", peer)
                disconnect(peer)
            await stream.reset()

        return rate_limited

    def connected(self, conn: INetConn) -> None:
        sock = _socket_under(conn.muxed_conn)
        if sock is not None:
            self.listeners.upgraded(sock)

    def disconnected(self, conn: INetConn) -> None:
        sock = _socket_under(conn.muxed_conn)
        if sock is not None:
            self.listeners.closed(sock)


# How py-libp2p 0.8.1 nests a TCP connection: Yamux.secured_conn (SecureSession) .conn (the Noise reader-
# writer) .conn (RawConnection) .stream (TrioTCPStream, or our PnetStream whose ._inner is one) .stream
# (trio.SocketStream) .socket.
_WRAPPER_ATTRIBUTES = ("secured_conn", "conn", "stream", "_inner")
_WRAPPERS_MAX = 8


def _socket_under(connection: object) -> trio.socket.SocketType | None:
    """The socket under a connection's wrappers, or None (a connection of another kind)."""
    for _ in range(_WRAPPERS_MAX):
        if isinstance(connection, trio.SocketStream):
            return connection.socket
        connection = next(
            (getattr(connection, name) for name in _WRAPPER_ATTRIBUTES if hasattr(connection, name)), None
        )
        if connection is None:
            return None
    return None
